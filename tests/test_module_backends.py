"""End to end through the modules: every compiled backend equals backend="reference", judged
against the reference module in float64 within ``fastrnn.check.compare``'s bound.

On a CPU machine this runs the Triton kernels under TRITON_INTERPRET=1 (how CI checks them
through the public API); on a GPU machine it runs Triton and CUDA on the device.
"""
import pytest
import torch

import fastrnn
from fastrnn.check import compare
from support import DEVICE, compiled_backends

BACKENDS = compiled_backends()
pytestmark = pytest.mark.skipif(
    not BACKENDS, reason="no compiled backend here (CPU needs triton and TRITON_INTERPRET=1)")

MODELS = {
    "ln_lstm": lambda backend: fastrnn.LayerNormLSTM(
        5, 7, num_layers=2, bidirectional=True, zoneout_cell=0.2, zoneout_hidden=0.1,
        recurrent_dropout=0.25, candidate_dropout=0.1, dropconnect=0.2, backend=backend),
    "gru_reg": lambda backend: fastrnn.GRU(
        5, 7, num_layers=2, bidirectional=True, zoneout=0.1, recurrent_dropout=0.25,
        backend=backend),
    "ln_gru_per_gate": lambda backend: fastrnn.LayerNormGRU(
        5, 7, ln_groups=3, zoneout=0.2, backend=backend),
}


def _step(model, x, lengths, seed):
    torch.manual_seed(seed)
    x = x.detach().requires_grad_()
    out, state = model(x, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    loss = out.square().sum() + sum(s.sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return (out, *states), grads


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_reference(backend, name, training):
    torch.manual_seed(0)
    fused = MODELS[name](backend).to(DEVICE).train(training)
    reference = MODELS[name]("reference").to(DEVICE).train(training)
    reference.load_state_dict(fused.state_dict())
    exact = MODELS[name]("reference").to(DEVICE).double().train(training)
    exact.load_state_dict(fused.state_dict())
    x = torch.randn(4, 3, 5, device=DEVICE)
    lengths = torch.tensor([4, 1, 3])
    runs = [_step(model, x.to(dtype), lengths, seed=1)
            for model, dtype in ((fused, torch.float32), (reference, torch.float32),
                                 (exact, torch.float64))]
    names = ([f"output {index}" for index in range(len(runs[0][0]))]
             + ["dx"] + [f"d{n}" for n, _ in fused.named_parameters()])
    # A parameter's gradient sums over the T·B = 12 steps and rows.
    sums = {n: 1 if n.startswith("output") or n == "dx" else 12 for n in names}
    results = zip(*(outputs + tuple(grads) for outputs, grads in runs))
    for label, (got, own, expected) in zip(names, results):
        result = compare(f"{backend} {name} {label}", got, own, expected, reduction=sums[label])
        assert result.passed, result
