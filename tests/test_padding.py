"""Padding never leaks: whatever lies at steps t >= L_b (NaN, Inf, huge values, what torch.empty
left there) reaches no output and no gradient, for every cell, layout and backend.

Each model runs twice on the same valid steps and seed, once with random padding and once with
poisoned padding; outputs, final states and every gradient must be bitwise equal, finite, and
the input's gradient zero on padded steps.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from support import compiled_backends

POISONS = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}
LENGTHS = [5, 2, 4, 1]

MODELS = {
    "lstm": lambda backend: fastrnn.LSTM(3, 5, num_layers=2, bidirectional=True,
                                         backend=backend),
    "gru": lambda backend: fastrnn.GRU(3, 5, num_layers=2, bidirectional=True, backend=backend),
    "ln_lstm": lambda backend: fastrnn.LayerNormLSTM(
        3, 5, ln_groups=4, num_layers=2, residual=True, zoneout_cell=0.2, zoneout_hidden=0.1,
        recurrent_dropout=0.2, dropconnect=0.2, backend=backend),
    "ln_gru": lambda backend: fastrnn.LayerNormGRU(
        3, 5, bidirectional=True, zoneout=0.2, candidate_dropout=0.2, backend=backend),
}
# Under the interpreter a Triton run takes seconds: the slow backends see the NaN poison only.
RUNS = ([("reference", poison) for poison in POISONS]
        + [(backend, "nan") for backend in compiled_backends("cpu")])


def padded_input(poison=None, batch_first=False, seed=0):
    """(T, B, I) random input (B, T, I with batch_first) whose padded steps hold ``poison``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(max(LENGTHS), len(LENGTHS), 3, generator=g)
    if poison is not None:
        for b, length in enumerate(LENGTHS):
            x[length:, b] = poison
    return x.transpose(0, 1).contiguous() if batch_first else x


def states_of(state):
    return state if isinstance(state, tuple) else (state,)


def training_step(model, x, lengths, seed=3):
    """Outputs, final states and gradients (input, then parameters) of one seeded step."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out, state = model(x, lengths=lengths)
    results = (out, *states_of(state))
    g = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g)).sum() for t in results)
    loss.backward()
    return ([t.detach() for t in results],
            [x.grad] + [p.grad for p in model.parameters()])


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "list"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("backend, poison", RUNS)
def test_padding_reaches_no_output_and_no_gradient(backend, poison, name, as_tensor,
                                                   batch_first):
    if backend != "reference" and not (as_tensor and not batch_first):
        pytest.skip("layouts are the module's, checked on the reference backend")
    torch.manual_seed(0)
    model = MODELS[name](backend)
    model.batch_first = batch_first
    lengths = torch.tensor(LENGTHS) if as_tensor else list(LENGTHS)
    poisoned = padded_input(POISONS[poison], batch_first)
    before = poisoned.clone()
    clean_results, clean_grads = training_step(model, padded_input(None, batch_first), lengths)
    results, grads = training_step(model, poisoned, lengths)
    torch.testing.assert_close(poisoned, before, rtol=0, atol=0, equal_nan=True,
                               msg="the input was modified")
    for index, (got, expected) in enumerate(zip(results + grads, clean_results + clean_grads)):
        assert torch.isfinite(got).all(), f"result {index} is not finite"
        assert torch.equal(got, expected), f"result {index} depends on the padding"
    x_grad = grads[0] if not batch_first else grads[0].transpose(0, 1)
    for b, length in enumerate(LENGTHS):
        assert torch.all(x_grad[length:, b] == 0), "gradient on a padded step"
    assert any(g.abs().sum() > 0 for g in grads[1:])


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_sequence_equals_lengths_on_poisoned_padding(name):
    """A PackedSequence carries no padding; the same sequences given as a poisoned padded batch
    with ``lengths`` give the same outputs, states and parameter gradients."""
    torch.manual_seed(0)
    model = MODELS[name]("reference")
    poisoned = padded_input(float("nan"))
    packed_results, packed_grads = [], []
    x = padded_input(None).requires_grad_()
    torch.manual_seed(3)
    out, state = model(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    assert isinstance(out, PackedSequence)
    padded_out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=max(LENGTHS))
    packed_results = [padded_out, *states_of(state)]
    g = torch.Generator().manual_seed(1)
    sum((t * torch.randn(t.shape, generator=g)).sum() for t in packed_results).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    results, grads = training_step(model, poisoned, LENGTHS)
    for index, (got, expected) in enumerate(zip(results, packed_results)):
        torch.testing.assert_close(got, expected.detach(), rtol=0, atol=0,
                                   msg=f"result {index}")
    for (parameter, _), got, expected in zip(model.named_parameters(), grads[1:], packed_grads):
        assert torch.isfinite(got).all(), parameter
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7, msg=parameter)
