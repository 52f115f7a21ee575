"""The host side of backend="cuda" (fastrnn/backends/cuda_backend.py) on a machine without a GPU.

The launch is replaced by a stand-in kernel that writes the reference's results into the
tensors it is handed, so what is checked is everything around the kernels: the argument names
(each must be a field of csrc/bindings.cpp's RecurrenceArgs), which tensors a forward hands over
with and without ``save`` (an inference forward gives no saved tensor, the kernels then write
none), the recurrent inputs and the d W_hh product with episode starts, and where each gradient
lands in the op's order.  The layer-norm backward is the kernels' own (a GPU test's business):
the stand-in does not compute it, so the cases here leave layer norm off.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fastrnn import backends
from fastrnn import reference as R
from fastrnn.backends import cuda_backend
from fastrnn.cells import cell_of
from support import RESETS, case, make_call, make_inputs

BINDING_FIELDS = set(re.findall(
    r'\{"(\w+)", &(?:RecurrenceArgs|Plan)::',
    (Path(__file__).resolve().parents[1] / "csrc" / "bindings.cpp").read_text()))
SAVED = {"preact", "cell", "hidden_n", "stats"}


class _Launch:
    """What a stand-in launch saw, and the reference's gradients it wrote."""
    call = None
    saved = None
    grads = None
    seen: dict = {}
    expected: dict = {}


def _plan(self, call, backward, gx_like):
    self.cell, self.backward, self.device = cell_of(call).name, backward, gx_like.device
    self.steps, self.batch, self.hidden = gx_like.shape[0], gx_like.shape[1], call.w_hh.shape[1]
    self.gates = cell_of(call).num_gates
    self.empty = False
    self.options = {}
    self.plan = dict(team_blocks=1, units=1, batch_tile=1, tiles=2, cluster=0, smem_bytes=0,
                     scratch_floats=4)


def _kernel(self, **tensors):
    unknown = set(tensors) - BINDING_FIELDS
    assert not unknown, f"not RecurrenceArgs fields: {unknown}"
    _Launch.seen = {name: t for name, t in tensors.items() if t is not None}
    call, masks = _Launch.call, R.MaskSource(_Launch.call.seed)
    spec = cell_of(call)
    forward, backward = R.SEQUENCES[spec.name]
    if not self.backward:
        names = ("out",) + tuple(f"{s}_n" for s in spec.states) + spec.saved._fields[1:]
        for name, value in zip(names, forward(call, masks)):
            if name in _Launch.seen:
                _Launch.seen[name].copy_(value)
        return
    expected = dict(zip(spec.differentiable,
                        backward(call, _Launch.saved, _Launch.grads, masks)))
    tensors["d_gx"].copy_(expected["gx"])
    d_hh = expected["gx"].clone()   # what W_hh^T multiplies: the GRU's n slice is scaled by r
    if spec.name == "gru":
        d_hh[..., 2 * self.hidden:] *= torch.sigmoid(_Launch.saved.preact[..., :self.hidden])
    tensors["d_hh"].copy_(d_hh)
    for state in spec.states:
        tensors[f"d_{state}0"].copy_(expected[f"{state}0"])
    for field in spec.reset_states:
        if tensors.get(f"d_{field}") is not None:
            assert tensors[f"d_{field}"].dtype == torch.float32   # the kernels' accumulators
            tensors[f"d_{field}"].copy_(expected[field])
    partials = tensors["param_partials"]
    partials.zero_()
    partials[0, :self.gates * self.hidden] = expected["b_hh"]
    _Launch.expected = expected


@pytest.fixture
def stand_in_kernels(monkeypatch):
    monkeypatch.setattr(cuda_backend._Call, "__init__", _plan)
    monkeypatch.setattr(cuda_backend._Call, "launch", _kernel)
    monkeypatch.setattr(cuda_backend._Call, "scratch", lambda self: None)


CASES = ["plain", "zoneout", "recurrent_dropout", "reverse_lengths"] + [
    name for name, options in RESETS.items() if not options.get("layer_norm")]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_hands_over_saved_tensors_only_when_saving(stand_in_kernels, cell, name):
    test_case = case(cell, name)
    _Launch.call = call = make_call(test_case, make_inputs(test_case, generator_seed=3))
    spec = cell_of(call)
    kept = cuda_backend.forward(call, save=False)
    assert not SAVED & set(_Launch.seen), sorted(_Launch.seen)
    assert len(kept) == 1 + len(spec.states)
    full = cuda_backend.forward(call)
    assert set(spec.saved._fields[1:]) <= set(_Launch.seen), sorted(_Launch.seen)
    assert len(full) == len(spec.forward_outputs)
    for label, a, b in zip(spec.forward_outputs, kept, full):
        assert torch.equal(a, b), label


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_places_every_gradient(stand_in_kernels, cell, name):
    """Through the registry, as the op calls it: each gradient in the op's order, d W_hh from
    the recurrent inputs (h_reset at episode starts), empty where the call has no such field."""
    test_case = case(cell, name)
    _Launch.call = call = make_call(test_case, make_inputs(test_case, generator_seed=3))
    spec = cell_of(call)
    outputs = cuda_backend.forward(call)
    finals = 1 + len(spec.states)
    _Launch.saved = spec.saved(outputs[0], *outputs[finals:])
    generator = torch.Generator().manual_seed(2)
    _Launch.grads = tuple(torch.randn(o.shape, generator=generator, dtype=o.dtype)
                          for o in outputs[:finals])
    got = backends.backward("cuda", call, _Launch.saved, _Launch.grads)
    assert len(got) == len(spec.differentiable)
    for field, value in zip(spec.differentiable, got):
        want = _Launch.expected[field]
        if getattr(call, field) is None:
            assert value.numel() == 0 and want.numel() == 0, field
            continue
        assert value.dtype == getattr(call, field).dtype, field
        # The parameter sums and the reset states' gradients pass through the kernels' float32
        # partials and accumulators: float32 rounding (about 6e-8) bounds them.
        rtol = 1e-6 if field in ("b_hh",) + spec.reset_states else 1e-10
        torch.testing.assert_close(value, want, rtol=rtol, atol=rtol * 1e-2,
                                   msg=lambda m: f"d{field}: {m}")
