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
from support import Case, check_against_reference, forward_args, make_inputs, _cast

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

LSTM_CASES = {
    "plain": Case(),
    "no_bias": Case(bias=False),
    "ln1": Case(layer_norm=True),
    "ln4": Case(layer_norm=True, ln_groups=4),
    "zoneout_train": Case(zoneout_cell=0.3, zoneout_hidden=0.2),
    "zoneout_eval": Case(zoneout_cell=0.3, zoneout_hidden=0.2, training=False),
    "zoneout_one": Case(zoneout_cell=1.0, zoneout_hidden=1.0),
    "recurrent_dropout": Case(recurrent_dropout=0.3),
    "candidate_dropout": Case(candidate_dropout=0.4),
    "lengths": Case(lengths=[5, 2, 4]),
    "reverse": Case(reverse=True),
    "reverse_lengths": Case(reverse=True, lengths=[3, 5, 1]),
    "everything": Case(layer_norm=True, ln_groups=4, zoneout_cell=0.2, zoneout_hidden=0.1,
                       recurrent_dropout=0.25, candidate_dropout=0.1, reverse=True, lengths=[4, 5, 2]),
    "everything_eval": Case(layer_norm=True, zoneout_cell=0.2, zoneout_hidden=0.1,
                            candidate_dropout=0.1, training=False),
}
GRU_CASES = {
    "plain": Case(cell="gru"),
    "no_bias": Case(cell="gru", bias=False),
    "ln1": Case(cell="gru", layer_norm=True),
    "ln3": Case(cell="gru", layer_norm=True, ln_groups=3),
    "zoneout_train": Case(cell="gru", zoneout_hidden=0.3),
    "zoneout_eval": Case(cell="gru", zoneout_hidden=0.3, training=False),
    "recurrent_dropout": Case(cell="gru", recurrent_dropout=0.3),
    "candidate_dropout": Case(cell="gru", candidate_dropout=0.4),
    "lengths": Case(cell="gru", lengths=[5, 2, 4]),
    "reverse_lengths": Case(cell="gru", reverse=True, lengths=[3, 5, 1]),
    "everything": Case(cell="gru", layer_norm=True, ln_groups=3, zoneout_hidden=0.2,
                       recurrent_dropout=0.25, candidate_dropout=0.1, reverse=True, lengths=[4, 5, 2]),
}
CASES = {f"lstm_{k}": v for k, v in LSTM_CASES.items()} | {f"gru_{k}": v for k, v in GRU_CASES.items()}


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


def test_empty_batch_returns_empty_outputs():
    case = Case(batch=0)
    t = _cast(make_inputs(case), torch.float32, "cuda")
    out, h_n, c_n, *_ = torch.ops.fastrnn.lstm_forward(*forward_args(case, t), "cuda")
    assert out.shape == (case.steps, 0, case.hidden) and h_n.shape == (0, case.hidden)


def test_too_large_hidden_is_refused_with_a_pointer_to_triton():
    case = Case(steps=2, batch=1, hidden=16384)
    t = _cast(make_inputs(case), torch.float32, "cuda")
    with pytest.raises(ValueError, match="triton"):
        torch.ops.fastrnn.lstm_forward(*forward_args(case, t), "cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_is_graph_capturable(cell):
    case = Case(cell=cell, steps=6, batch=4, hidden=32, layer_norm=True, zoneout_hidden=0.2,
                candidate_dropout=0.1, recurrent_dropout=0.2)
    t = _cast(make_inputs(case), torch.bfloat16, "cuda")
    op = torch.ops.fastrnn.lstm_forward if cell == "lstm" else torch.ops.fastrnn.gru_forward
    eager = op(*forward_args(case, t), "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        op(*forward_args(case, t), "cuda")  # warm-up: builds/loads the extension, plans
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = op(*forward_args(case, t), "cuda")
    new_seed = t["seed"] + 1
    t["seed"].copy_(new_seed)  # the seed is read from device memory at replay
    graph.replay()
    torch.cuda.synchronize()
    replayed = op(*forward_args(case, t), "cuda")
    for got, want in zip(captured, replayed):
        assert torch.equal(got, want)
    assert not torch.equal(captured[0], eager[0])  # a different seed gave different masks

