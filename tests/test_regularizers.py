"""Regularizers of the modules in train and eval mode (docs/cells.md, "Regularizers").

Train mode: the masks of a call, captured with ``fastrnn.capture_masks()``, replayed through the
readable reference cells give the module's outputs and gradients; each mask hits at its rate;
``torch.manual_seed`` reproduces a step; every layer and direction draws its own masks.
Eval mode: deterministic, and equal to the zoneout expectation computed with torch's own cells.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastrnn
from fastrnn import reference as R
from fastrnn.cells import GRUCall, LSTMCall

LSTM_OPTIONS = dict(zoneout_cell=0.3, zoneout_hidden=0.2, recurrent_dropout=0.25,
                    candidate_dropout=0.15, dropconnect=0.35)
GRU_OPTIONS = dict(zoneout=0.3, recurrent_dropout=0.25, candidate_dropout=0.15, dropconnect=0.35)


def make(cls, **kwargs):
    options = LSTM_OPTIONS if cls is fastrnn.LSTM else GRU_OPTIONS
    return cls(**{**options, **kwargs})


def module_gates(cls):
    return 4 if cls is fastrnn.LSTM else 3


def finals_of(state):
    return state if isinstance(state, tuple) else (state,)


def replay(module, x, calls, lengths):
    """The module's training call recomputed by the reference cells from the captured masks
    (dropout between layers must be off)."""
    by_key = {(c.layer, c.direction): c for c in calls}
    layer_input, finals = x, []
    batch, hidden = x.shape[1], module.hidden_size
    width = getattr(module, "proj_size", 0) or hidden  # of h: P under a projection
    is_lstm = isinstance(module, fastrnn.LSTM)
    for layer in range(module.num_layers):
        outs = []
        for direction in range(module.num_directions):
            call = by_key[(layer, direction)]

            def p(name):
                return module._parameter(name, layer, direction)

            gx = R.project_input(layer_input, p("weight_ih"), p("bias_ih"),
                                 p("ln_ih_weight"), module.ln_groups)
            zeros = x.new_zeros(batch, hidden)
            options = dict(gx=gx, w_hh=p("weight_hh") * call.dropconnect_mask, b_hh=p("bias_hh"),
                           ln_hh_weight=p("ln_hh_weight"), h0=x.new_zeros(batch, width),
                           lengths=lengths,
                           recurrent_mask=call.recurrent_mask, seed=torch.zeros((), dtype=torch.int64),
                           ln_groups=module.ln_groups, candidate_dropout=module.candidate_dropout,
                           training=True, reverse=direction == 1)
            masks = R.MaskSource(captured=call)
            if is_lstm:
                out, h_n, c_n, *_ = R.lstm_sequence(LSTMCall(
                    ln_cell_weight=p("ln_cell_weight"), ln_cell_bias=p("ln_cell_bias"), c0=zeros,
                    zoneout_cell=module.zoneout_cell, zoneout_hidden=module.zoneout_hidden,
                    w_hr=p("weight_hr") if module.proj_size else None, **options), masks)
                finals.append((h_n, c_n))
            else:
                out, h_n, *_ = R.gru_sequence(GRUCall(zoneout_hidden=module.zoneout, **options),
                                              masks)
                finals.append((h_n,))
            outs.append(out)
        layer_input = torch.cat(outs, dim=-1)
    return layer_input, tuple(torch.stack(f) for f in zip(*finals))


@pytest.mark.parametrize("cls,proj_size", [(fastrnn.LSTM, 0), (fastrnn.LSTM, 3), (fastrnn.GRU, 0)],
                         ids=["LSTM", "LSTM-proj_size", "GRU"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_training_call_replays_through_reference(cls, proj_size, layer_norm):
    projection = {"proj_size": proj_size} if proj_size else {}
    module = make(cls, input_size=3, hidden_size=5, num_layers=2, bidirectional=True,
                  layer_norm=layer_norm, ln_groups=module_gates(cls) if layer_norm else 1,
                  dtype=torch.float64, **projection)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 3])
    with fastrnn.capture_masks() as calls:
        out, state = module(x, lengths=lengths)
    assert len(calls) == 4
    expected_out, expected_state = replay(module, x, calls, lengths)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(finals_of(state), expected_state):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    got = parameter_grads(module, (out, *finals_of(state)))
    expected = parameter_grads(module, (expected_out, *expected_state))
    for (name, _), a, b in zip(module.named_parameters(), got, expected):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def parameter_grads(module, outputs, seed=0):
    """Gradients of the parameters for one fixed random weighting of ``outputs``."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((torch.randn(t.shape, generator=g, dtype=t.dtype) * t).sum() for t in outputs)
    return torch.autograd.grad(loss, list(module.parameters()), retain_graph=True)


def within_standard_errors(hits: torch.Tensor, p: float, count: float = 5.0):
    n = hits.numel()
    rate = hits.double().mean().item()
    standard_error = math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) <= count * standard_error, f"rate {rate:.4f} vs p={p} (n={n})"


def assert_inverted_dropout(scale: torch.Tensor, p: float):
    """0 where dropped (at rate p), 1/(1-p) where kept."""
    kept = scale != 0
    torch.testing.assert_close(scale[kept], torch.full_like(scale[kept], 1 / (1 - p)))
    within_standard_errors(~kept, p)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_every_mask_hits_at_its_rate(cls):
    module = make(cls, input_size=4, hidden_size=32)
    with torch.no_grad(), fastrnn.capture_masks() as calls:
        module(torch.randn(40, 32, 4))
    (call,) = calls
    assert call.recurrent_mask.shape == (32, 32)
    assert_inverted_dropout(call.recurrent_mask, module.recurrent_dropout)
    assert call.dropconnect_mask.shape == module.weight_hh_l0.shape
    assert_inverted_dropout(call.dropconnect_mask, module.dropconnect)
    within_standard_errors(call.candidate_dropout, module.candidate_dropout)
    if cls is fastrnn.LSTM:
        within_standard_errors(call.zoneout_cell, module.zoneout_cell)
        within_standard_errors(call.zoneout_hidden, module.zoneout_hidden)
    else:
        within_standard_errors(call.zoneout_hidden, module.zoneout)


class DropoutRecorder:
    """Wraps F.dropout to record what the module's inter-layer dropout receives and returns."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = F.dropout

        def recording(input, p=0.5, training=True, inplace=False):
            output = original(input, p, training, inplace)
            self.calls.append((input.detach().clone(), output.detach().clone(), p))
            return output

        monkeypatch.setattr(F, "dropout", recording)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_dropout_between_layers(cls, monkeypatch):
    recorder = DropoutRecorder(monkeypatch)
    module = cls(3, 16, num_layers=3, dropout=0.4, dtype=torch.float64)
    x = torch.randn(30, 20, 3, dtype=torch.float64)
    out, _ = module(x)
    assert len(recorder.calls) == 2, "dropout after every layer but the last"
    for before, after, p in recorder.calls:
        assert p == 0.4 and torch.all(before != 0)
        assert_inverted_dropout(after / before, p)
    before, after, _ = recorder.calls[-1]
    # the last layer reads exactly the dropped output of the one before
    last = cls(16, 16, dtype=torch.float64)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(last, f"{name}_l0").data.copy_(getattr(module, f"{name}_l2"))
    torch.testing.assert_close(out, last(after)[0], rtol=1e-12, atol=1e-12)
    recorder.calls.clear()
    module.eval()
    module(x)
    assert not recorder.calls, "no dropout in eval mode"


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_manual_seed_reproduces_a_training_step(cls):
    module = make(cls, input_size=3, hidden_size=4, num_layers=2, dropout=0.3,
                  bidirectional=True, layer_norm=True)
    x = torch.randn(5, 3, 3)

    def step(seed):
        torch.manual_seed(seed)
        module.zero_grad()
        out, _ = module(x)
        out.square().sum().backward()
        return [out.detach()] + [p.grad.clone() for p in module.parameters()]

    first, again, other = step(11), step(11), step(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_each_layer_and_direction_draws_its_own_masks(cls):
    module = make(cls, input_size=3, hidden_size=8, num_layers=2, bidirectional=True)
    with torch.no_grad(), fastrnn.capture_masks() as calls:
        module(torch.randn(6, 4, 3))
    assert sorted((c.layer, c.direction) for c in calls) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for field in ("zoneout_hidden", "candidate_dropout", "recurrent_mask", "dropconnect_mask"):
        masks = [getattr(c, field) for c in calls]
        for i in range(len(masks)):
            for j in range(i):
                assert not torch.equal(masks[i], masks[j]), f"{field}: calls {i} and {j} share"


def test_zoneout_one_freezes_the_state():
    module = fastrnn.LSTM(3, 4, zoneout_cell=1.0, zoneout_hidden=1.0)
    h0, c0 = torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    for training in (True, False):
        module.train(training)
        out, (h_n, c_n) = module(torch.randn(5, 2, 3), (h0, c0))
        assert torch.equal(out, h0.expand(5, 2, 4))
        assert torch.equal(h_n, h0) and torch.equal(c_n, c0)


def zoneout_expectation_lstm(module, x, p_cell, p_hidden):
    """Eval mode (the zoneout expectation) with torch's LSTMCell for the un-zoned step."""
    cell = nn.LSTMCell(module.input_size, module.hidden_size, dtype=x.dtype)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, name).data.copy_(getattr(module, f"{name}_l0"))
    h = c = x.new_zeros(x.shape[1], module.hidden_size)
    outs = []
    for x_t in x:
        h_new, c_new = cell(x_t, (h, c))
        h, c = p_hidden * h + (1 - p_hidden) * h_new, p_cell * c + (1 - p_cell) * c_new
        outs.append(h)
    return torch.stack(outs)


def zoneout_expectation_gru(module, x, p):
    cell = nn.GRUCell(module.input_size, module.hidden_size, dtype=x.dtype)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, name).data.copy_(getattr(module, f"{name}_l0"))
    h = x.new_zeros(x.shape[1], module.hidden_size)
    outs = []
    for x_t in x:
        h = p * h + (1 - p) * cell(x_t, h)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU], ids=lambda c: c.__name__)
def test_eval_mode_is_deterministic_and_the_zoneout_expectation(cls):
    module = make(cls, input_size=3, hidden_size=5, dtype=torch.float64).eval()
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    out = module(x)[0]
    assert torch.equal(out, module(x)[0])
    if cls is fastrnn.LSTM:
        expected = zoneout_expectation_lstm(module, x, module.zoneout_cell, module.zoneout_hidden)
    else:
        expected = zoneout_expectation_gru(module, x, module.zoneout)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    module.train()
    assert not torch.allclose(module(x)[0], expected)
