"""The Triton kernels (kernels/, through fastrnn's Triton backend) against the float64 reference.

CPU tests run the kernels under TRITON_INTERPRET=1 on small odd shapes: every option set of
``support.OPTIONS`` for both cells, every tiling variant of ``support.TILINGS`` (persistent
kernel with one column split; per-step driver with several splits and batch tiles; the weight
streamed in chunks), bfloat16 and float16.  Results are allocated NaN-filled
(``poisoned_outputs``), so a position no kernel writes fails the finiteness check of
``check_against_reference``.  GPU tests repeat this at realistic sizes for every dtype.
"""
import math

import pytest
import torch

pytest.importorskip("triton")

import support  # noqa: E402
from fastrnn import masks as M  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn.backends.fused import poisoned_outputs  # noqa: E402
from fastrnn.kernels.launch import (  # noqa: E402
    PASSES, choose_tiling, forced_tiling, tiling_for)
from support import (  # noqa: E402
    HALF_PRECISION, REGULARIZED, TILINGS, case, cases, cast, check_against_reference,
    make_call, make_inputs, tiling_case)

needs_interpreter = pytest.mark.skipif(not support.INTERPRET,
                                       reason="CPU Triton tests need TRITON_INTERPRET=1")
CELLS = ("lstm", "gru")


def check(c, dtype=torch.float32, device="cpu", **tiling):
    with forced_tiling(**tiling), poisoned_outputs():
        check_against_reference(c, "triton", dtype, device)


@needs_interpreter
@pytest.mark.parametrize("name", list(cases()))
def test_each_option_default_tiling(name):
    """Default interpreter tiling: the persistent kernel, one column split."""
    check(cases()[name])


@needs_interpreter
@pytest.mark.parametrize("options", ["plain", "everything", "everything_per_gate_reverse",
                                     "resets_everything_reverse"])
@pytest.mark.parametrize("variant", list(TILINGS))
@pytest.mark.parametrize("cell", CELLS)
def test_tiling_variant(cell, variant, options):
    test_case, tiling = tiling_case(cell, options, variant)
    check(test_case, **tiling)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(cases(HALF_PRECISION, hidden=24)))
def test_half_precision(name, dtype):
    check(cases(HALF_PRECISION, hidden=24)[name], dtype)


@needs_interpreter
@pytest.mark.parametrize("cell", CELLS)
def test_all_false_resets_are_bitwise_no_resets(cell):
    """Resets given but never set: the kernels compiled with episode starts give the bits of
    those without (tests/test_resets.py states this of the modules, in float64, which Triton
    does not run), and the reset states get zero gradients."""
    c = case(cell, "everything_per_gate_reverse", resets=0.3)
    tensors = cast(make_inputs(c, generator_seed=8), torch.float32, "cpu")
    tensors["resets"] = torch.zeros_like(tensors["resets"])
    with_resets = make_call(c, tensors)
    without = with_resets._replace(**{name: None for name in ("resets", *c.spec.reset_states)})
    results = [support.run_call(call, "triton", torch.float32) for call in (without, with_resets)]
    (out, grads), (out_resets, grads_resets) = results
    for name, value in out.items():
        assert torch.equal(out_resets[name], value), name
    for name, value in grads.items():
        assert torch.equal(grads_resets[name], value), f"d{name}"
    for name in c.spec.reset_states:
        assert torch.equal(grads_resets[name], torch.zeros_like(grads_resets[name])), f"d{name}"


def test_default_gpu_tiling_fits_the_machine():
    """A persistent kernel needs every program resident: grid within the SM count."""
    for batch, hidden in [(64, 512), (16, 768), (3, 7), (128, 256)]:
        for kernel_pass in PASSES:
            tiling = choose_tiling(batch, hidden, 2, 132, kernel_pass)
            assert tiling.persistent
            assert tiling.programs(batch, hidden) <= 132
            assert min(tiling.block_b, tiling.block_u, tiling.block_k) >= 16
            assert tiling.splits(hidden) * tiling.block_u >= hidden
    # Even 64-row tiles make 4 x 64 = 256 programs for 132 SMs: the per-step driver.
    assert not choose_tiling(256, 1024, 2, 132).persistent


@needs_interpreter
def test_interpreter_refuses_a_persistent_kernel_with_several_splits():
    """Its programs run one after another: the tile barrier would never open."""
    with forced_tiling(block_u=16, persistent=True), pytest.raises(ValueError, match="deadlock"):
        tiling_for(4, 24, torch.float32, torch.device("cpu"))


def _run_op(c, dtype=torch.float32, device="cpu"):
    """Forward and backward of the op through the Triton backend on fresh random inputs."""
    call = make_call(c, cast(make_inputs(c, generator_seed=7), dtype, device))
    outputs = ops.forward(call, "triton")
    finals = 1 + len(c.spec.states)
    grads = tuple(torch.randn_like(o) for o in outputs[:finals])
    backward = getattr(torch.ops.fastrnn, f"{c.cell}_backward")
    return outputs, backward(*grads, outputs[0], *outputs[finals:], *tuple(call)[1:], "triton")


@needs_interpreter
@pytest.mark.parametrize("tiling", [dict(), TILINGS["driver_2_splits_2_batch_tiles"][1]],
                         ids=["persistent", "driver"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_result_is_written(cell, tiling):
    """Results start NaN-filled: each position the contract defines must come back finite."""
    c = case(cell, "everything_per_gate_reverse", steps=4, batch=18, hidden=24, lengths=None)
    with forced_tiling(**tiling), poisoned_outputs():
        outputs, grads = _run_op(c)
    for name, value in zip(c.spec.forward_outputs, outputs):
        assert torch.isfinite(value).all(), f"{name} has unwritten positions"
    for name, value in zip(c.spec.differentiable, grads):
        assert torch.isfinite(value).all(), f"d{name} has unwritten positions"


@needs_interpreter
@pytest.mark.parametrize("options", ["everything", "everything_eval", "resets_everything_reverse"])
@pytest.mark.parametrize("variant", ["persistent_2_batch_tiles", "driver_1_split",
                                     "driver_2_splits_2_batch_tiles"])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_hands_the_kernels_no_saved_tensor(cell, variant, options):
    """save=False (a forward no backward follows): the kernels get no saved tensor to write, the
    per-step LSTM driver carrying c in two slots by parity instead; out and the final states
    are bitwise the saving forward's, from NaN-filled results."""
    from fastrnn.backends import triton_backend
    c, tiling = tiling_case(cell, options, variant)
    call = make_call(c, cast(make_inputs(c, generator_seed=3), torch.float32, "cpu"))
    with forced_tiling(**tiling), poisoned_outputs():
        kept = triton_backend.forward(call, save=False)
        full = triton_backend.forward(call)
    finals = 1 + len(c.spec.states)
    assert len(kept) == finals and len(full) == len(c.spec.forward_outputs)
    for name, a, b in zip(c.spec.forward_outputs, kept, full):
        assert torch.equal(a, b), name


@needs_interpreter
@pytest.mark.parametrize("cell", CELLS)
def test_absent_parameters_get_empty_gradients(cell):
    _, grads = _run_op(case(cell, "no_bias"))
    by_name = dict(zip(case(cell, "no_bias").spec.differentiable, grads))
    assert by_name["b_hh"].numel() == 0 and by_name["ln_hh_weight"].numel() == 0
    assert by_name["b_hh"] is not by_name["ln_hh_weight"]  # op outputs may not alias


@needs_interpreter
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_inputs(cell):
    c = case(cell, "everything")
    t = cast(make_inputs(c), torch.float32, "cpu")
    expected = ops.forward(make_call(c, t), "triton")
    t["gx"] = t["gx"].transpose(0, 1).contiguous().transpose(0, 1)   # [B, T, G·H] storage
    t["w_hh"] = t["w_hh"].t().contiguous().t()                        # column-major
    for actual, want in zip(ops.forward(make_call(c, t), "triton"), expected):
        torch.testing.assert_close(actual, want, rtol=0, atol=0)


def _gru_mask_hits(field, p, batch=16, hidden=64):
    """Which elements the kernel treats as hit, read back from one GRU step's output.

    zoneout: with h0 = 1 and a candidate pinned at -1 (gx_n = -30, z gate closed) the state after
    the step is 1 where zoned out and -1 elsewhere.  candidate dropout: with h0 = 0 and z closed,
    h_1 = scale · tanh(gx_n), so a zero marks a drop."""
    c = case("gru", "plain", steps=1, batch=batch, hidden=hidden, bias=False, **{field: p})
    t = cast(make_inputs(c), torch.float32, "cpu")
    gx = torch.zeros(1, batch, 3 * hidden)
    gx[..., hidden:2 * hidden] = -30.0
    gx[..., 2 * hidden:] = -30.0 if field == "zoneout_hidden" else 1.0
    t.update(gx=gx, w_hh=torch.zeros(3 * hidden, hidden), seed=torch.tensor(123456789),
             h0=(torch.ones if field == "zoneout_hidden" else torch.zeros)(batch, hidden))
    out = ops.forward(make_call(c, t), "triton")[0][0]
    hits = out > 0.5 if field == "zoneout_hidden" else out == 0
    return hits, M.step_hits(t["seed"], c.spec.step_masks[field], p, 0, batch, hidden)


@needs_interpreter
@pytest.mark.parametrize("field", ["zoneout_hidden", "candidate_dropout"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_in_kernel_mask_rate_and_bits(field, p):
    hits, expected = _gru_mask_hits(field, p)
    rate = hits.float().mean().item()
    assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / hits.numel()), f"rate {rate:.3f} vs p={p}"
    assert torch.equal(hits, expected), "in-kernel mask differs from fastrnn.masks"


@needs_interpreter
@pytest.mark.parametrize("cell", CELLS)
def test_zoneout_one_freezes_the_state(cell):
    c = case(cell, "zoneout_one")
    t = cast(make_inputs(c, generator_seed=7), torch.float32, "cpu")
    out, h_n = ops.forward(make_call(c, t), "triton")[:2]
    torch.testing.assert_close(h_n, t["h0"], rtol=0, atol=0)
    torch.testing.assert_close(out, t["h0"].expand_as(out), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- GPU

GPU_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [256, 512])
@pytest.mark.parametrize("options", ["plain", "layer_norm", "everything"])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_realistic_sizes(cell, options, hidden, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    lengths = [32 - (b % 7) for b in range(64)]
    check(case(cell, options, steps=32, batch=64, hidden=hidden, lengths=lengths, **REGULARIZED),
          dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("tiling", [dict(block_b=16), dict(persistent=False),
                                    dict(hoist=False)],
                         ids=["4_batch_tiles", "per_step_driver", "streamed_weights"])
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_tiling_variants(cell, tiling, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    check(case(cell, "everything_per_gate_reverse", steps=32, batch=64, hidden=256,
               lengths=[32 - (b % 5) for b in range(64)]), dtype, device="cuda", **tiling)
