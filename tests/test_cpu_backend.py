"""The cpu backend (fastrnn._cpu, csrc/cpu/) against the reference: every option set of
``support.OPTIONS`` in float64 to 1e-10 (outputs, saved tensors and gradients, with every result
allocated NaN-poisoned, so a position the kernels forget to write fails), in float32 and
bfloat16 within the tolerance policy, ``gradcheck``, masks bit for bit those of fastrnn.masks,
bitwise determinism, the inference path (save=False) and the backend's refusals.

The extension is JIT-built on first use when the package was installed without it (a minute,
once); without a C++ compiler these tests are skipped with the reason.
"""
from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import backends, masks as M, ops
from fastrnn.backends import cpu_backend
from fastrnn.backends.fused import poisoned_outputs
from fastrnn.cells import cell_of
from support import (HALF_PRECISION, TOLERANCE, assert_close, case, cases,
                     check_call_against_reference, make_call, make_inputs, run_call)

pytestmark = pytest.mark.skipif(cpu_backend.unavailable() is not None,
                                reason=f"cpu backend unavailable: {cpu_backend.unavailable()}")

CASES = cases()


def _float64_call(test_case, generator_seed=0):
    return make_call(test_case, make_inputs(test_case, generator_seed=generator_seed))


def _computed_rows(call, name, tensor):
    """Saved rows of skipped steps are unspecified (docs/ops.md): compare computed steps only."""
    spec = cell_of(call)
    if call.lengths is None or name in spec.forward_outputs[1:1 + len(spec.states)]:
        return tensor
    if name.startswith("d") or tensor.dim() < 3:
        return tensor
    steps = tensor.shape[0]
    return tensor[torch.arange(steps)[:, None] < call.lengths[None, :]]


@pytest.mark.parametrize("name", list(CASES))
def test_float64_equals_reference(name):
    """Every output, saved tensor and gradient within 1e-10 of the reference (masks from the
    same seed), on fresh random inputs, with every result allocated NaN-filled."""
    call = _float64_call(CASES[name], generator_seed=11)
    with poisoned_outputs():
        got_out, got_grad = run_call(call, "cpu", torch.float64)
    ref_out, ref_grad = run_call(call, "reference", torch.float64)
    assert got_out.keys() == ref_out.keys() and got_grad.keys() == ref_grad.keys()
    for key, expected in ref_out.items():
        assert_close(_computed_rows(call, key, got_out[key]), _computed_rows(call, key, expected),
                     torch.float64, key)
    for key, expected in ref_grad.items():
        assert_close(got_grad[key], expected, torch.float64, f"d{key}")


@pytest.mark.parametrize("name", list(CASES))
def test_float32_within_tolerance(name):
    """float32 against the float64 reference, within ``fastrnn.check.compare``'s bound."""
    check_call_against_reference(_float64_call(CASES[name], generator_seed=12), "cpu",
                                 torch.float32)


@pytest.mark.parametrize("options", HALF_PRECISION)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_within_tolerance(cell, options):
    """bfloat16 input and output, float32 gate math and state."""
    test_case = case(cell, options, hidden=24)
    check_call_against_reference(make_call(test_case, make_inputs(test_case, generator_seed=13)),
                                 "cpu", torch.bfloat16)


GRADCHECK = ["everything", "everything_per_gate_reverse", "everything_eval", "zoneout_eval",
             "layer_norm_no_bias", "tile_shorter_than_T"]


@pytest.mark.parametrize("options", GRADCHECK)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck(cell, options):
    """The backward is the derivative of the forward (float64, masks fixed by the seed)."""
    test_case = case(cell, options, steps=4, batch=3, hidden=4)
    if test_case.lengths is not None:
        test_case.lengths = [4, 1, 3]
    call = _float64_call(test_case, generator_seed=14)
    spec = cell_of(call)
    names = [n for n in spec.differentiable if getattr(call, n, None) is not None]

    def run(*leaves):
        outputs = ops.forward(call._replace(**dict(zip(names, leaves))), "cpu")
        return outputs[:1 + len(spec.states)]

    leaves = tuple(getattr(call, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_zoneout_masks_are_those_of_fastrnn_masks(cell):
    """Where the zoneout mask of fastrnn.masks hits, the state is carried bit for bit, and only
    there (a float32 state that stays put by chance is vanishingly rare)."""
    test_case = case(cell, "zoneout", steps=6, batch=4, hidden=16)
    call = make_call(test_case, make_inputs(test_case, generator_seed=15))
    call = call._replace(**{k: v.float() for k, v in call._asdict().items()
                            if torch.is_tensor(v) and v.is_floating_point()})
    results = dict(zip(cell_of(call).forward_outputs, ops.forward(call, "cpu")))
    steps, batch, hidden = results["out"].shape
    states = {"zoneout_hidden": (results["out"], call.h0, M.ZONEOUT_HIDDEN)}
    if cell == "lstm":
        states["zoneout_cell"] = (results["cell"], call.c0, M.ZONEOUT_CELL)
    for field, (values, initial, kind) in states.items():
        hits = M.expand_step_masks(call.seed, kind, getattr(call, field), steps, batch, hidden)
        previous = torch.cat([initial[None].to(values.dtype), values[:-1]])
        assert torch.equal(values == previous, hits), field
        assert 0 < hits.sum() < hits.numel()


@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything_per_gate_reverse"])
def test_runs_are_bitwise_identical(name):
    call = _float64_call(CASES[name])
    call = call._replace(**{k: v.float() for k, v in call._asdict().items()
                            if torch.is_tensor(v) and v.is_floating_point()})
    first, second = run_call(call, "cpu", torch.float32), run_call(call, "cpu", torch.float32)
    for a, b in zip([*first[0].values(), *first[1].values()],
                    [*second[0].values(), *second[1].values()]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything", "lstm-reverse_lengths"])
def test_inference_returns_the_forward_outputs_only(name):
    """save=False: out and the final states, bitwise those of the saving forward."""
    call = _float64_call(CASES[name])
    with poisoned_outputs():
        kept = cpu_backend.forward(call, save=False)
    full = cpu_backend.forward(call)
    states = len(cell_of(call).states)
    assert len(kept) == 1 + states
    for a, b in zip(kept, full[:1 + states]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [fastrnn.LayerNormLSTM, fastrnn.LayerNormGRU])
def test_module_on_cpu_backend_equals_reference(cls):
    """A two-layer bidirectional module with every regularizer: one seeded training step on
    backend='cpu' and on the reference in float64, outputs and every parameter's gradient."""
    torch.manual_seed(0)
    options = dict(zoneout=0.2) if cls is fastrnn.LayerNormGRU else dict(zoneout_cell=0.2,
                                                                         zoneout_hidden=0.1)
    module = cls(5, 6, num_layers=2, bidirectional=True, recurrent_dropout=0.2, dropconnect=0.1,
                 candidate_dropout=0.1, **options).double()
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([7, 2, 5])
    results = {}
    for backend in ("cpu", "reference"):
        module.backend = backend
        module.zero_grad()
        torch.manual_seed(3)
        out, state = module(x, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)).sum()
                   for t in (out, *states))
        loss.backward()
        results[backend] = [out, *states] + [p.grad.clone() for p in module.parameters()]
    for index, (a, b) in enumerate(zip(results["cpu"], results["reference"])):
        assert_close(a.detach(), b.detach(), torch.float64, f"result {index}")


def test_refusals_name_the_reason():
    request = backends.Request(cell="lstm")
    with pytest.raises(ValueError, match="backend='cpu' cannot run torch.float16 tensors on cpu: "
                                         "the CPU kernels take float32, float64 and bfloat16"):
        backends.check("cpu", torch.device("cpu"), torch.float16, request)
    with pytest.raises(ValueError, match="proj_size"):
        backends.check("cpu", torch.device("cpu"), torch.float32,
                       backends.Request(cell="lstm", features=frozenset({"proj_size"})))
    assert cpu_backend.unsupported(torch.device("cuda"), torch.float32) is not None


def test_malformed_direct_call_is_an_error_not_a_crash():
    test_case = case("lstm", "lengths")
    call = _float64_call(test_case)
    with pytest.raises(RuntimeError, match="lengths must lie in"):
        cpu_backend.forward(call._replace(lengths=torch.tensor([5, 9, 1])))
    with pytest.raises(RuntimeError, match="c0 must be"):
        cpu_backend.forward(call._replace(c0=call.c0[:2]))
    assert TOLERANCE[torch.float64] == 1e-10
