"""The reference cells against torch.nn (options off) and under gradcheck (every path)."""
import pytest
import torch

from fastrnn import masks as M
from fastrnn import reference as R
from fastrnn.functional import gru_layer, lstm_layer
from support import max_rel_err

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
    no_masks = R.MaskSource(seed=torch.zeros((), dtype=torch.int64))
    if cell == "lstm":
        c0 = torch.randn_like(h0)
        expected, (h_n, c_n) = module(x, (h0, c0))
        out, h, c, *_ = R.lstm_sequence(gx, w_hh, b_hh, None, None, None, h0[direction],
                                        c0[direction], None, None, R.Regularizers(), no_masks,
                                        reverse=reverse)
        assert max_rel_err(c, c_n[direction]) <= 1e-12
    else:
        expected, h_n = module(x, h0)
        out, h, *_ = R.gru_sequence(gx, w_hh, b_hh, None, h0[direction], None, None,
                                    R.Regularizers(), no_masks, reverse=reverse)
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

STEPS, BATCH, HIDDEN = 3, 2, 4

PATHS = {
    "plain": {},
    "layer_norm": {"layer_norm": True},
    "layer_norm_per_gate": {"layer_norm": True, "per_gate": True},
    "zoneout_train": {"zoneout_cell": 0.4, "zoneout_hidden": 0.3, "training": True},
    "zoneout_eval": {"zoneout_cell": 0.4, "zoneout_hidden": 0.3},
    "candidate_dropout": {"candidate_dropout": 0.4, "training": True},
    "recurrent_dropout": {"recurrent_dropout": 0.4, "training": True},
    "dropconnect": {"dropconnect": 0.4, "training": True},
    "lengths": {"lengths": [3, 1]},
    "lengths_reverse": {"lengths": [2, 3], "reverse": True},
    "everything": {"layer_norm": True, "zoneout_cell": 0.3, "zoneout_hidden": 0.3,
                   "candidate_dropout": 0.3, "recurrent_dropout": 0.3, "dropconnect": 0.3,
                   "training": True, "lengths": [2, 3], "reverse": True},
}


def _gradcheck_case(cell, options):
    gates = 4 if cell == "lstm" else 3
    layer_norm = options.get("layer_norm", False)
    groups = gates if options.get("per_gate") else 1
    training = options.get("training", False)
    seed = torch.tensor(12345)
    g = torch.Generator().manual_seed(3)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_(True)

    params = {"x": rnd(STEPS, BATCH, 3), "w_ih": rnd(gates * HIDDEN, 3, scale=0.5),
              "w_hh": rnd(gates * HIDDEN, HIDDEN, scale=0.5), "b_ih": rnd(gates * HIDDEN, scale=0.1),
              "b_hh": rnd(gates * HIDDEN, scale=0.1), "h0": rnd(BATCH, HIDDEN)}
    if layer_norm:
        params["ln_ih"] = rnd(gates * HIDDEN)
        params["ln_hh"] = rnd(gates * HIDDEN)
    if cell == "lstm":
        params["c0"] = rnd(BATCH, HIDDEN)
        if layer_norm:
            params["ln_cell_w"] = rnd(HIDDEN)
            params["ln_cell_b"] = rnd(HIDDEN)
    reg = R.Regularizers(options.get("zoneout_cell", 0.0) if cell == "lstm" else 0.0,
                         options.get("zoneout_hidden", 0.0), options.get("candidate_dropout", 0.0),
                         training)
    shape = (STEPS, BATCH, HIDDEN)
    captured = M.CallMasks(
        layer=0, direction=0, cell=cell,
        zoneout_cell=M.bernoulli(seed, M.ZONEOUT_CELL, 0.5, shape) if reg.zoneout_cell else None,
        zoneout_hidden=M.bernoulli(seed, M.ZONEOUT_HIDDEN, 0.5, shape) if reg.zoneout_hidden else None,
        candidate=M.bernoulli(seed, M.CANDIDATE_DROPOUT, 0.5, shape) if reg.candidate_dropout else None)
    p_rec, p_dc = options.get("recurrent_dropout", 0.0), options.get("dropconnect", 0.0)
    recurrent = M.keep_scale(seed, M.RECURRENT_DROPOUT, p_rec, (BATCH, HIDDEN), F64) if p_rec else None
    dropconnect = (M.keep_scale(seed, M.DROPCONNECT, p_dc, (gates * HIDDEN, HIDDEN), F64)
                   if p_dc else None)
    lengths = torch.tensor(options["lengths"]) if "lengths" in options else None
    reverse = options.get("reverse", False)
    names = list(params)

    def run(*values):
        p = dict(zip(names, values))
        w_hh = p["w_hh"] if dropconnect is None else p["w_hh"] * dropconnect
        gx = R.project_input(p["x"], p["w_ih"], p["b_ih"], p.get("ln_ih"), groups)
        masks = R.MaskSource(captured=captured)
        if cell == "lstm":
            out, h, c, *_ = R.lstm_sequence(gx, w_hh, p["b_hh"], p.get("ln_hh"), p.get("ln_cell_w"),
                                            p.get("ln_cell_b"), p["h0"], p["c0"], lengths,
                                            recurrent, reg, masks, groups, reverse)
            return out, h, c
        out, h, *_ = R.gru_sequence(gx, w_hh, p["b_hh"], p.get("ln_hh"), p["h0"], lengths,
                                    recurrent, reg, masks, groups, reverse)
        return out, h

    return run, tuple(params.values())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_reference(cell, path):
    run, inputs = _gradcheck_case(cell, PATHS[path])
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_zoneout_one_freezes_the_state():
    """zoneout = 1.0 (allowed by SPEC §2): the state never changes in training."""
    gx = torch.randn(STEPS, BATCH, 3 * HIDDEN, dtype=F64)
    w_hh = torch.randn(3 * HIDDEN, HIDDEN, dtype=F64)
    h0 = torch.randn(BATCH, HIDDEN, dtype=F64)
    reg = R.Regularizers(zoneout_hidden=1.0, training=True)
    out, h, *_ = R.gru_sequence(gx, w_hh, None, None, h0, None, None, reg,
                                R.MaskSource(seed=torch.tensor(7)))
    assert torch.equal(h, h0) and torch.equal(out, h0.expand_as(out))


# --------------------------------------- the ops' hand-derived backward (reference backend)

OP_CASES = {
    "plain": {},
    "no_bias": {"bias": False},
    "layer_norm": {"layer_norm": True},
    "layer_norm_per_gate": {"layer_norm": True, "ln_groups": "gates"},
    "zoneout_train": {"zoneout_cell": 0.4, "zoneout_hidden": 0.3},
    "zoneout_eval": {"zoneout_cell": 0.4, "zoneout_hidden": 0.3, "training": False},
    "candidate_dropout": {"candidate_dropout": 0.4},
    "recurrent_dropout": {"recurrent_dropout": 0.4},
    "lengths": {"lengths": [3, 1, 2]},
    "lengths_reverse": {"lengths": [2, 3, 1], "reverse": True},
    "everything": {"layer_norm": True, "zoneout_cell": 0.3, "zoneout_hidden": 0.3,
                   "candidate_dropout": 0.3, "recurrent_dropout": 0.3, "lengths": [2, 3, 1],
                   "reverse": True},
}


@pytest.mark.parametrize("path", list(OP_CASES))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_op(cell, path):
    """gradcheck of torch.ops.fastrnn.*_forward: its registered backward is the reference's
    per-step chain rule, checked here against finite differences in float64."""
    from support import Case, differentiable_names, forward_args, make_inputs
    options = dict(OP_CASES[path])
    if options.get("ln_groups") == "gates":
        options["ln_groups"] = 4 if cell == "lstm" else 3
    case = Case(cell=cell, steps=3, batch=3, hidden=4, **options)
    inputs = make_inputs(case)
    names = [n for n in differentiable_names(case) if inputs[n] is not None]
    op = torch.ops.fastrnn.lstm_forward if cell == "lstm" else torch.ops.fastrnn.gru_forward
    differentiable_outputs = 3 if cell == "lstm" else 2

    def run(*values):
        t = dict(inputs, **dict(zip(names, values)))
        return op(*forward_args(case, t), "reference")[:differentiable_outputs]

    leaves = tuple(inputs[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)
