"""The Triton GRU kernels (kernels/gru.py) against the float64 reference cells.

CPU cases run under TRITON_INTERPRET=1 and stay small; every tiling variant (persistent kernel
with one column split, per-step driver with several splits and batch tiles, hoisted or streamed
W_hh) is forced on the same cases.  GPU cases (pytest.mark.gpu) use realistic sizes.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

import support  # noqa: E402
from support import INTERPRET, Case, check_against_reference, make_inputs  # noqa: E402

from fastrnn import masks as M  # noqa: E402
from fastrnn.kernels.common import forced_tiling, poisoned_outputs  # noqa: E402

cpu = pytest.mark.skipif(not INTERPRET, reason="CPU Triton runs only under TRITON_INTERPRET=1")


def gru_case(**options):
    return Case(cell="gru", **options)


# Each option alone, then together.
OPTIONS = {
    "plain": gru_case(),
    "no_bias": gru_case(bias=False),
    "zoneout_train": gru_case(zoneout_hidden=0.3),
    "zoneout_eval": gru_case(zoneout_hidden=0.3, training=False),
    "recurrent_dropout": gru_case(recurrent_dropout=0.3),
    "candidate_dropout": gru_case(candidate_dropout=0.3),
    "candidate_dropout_eval": gru_case(candidate_dropout=0.3, training=False),
    "ln_groups1": gru_case(layer_norm=True),
    "ln_groups3": gru_case(layer_norm=True, ln_groups=3),
    "ln_no_bias": gru_case(layer_norm=True, bias=False),
    "lengths": gru_case(lengths=[2, 5, 3]),
    "reverse": gru_case(reverse=True),
    "reverse_lengths": gru_case(reverse=True, lengths=[2, 5, 3]),
    "batch1": gru_case(batch=1, steps=4),
    "one_step": gru_case(steps=1, batch=2),
    "everything": gru_case(layer_norm=True, zoneout_hidden=0.2, candidate_dropout=0.2,
                           recurrent_dropout=0.3, lengths=[4, 1, 5]),
    "everything_reverse_groups3": gru_case(layer_norm=True, ln_groups=3, zoneout_hidden=0.2,
                                           candidate_dropout=0.2, recurrent_dropout=0.3,
                                           reverse=True, lengths=[1, 5, 3]),
    "everything_eval": gru_case(layer_norm=True, zoneout_hidden=0.4, candidate_dropout=0.2,
                                training=False, bias=False),
}


@cpu
@pytest.mark.parametrize("name", list(OPTIONS))
def test_default_tiling_matches_reference(name):
    check_against_reference(OPTIONS[name], "triton", torch.float32)


# Tilings forced on the interpreter.  H=20 with block_h=8 gives three column splits, the last
# one partly empty; B=4 with block_b=2 gives two batch tiles.
TILINGS = {
    "persistent_one_split_streamed": dict(block_b=4, block_h=32, block_k=8, hoist_weights=False,
                                          persistent=True),
    "driver_three_splits_two_tiles": dict(block_b=2, block_h=8, persistent=False),
    "driver_two_splits_streamed": dict(block_b=2, block_h=16, block_k=8, hoist_weights=False,
                                       persistent=False),
}
TILED_CASES = {
    "plain": gru_case(steps=3, batch=4, hidden=20),
    "everything": gru_case(steps=4, batch=4, hidden=20, layer_norm=True, zoneout_hidden=0.2,
                           candidate_dropout=0.2, recurrent_dropout=0.3, lengths=[4, 1, 3, 2]),
    "groups3_reverse": gru_case(steps=3, batch=4, hidden=20, layer_norm=True, ln_groups=3,
                                reverse=True, lengths=[3, 2, 1, 3], zoneout_hidden=0.3,
                                training=False),
}


@cpu
@pytest.mark.parametrize("tiling", list(TILINGS))
@pytest.mark.parametrize("name", list(TILED_CASES))
def test_every_tiling_matches_reference(tiling, name):
    with forced_tiling(**TILINGS[tiling]):
        check_against_reference(TILED_CASES[name], "triton", torch.float32)


@cpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["plain", "everything_reverse_groups3"])
def test_half_precision_matches_reference(dtype, name):
    check_against_reference(OPTIONS[name], "triton", dtype)


def _run_op(case, dtype=torch.float32, device="cpu"):
    """Forward and backward of the op through the Triton backend on fresh random inputs."""
    t = {k: (v.to(device=device, dtype=dtype) if v is not None and v.is_floating_point()
             else (None if v is None else v.to(device)))
         for k, v in make_inputs(case, generator_seed=7).items()}
    args = tuple(support.make_call(case, t))
    out, h_n, preact, hidden_n, stats = torch.ops.fastrnn.gru_forward(*args, "triton")
    grads = torch.ops.fastrnn.gru_backward(
        torch.randn_like(out), torch.randn_like(h_n), out, preact, hidden_n, stats, *args[1:],
        "triton")
    return (out, h_n, preact, hidden_n, stats), grads


@cpu
@pytest.mark.parametrize("tiling", [dict(), TILINGS["driver_three_splits_two_tiles"]])
def test_every_output_is_written(tiling):
    """Outputs start NaN-filled: each position the contract defines must come back finite."""
    case = gru_case(steps=4, batch=4, hidden=20, layer_norm=True, ln_groups=3, zoneout_hidden=0.2,
                    candidate_dropout=0.2, recurrent_dropout=0.2)
    with forced_tiling(**tiling), poisoned_outputs():
        outputs, grads = _run_op(case)
    for name, value in zip(("out", "h_n", "preact", "hidden_n", "stats"), outputs):
        assert torch.isfinite(value).all(), f"{name} has unwritten positions"
    for name, value in zip(("d_gx", "d_w_hh", "d_b_hh", "d_ln_hh", "d_h0"), grads):
        assert torch.isfinite(value).all(), f"{name} has unwritten positions"


@cpu
def test_absent_parameters_get_empty_gradients():
    _, (d_gx, d_w_hh, d_b_hh, d_ln_hh, d_h0) = _run_op(gru_case(bias=False))
    assert d_b_hh.numel() == 0 and d_ln_hh.numel() == 0
    assert d_b_hh is not d_ln_hh   # op outputs may not alias each other


@cpu
def test_non_contiguous_inputs():
    case = gru_case(layer_norm=True, recurrent_dropout=0.3)
    t = {k: (v.float() if v is not None and v.is_floating_point() else v)
         for k, v in make_inputs(case).items()}
    args = tuple(support.make_call(case, t))
    strided = list(args)
    strided[0] = args[0].transpose(0, 1).contiguous().transpose(0, 1)   # gx as [B, T, 3H] storage
    strided[1] = args[1].t().contiguous().t()                             # w_hh column-major
    expected = torch.ops.fastrnn.gru_forward(*args, "triton")
    actual = torch.ops.fastrnn.gru_forward(*strided, "triton")
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def _mask_rate(kind, p, case, dtype=torch.float32):
    """Fraction of elements the kernel treats as hit, read back from its outputs.

    zoneout: with h0 = 1 and a candidate pinned at 0 (gx_n = -inf-like, z gate closed) the
    state after one step is 1 where zoned out and 0 elsewhere.  candidate dropout: with h0 = 0
    and z closed, h_1 = scale · tanh(gx_n), so a zero marks a drop."""
    T, B, H = 1, case.batch, case.hidden
    gx = torch.zeros(T, B, 3 * H, dtype=dtype)
    gx[..., H:2 * H] = -30.0                       # z = σ(-30) ≈ 0: h~ = n
    gx[..., 2 * H:] = -30.0 if kind == M.ZONEOUT_HIDDEN else 1.0
    h0 = torch.ones(B, H, dtype=dtype) if kind == M.ZONEOUT_HIDDEN else torch.zeros(B, H, dtype=dtype)
    w_hh = torch.zeros(3 * H, H, dtype=dtype)
    seed = torch.tensor(123456789, dtype=torch.int64)
    zoneout, candidate = (p, 0.0) if kind == M.ZONEOUT_HIDDEN else (0.0, p)
    out, *_ = torch.ops.fastrnn.gru_forward(gx, w_hh, None, None, h0, None, None, seed, 1,
                                            zoneout, candidate, True, False, "triton")
    hits = (out[0] > 0.5) if kind == M.ZONEOUT_HIDDEN else (out[0] == 0)
    expected = M.step_hits(seed, kind, p, 0, B, H)
    return hits, expected


@cpu
@pytest.mark.parametrize("kind", [M.ZONEOUT_HIDDEN, M.CANDIDATE_DROPOUT])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_in_kernel_mask_rate_and_bits(kind, p):
    case = gru_case(batch=16, hidden=64)
    hits, expected = _mask_rate(kind, p, case)
    n = hits.numel()
    rate = hits.float().mean().item()
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n), f"rate {rate:.3f} vs p={p}"
    assert torch.equal(hits, expected), "in-kernel mask differs from fastrnn.masks"


@cpu
def test_zoneout_one_freezes_the_state():
    case = gru_case(zoneout_hidden=1.0)
    (out, h_n, *_), _ = _run_op(case)
    h0 = make_inputs(case, generator_seed=7)["h0"].float()
    torch.testing.assert_close(h_n, h0, rtol=0, atol=0)
    torch.testing.assert_close(out, h0.expand_as(out), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- GPU

GPU_CASES = {
    "plain": gru_case(steps=24, batch=24, hidden=160),
    "regularized": gru_case(steps=24, batch=24, hidden=160, zoneout_hidden=0.1,
                            recurrent_dropout=0.25, candidate_dropout=0.1),
    "ln_everything": gru_case(steps=24, batch=70, hidden=200, layer_norm=True, zoneout_hidden=0.1,
                              recurrent_dropout=0.25, candidate_dropout=0.1, reverse=True),
    "ln_groups3_lengths": gru_case(steps=16, batch=33, hidden=96, layer_norm=True, ln_groups=3,
                                   lengths=list(range(1, 17)) * 2 + [16]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_matches_reference(name, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    check_against_reference(GPU_CASES[name], "triton", dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("tiling", [dict(persistent=False), dict(hoist_weights=False, block_k=32)])
def test_gpu_other_drivers_match_reference(tiling):
    with forced_tiling(**tiling):
        check_against_reference(GPU_CASES["ln_everything"], "triton", torch.float32, device="cuda")
