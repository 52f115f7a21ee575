"""torch.library.opcheck on every fastrnn op (schema, fake, autograd registration, AOT)."""
import pytest
import torch

from support import Case, differentiable_names, forward_args, make_inputs

CASES = {
    "lstm": Case(cell="lstm"),
    "lstm_everything": Case(cell="lstm", layer_norm=True, zoneout_cell=0.3, zoneout_hidden=0.2,
                            candidate_dropout=0.2, recurrent_dropout=0.3, lengths=[5, 2, 4]),
    "lstm_ln_per_gate_reverse_eval": Case(cell="lstm", layer_norm=True, ln_groups=4, reverse=True,
                                          zoneout_cell=0.3, training=False, bias=False),
    "gru": Case(cell="gru"),
    "gru_everything": Case(cell="gru", layer_norm=True, ln_groups=3, zoneout_hidden=0.2,
                           candidate_dropout=0.2, recurrent_dropout=0.3, reverse=True,
                           lengths=[1, 5, 3]),
}


def _tensors(case, dtype):
    inputs = make_inputs(case)
    grad_names = differentiable_names(case)
    return {name: (value.to(dtype).requires_grad_(name in grad_names)
                   if value is not None and value.is_floating_point() else value)
            for name, value in inputs.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_forward(name):
    case = CASES[name]
    op = torch.ops.fastrnn.lstm_forward if case.cell == "lstm" else torch.ops.fastrnn.gru_forward
    torch.library.opcheck(op, forward_args(case, _tensors(case, torch.float64)) + ("reference",))


@pytest.mark.parametrize("name", list(CASES))
def test_opcheck_backward(name):
    case = CASES[name]
    t = {k: (v.detach() if isinstance(v, torch.Tensor) else v)
         for k, v in _tensors(case, torch.float64).items()}
    args = forward_args(case, t)
    if case.cell == "lstm":
        out, h_n, c_n, preact, cell, stats = torch.ops.fastrnn.lstm_forward(*args, "reference")
        grads = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
        saved = (out, preact, cell, stats)
        op = torch.ops.fastrnn.lstm_backward
    else:
        out, h_n, preact, hidden_n, stats = torch.ops.fastrnn.gru_forward(*args, "reference")
        grads = (torch.randn_like(out), torch.randn_like(h_n))
        saved = (out, preact, hidden_n, stats)
        op = torch.ops.fastrnn.gru_backward
    torch.library.opcheck(op, grads + saved + args[1:] + ("reference",))


@pytest.mark.parametrize("name", ["lstm_everything", "gru_everything"])
def test_saved_tensor_shapes(name):
    """What the forward saves: G·H pre-activations + H (cell / hidden_n) per (t, b), plus stats."""
    case = CASES[name]
    t = _tensors(case, torch.float32)
    op = torch.ops.fastrnn.lstm_forward if case.cell == "lstm" else torch.ops.fastrnn.gru_forward
    outputs = op(*forward_args(case, t), "reference")
    T, B, H, G = case.steps, case.batch, case.hidden, case.gates
    preact, middle, stats = outputs[-3:]
    assert preact.shape == (T, B, G * H) and middle.shape == (T, B, H)
    expected_width = 2 * case.ln_groups + (2 if case.cell == "lstm" else 0)
    assert stats.shape == (T, B, expected_width) and stats.dtype == torch.float32


def test_lstm_layer_norm_parameters_come_together():
    case = Case(cell="lstm", layer_norm=True)
    t = _tensors(case, torch.float64)
    t["ln_cell_bias"] = None
    with pytest.raises(ValueError, match="ln_cell_bias"):
        torch.ops.fastrnn.lstm_forward(*forward_args(case, t), "reference")
