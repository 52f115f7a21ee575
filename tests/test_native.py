"""backend="native": torch's own LSTM / GRU kernel behind fastrnn::<cell>_native, for calls with
torch.nn's math.  Its values, gradients (torch's autograd, not a backward of ours), lengths and
reverse, eval-mode training, the op under torch.export and torch.compile, and what "auto" picks."""
from __future__ import annotations

import typing

import pytest
import torch
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn
from fastrnn import backends
from fastrnn.cells import CELLS
from support import max_rel_err
from test_modules import tensors_of, weighted_sum

CLASSES = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def pair(cell, dtype=torch.float64, **kwargs):
    """(native module, reference module) with the same weights."""
    torch.manual_seed(0)
    native = CLASSES[cell](3, 5, backend="native", dtype=dtype, **kwargs)
    reference = CLASSES[cell](3, 5, backend="reference", dtype=dtype, **kwargs)
    reference.load_state_dict(native.state_dict())
    return native, reference


def outputs_and_grads(module, x, **call):
    x = x.clone().requires_grad_()
    outputs = tensors_of(module(x, **call))
    grads = torch.autograd.grad(weighted_sum(outputs), [x, *module.parameters()])
    return [o.detach() for o in outputs], grads


def test_schema_is_generated_from_the_native_call():
    for cell in CELLS.values():
        schema = getattr(torch.ops.fastrnn, f"{cell.name}_native").default._schema
        assert [a.name for a in schema.arguments] == list(cell.native_call._fields)
        assert list(cell.native_call._fields[3:]) == list(cell.native_fields)
        hints = typing.get_type_hints(cell.call)
        assert all(typing.get_type_hints(cell.native_call)[f] == hints[f] for f in cell.native_fields)


@pytest.mark.parametrize("cell", list(CLASSES))
@pytest.mark.parametrize("lengths", [None, [6, 2, 5, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_the_reference(cell, lengths, dtype):
    """Bidirectional (reverse within each sequence's length), two layers, both dtypes (float32
    runs oneDNN's LSTM on CPU, which holds c past the end by saturated gates)."""
    extra = {"proj_size": 2} if cell == "lstm" and dtype == torch.float64 else {}
    native, reference = pair(cell, dtype, num_layers=2, bidirectional=True, **extra)
    x = torch.randn(6, 4, 3, dtype=dtype)
    got, got_grads = outputs_and_grads(native, x, lengths=lengths)
    expected, expected_grads = outputs_and_grads(reference, x, lengths=lengths)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    for a, b in zip(got + list(got_grads), expected + list(expected_grads)):
        assert max_rel_err(a, b) <= tolerance
    if lengths is not None:
        assert torch.all(got[0][1:, 3] == 0) and torch.all(got[0][2:, 1] == 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cell_is_held_exactly_past_the_end_with_large_weights(dtype):
    """With weights ×1e5 the other terms of the gate pre-activations reach ~1e5, beyond which a
    hold column of ∓1e4 let c move past a sequence's end (c_n off by 1 to 4).  "auto" on CPU
    (torch's kernel) with lengths against torch.nn on the PackedSequence, which never runs those
    steps: outputs and gradients, both directions."""
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 6, bidirectional=True, dtype=dtype)
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.mul_(1e5)
    ours = fastrnn.LSTM.from_torch(theirs)
    x, lengths = torch.randn(7, 4, 3, dtype=dtype), torch.tensor([7, 2, 5, 1])
    leaves = {module: [x.clone().requires_grad_(), *module.parameters()]
              for module in (theirs, ours)}
    out, (h_n, c_n) = theirs(pack_padded_sequence(leaves[theirs][0], lengths,
                                                  enforce_sorted=False))
    expected = [pad_packed_sequence(out, total_length=7)[0], h_n, c_n]
    got = tensors_of(ours(leaves[ours][0], lengths=lengths))
    expected_grads = torch.autograd.grad(weighted_sum(expected), leaves[theirs])
    got_grads = torch.autograd.grad(weighted_sum(got), leaves[ours])
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    for name, a, b in zip(("out", "h_n", "c_n"), got, expected):
        assert max_rel_err(a, b) <= tolerance, name
    for a, b in zip(got_grads, expected_grads):
        assert max_rel_err(a, b) <= tolerance


@pytest.mark.parametrize("cell", list(CLASSES))
def test_gradients_are_torch_s_autograd(cell, monkeypatch):
    """No backward of fastrnn runs: the op records torch's own."""
    def reached(*args):
        raise AssertionError("a fastrnn backward ran")

    monkeypatch.setattr(backends.get("reference"), "backward", reached)
    native, _ = pair(cell, torch.float32)
    outputs_and_grads(native, torch.randn(4, 2, 3), lengths=[4, 2])


@pytest.mark.parametrize("cell", list(CLASSES))
def test_eval_mode_trains_too(cell):
    native, reference = pair(cell, torch.float32)
    native.eval(), reference.eval()
    x = torch.randn(5, 3, 3)
    (_, got), (_, expected) = outputs_and_grads(native, x), outputs_and_grads(reference, x)
    for a, b in zip(got, expected):
        assert max_rel_err(a, b) <= 2e-6


def test_cpu_autocast_runs_the_native_kernel_in_bfloat16():
    module = fastrnn.LSTM(3, 8, num_layers=2)
    x = torch.randn(6, 2, 3)
    expected, _ = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = module(x)
    assert out.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=5e-2)


def test_functional_api_runs_native_for_plain_calls():
    from fastrnn.functional import gru_layer
    g = torch.Generator().manual_seed(0)
    x, w_ih, w_hh = (torch.randn(5, 2, 3, generator=g), torch.randn(12, 3, generator=g),
                     torch.randn(12, 4, generator=g))
    h0 = torch.zeros(2, 4)
    native = gru_layer(x, w_ih, w_hh, None, None, h0, backend="native", reverse=True)
    reference = gru_layer(x, w_ih, w_hh, None, None, h0, backend="reference", reverse=True)
    for a, b in zip(native, reference):
        assert max_rel_err(a, b) <= 2e-6
    with pytest.raises(ValueError, match="runs torch.nn's cells only"):
        gru_layer(x, w_ih, w_hh, None, None, h0, backend="native", zoneout=0.1)


def test_export_keeps_one_native_op_per_layer_with_dynamic_time_and_batch():
    module = fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).eval()
    x = torch.randn(6, 4, 3)
    exported = torch.export.export(module, (x,), dynamic_shapes=({0: Dim("T"), 1: Dim("B")},))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count("fastrnn.lstm_native.default") == 4
    other = torch.randn(9, 2, 3)
    for a, b in zip(tensors_of(exported.module()(other)), tensors_of(module(other))):
        torch.testing.assert_close(a, b)


def test_compiled_inference_runs_the_native_op_and_training_the_fastrnn_op():
    torch._dynamo.reset()
    module = fastrnn.GRU(3, 5, num_layers=2)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], module(x)[0])
    # Under torch.compile with autograd, "auto" keeps the fastrnn op (one node per layer).
    out = compiled(x)[0]
    grads = torch.autograd.grad(out.square().sum(), list(module.parameters()))
    expected = torch.autograd.grad(module(x)[0].square().sum(), list(module.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_native_is_not_compiled_for_training_when_asked_for_by_name():
    torch._dynamo.reset()
    compiled = torch.compile(fastrnn.LSTM(3, 5, backend="native"), fullgraph=True)
    with pytest.raises(Exception, match="is not traced by torch.compile for training"):
        compiled(torch.randn(4, 2, 3))
    torch._dynamo.reset()
