"""The torch.func transforms over models with fastrnn layers: grad, vjp, jacrev and vmap (and
per-sample gradients, vmap of grad) give what autograd and a Python loop give.  In eager mode the
ops' autograd formula runs as an autograd.Function with setup_context (fastrnn/ops.py), and vmap
runs one call per sample (docs/api.md)."""
import warnings

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

import fastrnn

MODELS = {
    "layer_norm_lstm": lambda: fastrnn.LayerNormLSTM(3, 4, zoneout_cell=0.2, zoneout_hidden=0.1),
    "gru": lambda: fastrnn.GRU(3, 4, zoneout=0.2, bidirectional=True),
    "plain_lstm": lambda: fastrnn.LSTM(3, 4, num_layers=2),
}


def setup(name):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    params = {key: value.detach() for key, value in model.named_parameters()}
    return model, params


def loss(model):
    def run(params, x):
        out, _ = functional_call(model, params, (x,))
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum()
    return run


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grad_equals_autograd(name):
    model, params = setup(name)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    got = grad(loss(model))(params, x)
    expected = torch.autograd.grad(loss(model)(dict(model.named_parameters()), x),
                                   list(model.parameters()))
    assert got.keys() == params.keys()
    for (key, value), reference in zip(got.items(), expected):
        torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["layer_norm_lstm", "gru"])
def test_vjp_and_jacrev_equal_autograd(name):
    model, params = setup(name)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def forward(x):
        return functional_call(model, params, (x,))[0]

    out, pullback = vjp(forward, x)
    cotangent = torch.randn_like(out)
    (expected,) = torch.autograd.grad(forward(x), x, cotangent)
    torch.testing.assert_close(pullback(cotangent)[0], expected, rtol=1e-12, atol=1e-12)
    jacobian = jacrev(forward)(x.detach())
    assert jacobian.shape == out.shape + x.shape
    torch.testing.assert_close(torch.einsum("tbh,tbhsbi->sbi", cotangent, jacobian), expected,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["layer_norm_lstm", "gru"])
def test_vmap_and_per_sample_gradients_equal_a_loop(name):
    model, params = setup(name)
    xs = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "batching rule not implemented" fallback
        batched = vmap(lambda x: functional_call(model, params, (x,))[0])(xs)
        per_sample = vmap(grad(loss(model)), in_dims=(None, 0))(params, xs)
    torch.testing.assert_close(batched, torch.stack([model(x)[0] for x in xs]), rtol=1e-12,
                               atol=1e-12)
    for index, x in enumerate(xs):
        one = grad(loss(model))(params, x)
        for key in params:
            torch.testing.assert_close(per_sample[key][index], one[key], rtol=1e-12, atol=1e-12)


def test_double_backward_through_grad_still_says_it_is_not_supported():
    model, params = setup("gru")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward"):
        grad(lambda p: grad(loss(model))(p, x)["weight_hh_l0"].sum())(params)


@pytest.mark.parametrize("mode", ["torch.func.jvp", "forward_ad", "jvp_without_grad"])
def test_forward_mode_is_refused_not_silently_zero(mode):
    """Without the refusal the tangent through the op came back as zeros."""
    model, _ = setup("layer_norm_lstm")
    x, tangent = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3,
                                                                       dtype=torch.float64)
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        if mode == "forward_ad":
            with torch.autograd.forward_ad.dual_level():
                model(torch.autograd.forward_ad.make_dual(x, tangent))
        else:
            with torch.set_grad_enabled(mode == "torch.func.jvp"):
                jvp(lambda x: model(x)[0], (x,), (tangent,))
