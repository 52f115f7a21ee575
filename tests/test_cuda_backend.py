"""backend="cuda" (csrc/ kernels through fastrnn._C) against the reference cells, on a GPU.

Every option of the LSTM and GRU families at every dtype, at small shapes (odd sizes, so teams
have a short last block and batch tiles a short last tile) and at realistic ones; outputs that
start poisoned (every torch.empty filled with NaN), so any element a kernel fails to write shows;
and CUDA-graph capture.  Skipped without a CUDA device (tests/conftest.py).
"""
from __future__ import annotations

import pytest
import torch

from fastrnn import backends
from fastrnn import ops
from fastrnn.cells import cell_of
from support import (RESETS, Case, case, cases, cast, check_against_reference, make_call,
                     make_inputs, run_call)

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

CASES = cases()


@pytest.fixture(autouse=True)
def poisoned_empty():
    """torch.empty returns NaN-filled memory, so unwritten outputs fail the comparison."""
    import torch.utils.deterministic as deterministic
    previous = (torch.are_deterministic_algorithms_enabled(), deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0])
    deterministic.fill_uninitialized_memory = previous[1]


def test_backend_is_available_on_this_machine():
    assert backends.get("cuda").unavailable() is None
    assert backends.resolve("auto", torch.device("cuda"), torch.bfloat16) == "cuda"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_small_cases_match_reference(name, dtype):
    check_against_reference(CASES[name], "cuda", dtype, device="cuda")


@pytest.mark.parametrize("hidden, batch", [(1, 1), (33, 9), (100, 70)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_uneven_teams_and_tiles(cell, hidden, batch):
    case = Case(cell=cell, steps=4, batch=batch, hidden=hidden, layer_norm=True, zoneout_hidden=0.1)
    check_against_reference(case, "cuda", torch.float32, device="cuda")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hidden, batch", [(256, 64), (512, 16), (1024, 8)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_realistic_sizes_match_reference(cell, hidden, batch, dtype):
    case = Case(cell=cell, steps=12, batch=batch, hidden=hidden, layer_norm=True,
                zoneout_hidden=0.1, recurrent_dropout=0.2, candidate_dropout=0.1, lengths=None)
    check_against_reference(case, "cuda", dtype, device="cuda")


# Episode starts (resets): float32 is tests/test_resets.py's; here the half-precision types,
# teams of several blocks and several batch tiles, and all-False flags.
RESET_CASES = {f"{cell}-{name}": case(cell, name) for cell in ("lstm", "gru") for name in RESETS}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(RESET_CASES))
def test_resets_match_reference(name, dtype):
    check_against_reference(RESET_CASES[name], "cuda", dtype, device="cuda", generator_seed=4)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("hidden, batch", [(33, 9), (100, 70)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resets_in_uneven_teams_and_tiles(cell, hidden, batch, reverse):
    """Each (row, unit) of d h_reset / d c_reset is summed by the block that owns it."""
    lengths = [4 - b % 3 for b in range(batch)]
    test_case = Case(cell=cell, steps=4, batch=batch, hidden=hidden, layer_norm=True,
                     zoneout_hidden=0.1, recurrent_dropout=0.2, resets=0.3, reverse=reverse,
                     lengths=lengths)
    check_against_reference(test_case, "cuda", torch.float32, device="cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_all_false_resets_equal_no_resets(cell):
    """The kernels' reset path with no flag set: bitwise the results without resets, and zero
    gradients of the reset states."""
    test_case = case(cell, "resets_everything_reverse")
    call = make_call(test_case, make_inputs(test_case, generator_seed=6))
    off = call._replace(resets=torch.zeros_like(call.resets))
    got_out, got_grad = run_call(off, "cuda", torch.float32, "cuda")
    reset_states = cell_of(call).reset_states
    plain = call._replace(**{field: None for field in ("resets",) + reset_states})
    want_out, want_grad = run_call(plain, "cuda", torch.float32, "cuda")
    for key, want in want_out.items():
        assert torch.equal(got_out[key], want), key
    for key, want in want_grad.items():
        assert torch.equal(got_grad[key], want), f"d{key}"
    for field in reset_states:
        assert torch.count_nonzero(got_grad[field]) == 0, f"d{field}"


@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything", "lstm-layer_norm_per_gate",
                                  "lstm-everything_eval"])
def test_inference_writes_no_saved_tensor(name):
    """save=False passes the kernels null pointers for what only a backward reads: out and the
    final states are bitwise the saving forward's (outputs start NaN-filled)."""
    cell, options = name.split("-", 1)
    test_case = case(cell, options)
    call = make_call(test_case, cast(make_inputs(test_case, generator_seed=4), torch.float32,
                                     "cuda"))
    kept = ops.forward(call, "cuda", save=False)
    full = ops.forward(call, "cuda")
    assert len(kept) == 1 + len(test_case.spec.states)
    for label, a, b in zip(test_case.spec.forward_outputs, kept, full):
        assert torch.equal(a, b), label


def test_empty_batch_returns_empty_outputs():
    case = Case(batch=0)
    t = cast(make_inputs(case), torch.float32, "cuda")
    out, h_n, c_n, *_ = ops.forward(make_call(case, t), "cuda")
    assert out.shape == (case.steps, 0, case.hidden) and h_n.shape == (0, case.hidden)


def test_too_large_hidden_is_refused_with_a_pointer_to_triton():
    case = Case(steps=2, batch=1, hidden=16384)
    t = cast(make_inputs(case), torch.float32, "cuda")
    with pytest.raises(ValueError, match="triton"):
        ops.forward(make_call(case, t), "cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_is_graph_capturable(cell):
    case = Case(cell=cell, steps=6, batch=4, hidden=32, layer_norm=True, zoneout_hidden=0.2,
                candidate_dropout=0.1, recurrent_dropout=0.2)
    t = cast(make_inputs(case), torch.bfloat16, "cuda")
    eager = ops.forward(make_call(case, t), "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.forward(make_call(case, t), "cuda")  # warm-up: builds/loads the extension, plans
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.forward(make_call(case, t), "cuda")
    new_seed = t["seed"] + 1
    t["seed"].copy_(new_seed)  # the seed is read from device memory at replay
    graph.replay()
    torch.cuda.synchronize()
    replayed = ops.forward(make_call(case, t), "cuda")
    for got, want in zip(captured, replayed):
        assert torch.equal(got, want)
    assert not torch.equal(captured[0], eager[0])  # a different seed gave different masks

