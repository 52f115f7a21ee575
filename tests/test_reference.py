"""The reference cells against torch.nn (options off) and under gradcheck (every path)."""
import pytest
import torch
import torch.nn.functional as F

from fastrnn import masks as M
from fastrnn import reference as R
from fastrnn.cells import LAYER_NORM_EPS, GRUCall, LSTMCall
from fastrnn.functional import gru_layer, lstm_layer, project_input
from fastrnn import ops
from support import (OPTIONS, PROJECTION, assert_close, case, differentiable_names, make_call,
                     make_inputs, max_rel_err)

F64 = torch.float64


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_matches_torch_nn_with_options_off(cell, reverse):
    torch.manual_seed(0)
    steps, batch, inputs, hidden = 6, 3, 5, 7
    torch_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    module = torch_cls(inputs, hidden, bidirectional=reverse, dtype=F64)
    suffix = "_reverse" if reverse else ""
    w_ih, w_hh, b_ih, b_hh = (getattr(module, f"{name}_l0{suffix}")
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    x = torch.randn(steps, batch, inputs, dtype=F64)
    h0 = torch.randn(1 + reverse, batch, hidden, dtype=F64)
    direction = 1 if reverse else 0
    gx = R.project_input(x, w_ih, b_ih, None, 1)
    seed = torch.zeros((), dtype=torch.int64)
    no_masks = R.MaskSource(seed=seed)
    options = dict(gx=gx, w_hh=w_hh, b_hh=b_hh, ln_hh_weight=None, h0=h0[direction], lengths=None,
                   recurrent_mask=None, seed=seed, ln_groups=1, zoneout_hidden=0.0,
                   candidate_dropout=0.0, training=False, reverse=reverse)
    if cell == "lstm":
        c0 = torch.randn_like(h0)
        expected, (h_n, c_n) = module(x, (h0, c0))
        out, h, c, *_ = R.lstm_sequence(LSTMCall(ln_cell_weight=None, ln_cell_bias=None,
                                                 c0=c0[direction], zoneout_cell=0.0, **options),
                                        no_masks)
        assert max_rel_err(c, c_n[direction]) <= 1e-12
    else:
        expected, h_n = module(x, h0)
        out, h, *_ = R.gru_sequence(GRUCall(**options), no_masks)
    expected = expected[..., direction * hidden:(direction + 1) * hidden]
    assert max_rel_err(out, expected) <= 1e-12
    assert max_rel_err(h, h_n[direction]) <= 1e-12


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_op_gradients_match_torch_nn(cell):
    """Through the op (reference backend, its per-step chain rule) = autograd of torch.nn."""
    torch.manual_seed(1)
    steps, batch, inputs, hidden = 4, 2, 3, 5
    torch_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    module = torch_cls(inputs, hidden, dtype=F64)
    params = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
    x = torch.randn(steps, batch, inputs, dtype=F64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=F64, requires_grad=True)
    c0 = torch.randn(batch, hidden, dtype=F64, requires_grad=True)
    if cell == "lstm":
        expected, (h_n, c_n) = module(x, (h0[None], c0[None]))
        ours = lstm_layer(x, *params, h0, c0)
        leaves = [x, h0, c0, *params]
        theirs = (expected, h_n[0], c_n[0])
    else:
        expected, h_n = module(x, h0[None])
        ours = gru_layer(x, *params, h0)
        leaves = [x, h0, *params]
        theirs = (expected, h_n[0])
    weights = [torch.randn_like(t) for t in theirs]
    grads_ours = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, ours)), leaves)
    grads_theirs = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, theirs)), leaves)
    for mine, ref in zip(grads_ours, grads_theirs):
        assert max_rel_err(mine, ref) <= 1e-12


# ------------------------------------------------------------------ gradcheck of every path
# Every option set of support.OPTIONS (and, for the LSTM, of support.PROJECTION), plus
# dropconnect (applied to W_hh outside the op), through the reference cells with the masks fixed
# (replayed), against finite differences.

PATHS = {**{name: {"options": name} for name in OPTIONS}, "dropconnect": {"dropconnect": 0.4}}
CELL_PATHS = ([(cell, path) for cell in ("lstm", "gru") for path in PATHS]
              + [("lstm", name) for name in PROJECTION])


def _gradcheck_case(cell, path):
    c = case(cell, path.get("options", "plain"), hidden=4)
    inputs = make_inputs(c, torch.float64)
    seed = inputs["seed"]
    widths = {"h": c.width, "c": c.hidden}
    captured = M.CallMasks(layer=0, direction=0, cell=cell, **{
        field: (M.bernoulli(seed, kind, 0.5,
                            (c.steps, c.batch, widths[c.spec.step_mask_states[field]]))
                if getattr(c, field, 0.0) > 0 else None)
        for field, kind in c.spec.step_masks.items()})
    p_dc = path.get("dropconnect", 0.0)
    dropconnect = (M.keep_scale(seed, M.DROPCONNECT, p_dc, tuple(inputs["w_hh"].shape),
                                torch.float64) if p_dc else None)
    names = [n for n in differentiable_names(c) if inputs.get(n) is not None]

    def run(*values):
        t = dict(inputs, **dict(zip(names, values)))
        if dropconnect is not None:
            t["w_hh"] = t["w_hh"] * dropconnect
        sequence, _ = R.SEQUENCES[cell]
        results = sequence(make_call(c, t), R.MaskSource(captured=captured))
        return results[:1 + len(c.spec.states)]

    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names)
    return run, leaves


@pytest.mark.parametrize("cell,path", CELL_PATHS)
def test_gradcheck_reference(cell, path):
    run, inputs = _gradcheck_case(cell, PATHS.get(path, {"options": path}))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_zoneout_one_freezes_the_state():
    """zoneout = 1.0 (allowed for zoneout, docs/cells.md): the state never changes in training."""
    steps, batch, hidden = 3, 2, 4
    gx = torch.randn(steps, batch, 3 * hidden, dtype=F64)
    w_hh = torch.randn(3 * hidden, hidden, dtype=F64)
    h0 = torch.randn(batch, hidden, dtype=F64)
    seed = torch.tensor(7)
    call = GRUCall(gx, w_hh, None, None, h0, None, None, seed, 1, zoneout_hidden=1.0,
                   candidate_dropout=0.0, training=True, reverse=False)
    out, h, *_ = R.gru_sequence(call, R.MaskSource(seed=seed))
    assert torch.equal(h, h0) and torch.equal(out, h0.expand_as(out))


# --------------------------------------- the ops' hand-derived backward (reference backend)

@pytest.mark.parametrize("cell,name", [(cell, name) for cell in ("lstm", "gru") for name in OPTIONS]
                         + [("lstm", name) for name in PROJECTION])
def test_gradcheck_op(cell, name):
    """gradcheck of torch.ops.fastrnn.*_forward: its registered backward is the reference's
    per-step chain rule, checked here against finite differences in float64."""
    c = case(cell, name, hidden=4)
    inputs = make_inputs(c)
    names = [n for n in differentiable_names(c) if inputs.get(n) is not None]
    finals = 1 + len(c.spec.states)

    def run(*values):
        t = dict(inputs, **dict(zip(names, values)))
        return ops.forward(make_call(c, t), "reference")[:finals]

    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------- layer-norm statistics of huge (finite) values

def _projection_inputs(ln_groups, magnitudes, generator_seed=0):
    """x [T=len(magnitudes), B=2, I=5]: step t scaled by magnitudes[t]; W_ih with one gate
    block 1e-30 smaller, so a per-gate group stays of order one beside a huge one."""
    g = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(len(magnitudes), 2, 5, generator=g, dtype=F64)
    x = x * torch.tensor(magnitudes, dtype=F64)[:, None, None]
    w_ih = torch.randn(4 * 6, 5, generator=g, dtype=F64)
    if ln_groups > 1:
        w_ih[:6] *= 1e-30
    gamma = 1 + 0.2 * torch.randn(4 * 6, generator=g, dtype=F64)
    bias = 0.1 * torch.randn(4 * 6, generator=g, dtype=F64)
    return x, w_ih, bias, gamma


def _projection_math(x, w_ih, bias, gamma, ln_groups):
    """γ ⊙ N(W_ih x) + b in float64, where nothing overflows."""
    gx = x @ w_ih.t()
    grouped = gx.reshape(*gx.shape[:-1], ln_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    normalized = ((grouped - mean) / torch.sqrt(var + LAYER_NORM_EPS)).reshape(gx.shape)
    return gamma * normalized + bias


PROJECTIONS = {"functional": project_input, "reference": R.project_input}


@pytest.mark.parametrize("ln_groups", [1, 4])
@pytest.mark.parametrize("path", list(PROJECTIONS))
def test_input_layer_norm_of_huge_values_is_the_math(path, ln_groups):
    """float32 statistics overflow near 2^64 (the squares pass 2^128) though N(v) is of order
    one: inputs up to 1e35 give the float64 math within the float32 tolerance, and gradients
    that are finite and close to float64 autograd of the math."""
    x, w_ih, bias, gamma = _projection_inputs(ln_groups, [1.0, 1e20, 1e30, 1e35, 1e-3])
    expected = _projection_math(x, w_ih, bias, gamma, ln_groups)
    leaves = [t.float().requires_grad_() for t in (x, w_ih, bias, gamma)]
    got = PROJECTIONS[path](*leaves, ln_groups)
    assert_close(got, expected, torch.float32, f"{path} projection")
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    grads = torch.autograd.grad((got.double() * weights).sum(), leaves[1:])
    exact_leaves = [t.double().detach().requires_grad_() for t in leaves]
    exact = _projection_math(*exact_leaves, ln_groups)
    expected_grads = torch.autograd.grad((exact * weights).sum(), exact_leaves[1:])
    for name, a, b in zip(("w_ih", "bias", "gamma"), grads, expected_grads):
        assert_close(a, b, torch.float32, f"d{name}")


@pytest.mark.parametrize("ln_groups", [1, 4])
def test_input_layer_norm_of_ordinary_values_is_torchs_kernel_bit_for_bit(ln_groups):
    """Below 2^40 nothing is rescaled: the projection is exactly torch's norm of W_ih x
    (F.layer_norm for one group, F.group_norm per gate)."""
    x, w_ih, bias, gamma = (t.float() for t in _projection_inputs(ln_groups, [1.0, 1e5, 1e11]))
    gx = x @ w_ih.t()
    flat = gx.reshape(-1, gx.shape[-1])
    expected = (F.layer_norm(flat, (gx.shape[-1],), gamma, bias, eps=LAYER_NORM_EPS)
                if ln_groups == 1 else
                F.group_norm(flat, ln_groups, gamma, bias, eps=LAYER_NORM_EPS)).reshape(gx.shape)
    assert torch.equal(project_input(x, w_ih, bias, gamma, ln_groups), expected)


# ------------------------------------------------- float64 calls keep float64 everywhere

def _lstm_in_float64(x, w_ih, w_hh, bias, h, c, keep):
    """The LSTM with candidate dropout δ_t = ``keep[t]``, written out in float64 autograd."""
    outs = []
    for t in range(x.shape[0]):
        i, f, g, o = (x[t] @ w_ih.t() + h @ w_hh.t() + bias).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g) * keep[t]
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def test_float64_candidate_dropout_is_float64_exact():
    """δ = 1/(1-p) in float64 for float64 calls (docs/cells.md): a float32 1/0.6 is off by
    4e-8 relative, which the outputs and gradients would carry at ~1e-7."""
    p = 0.4
    g = torch.Generator().manual_seed(5)
    steps, batch, inputs, hidden = 5, 3, 4, 6
    x, w_ih, w_hh, bias, h0, c0 = (torch.randn(*shape, generator=g, dtype=F64) for shape in
                                   [(steps, batch, inputs), (4 * hidden, inputs),
                                    (4 * hidden, hidden), (4 * hidden,), (batch, hidden),
                                    (batch, hidden)])
    leaves = [t.clone().requires_grad_() for t in (x, w_ih, w_hh, bias)]
    torch.manual_seed(0)
    with M.capture_masks() as calls:
        got = lstm_layer(leaves[0], leaves[1], leaves[2], leaves[3], None, h0, c0,
                         candidate_dropout=p, training=True)
    keep = (~calls[0].candidate_dropout).to(F64) / (1.0 - p)
    exact_leaves = [t.clone().requires_grad_() for t in (x, w_ih, w_hh, bias)]
    expected = _lstm_in_float64(*exact_leaves, h0, c0, keep)
    for name, a, b in zip(("out", "h_n", "c_n"), got, expected):
        assert max_rel_err(a, b) <= 1e-13, name
    weights = torch.randn(got[0].shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((got[0] * weights).sum() + got[2].sum(), leaves)
    expected_grads = torch.autograd.grad((expected[0] * weights).sum() + expected[2].sum(),
                                         exact_leaves)
    for name, a, b in zip(("x", "w_ih", "w_hh", "bias"), grads, expected_grads):
        assert max_rel_err(a, b) <= 1e-13, f"d{name}"
