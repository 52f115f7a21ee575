"""torch.library.opcheck on every fastrnn op (schema, fake, autograd registration, AOT)."""
import pytest
import torch

from fastrnn import ops
from support import case, cases, differentiable_names, make_call, make_inputs

CASES = {**cases(["plain", "everything", "everything_per_gate_reverse", "everything_eval",
                  "layer_norm_no_bias"]),
         **cases(["projection", "projection_everything", "projection_everything_eval"],
                 cells=["lstm"])}


def _tensors(case, dtype):
    inputs = make_inputs(case)
    grad_names = differentiable_names(case)
    return {name: (value.to(dtype).requires_grad_(name in grad_names)
                   if value is not None and value.is_floating_point() else value)
            for name, value in inputs.items()}


def _forward_op(case):
    return getattr(torch.ops.fastrnn, f"{case.cell}_forward")


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_forward(name):
    case = CASES[name]
    call = make_call(case, _tensors(case, torch.float64))
    torch.library.opcheck(_forward_op(case), tuple(call) + ("reference",))


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_backward(name):
    case = CASES[name]
    t = {k: (v.detach() if isinstance(v, torch.Tensor) else v)
         for k, v in _tensors(case, torch.float64).items()}
    call = make_call(case, t)
    outputs = ops.forward(call, "reference")
    finals = 1 + len(case.spec.states)
    grads = tuple(torch.randn_like(o) for o in outputs[:finals])
    saved = (outputs[0],) + outputs[finals:]
    op = getattr(torch.ops.fastrnn, f"{case.cell}_backward")
    torch.library.opcheck(op, grads + saved + tuple(call)[1:] + ("reference",))


@pytest.mark.parametrize("name", ["lstm-everything", "gru-everything"])
def test_saved_tensor_shapes(name):
    """What the forward saves: G·H pre-activations + H (cell / hidden_n) per (t, b), plus stats."""
    case = CASES[name]
    outputs = ops.forward(make_call(case, _tensors(case, torch.float32)), "reference")
    T, B, H, G = case.steps, case.batch, case.hidden, case.gates
    preact, middle, stats = outputs[-3:]
    assert preact.shape == (T, B, G * H) and middle.shape == (T, B, H)
    expected_width = 2 * case.ln_groups + (2 if case.cell == "lstm" else 0)
    assert stats.shape == (T, B, expected_width) and stats.dtype == torch.float32


def test_schemas_are_the_call_fields():
    for cell in ("lstm", "gru"):
        c = case(cell, "plain")
        schema = getattr(torch.ops.fastrnn, f"{cell}_forward").default._schema
        assert [a.name for a in schema.arguments] == list(c.spec.call._fields) + ["backend"]
        assert len(schema.returns) == len(c.spec.forward_outputs)


def test_lstm_layer_norm_parameters_come_together():
    c = case("lstm", "layer_norm")
    t = _tensors(c, torch.float64)
    t["ln_cell_bias"] = None
    with pytest.raises(ValueError, match="ln_cell_bias"):
        ops.forward(make_call(c, t), "reference")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_double_backward_says_it_is_not_supported(cell):
    c = case(cell, "layer_norm")
    t = _tensors(c, torch.float64)
    out = ops.forward(make_call(c, t), "reference")[0]
    (grad,) = torch.autograd.grad(out.square().sum(), [t["w_hh"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()
