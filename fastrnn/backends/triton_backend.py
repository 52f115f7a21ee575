"""The Triton backend: fused recurrences from ``fastrnn.kernels``.

Runs CUDA tensors on a GPU, and CPU tensors under ``TRITON_INTERPRET=1`` (how CI checks the
kernels' math).  float32, bfloat16 and float16.  This module is the glue between a recurrence
call and the kernels, which know nothing of fastrnn: it allocates the results, derives what the
kernels take (mask thresholds and kinds, the layer-norm epsilon, the recurrent inputs), and
does the work around the recurrence in torch: the layer-norm backward's W_hh (d ⊙ h_{t-1}) of
every step, the d W_hh product over every step (both in the input dtype) and the split of the
parameter gradients.  Episode starts (feature "resets") run in every driver: the flags go to the
kernels as [T, B] uint8, the reset states as [B, H] (and d ⊙ h_reset for the recurrent product).

``FASTRNN_TRITON_PERSISTENT=0`` makes every call use the per-step driver (one launch per phase
per step) instead of the persistent kernels; a persistent launch whose grid barrier gives up is
rerun on the per-step driver by ``fastrnn.kernels.launch`` (docs/api.md).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .. import masks as M
from ..cells import LAYER_NORM_EPS, cell_of
from .fused import (absent_gradient, new_output, recurrent_inputs, recurrent_weight_grad,
                    saved_outputs)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FEATURES = frozenset({"resets"})  # fastrnn.backends: the optional call features it runs


def unavailable():
    if importlib.util.find_spec("triton") is None:
        return ("triton is not installed: CUDA builds of torch on Linux bring it; on a CPU-only "
                "machine `pip install triton` (or fastrnn's `test` extra) adds it for TRITON_INTERPRET=1")
    return None


def unsupported(device, dtype):
    if dtype not in DTYPES:
        return "Triton kernels take float32, bfloat16 and float16 (float64 runs on backend='reference')"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set it before importing fastrnn)"
    if device.type not in ("cpu", "cuda"):
        return "Triton kernels run on CUDA devices"
    return None


def _launch():
    from ..kernels import launch  # triton is optional: imported when a call runs
    return launch


def __getattr__(name):
    # CELL_NAMES (fastrnn.backends): the cells the kernels have, read once triton is known to
    # be installed (the registry asks after ``unavailable``).
    if name == "CELL_NAMES":
        return tuple(_launch().CELLS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _persistent() -> bool:
    return os.environ.get("FASTRNN_TRITON_PERSISTENT", "1") != "0"


def _rates(call, kernels):
    def rate(p):
        return (M.threshold(p), float(p))
    return kernels.Rates(rate(getattr(call, "zoneout_cell", 0.0)), rate(call.zoneout_hidden),
                         rate(call.candidate_dropout))


def _options(cell, call, kernels):
    kinds = cell.step_masks
    return kernels.Options(
        cell=cell.name, gates=cell.num_gates, cell_norm=cell.cell_norm,
        ln_groups=call.ln_groups, layer_norm=call.ln_hh_weight is not None,
        training=bool(call.training), reverse=bool(call.reverse), eps=LAYER_NORM_EPS,
        kind_zoneout_cell=kinds.get("zoneout_cell", M.ZONEOUT_CELL),
        kind_zoneout_hidden=kinds["zoneout_hidden"], kind_candidate=kinds["candidate_dropout"],
        resets=call.resets is not None)


def _contiguous(tensor, dtype=None):
    if tensor is None:
        return None
    return tensor.to(dtype).contiguous() if dtype is not None else tensor.contiguous()


def _lengths(call, steps, batch, device):
    """Row lengths for the kernels, which always read them: all ``steps`` when None."""
    if call.lengths is None:
        return torch.full((batch,), steps, dtype=torch.int64, device=device)
    return call.lengths.to(device=device, dtype=torch.int64).contiguous()


def _resets(call):
    """The episode-start flags as the kernels read them: [T, B] uint8 (None without resets)."""
    return None if call.resets is None else call.resets.to(torch.uint8).contiguous()


def forward(call, save=True):
    """(out, h_n[, c_n]) and, with ``save``, the saved tensors (``fastrnn.cells``); without it
    the kernels are given none to write (the per-step LSTM driver carries c in a [2, B, H]
    workspace instead), so inference holds O(B·H) beyond out and the states."""
    cell = cell_of(call)
    gx = call.gx.contiguous()
    steps, batch = gx.shape[0], gx.shape[1]
    hidden = call.w_hh.shape[1]
    dtype, device = gx.dtype, gx.device
    layer_norm = call.ln_hh_weight is not None
    lstm = "c" in cell.states
    out = new_output(steps, batch, hidden, dtype=dtype, device=device)
    h_n = new_output(batch, hidden, dtype=dtype, device=device)
    c_n = new_output(batch, hidden, dtype=dtype, device=device) if lstm else None
    saved = saved_outputs(call, gx) if save else ()
    preact, middle, stats = saved or (None, None, None)
    finals = (h_n, c_n) if lstm else (h_n,)
    if batch == 0 or steps == 0:
        h_n.copy_(call.h0)
        if lstm:
            c_n.copy_(call.c0)
        return (out, *finals, *saved)
    kernels = _launch()
    h0 = _contiguous(call.h0, dtype)
    rmask = _contiguous(call.recurrent_mask, dtype)
    io = kernels.ForwardIO(
        gx=gx, w_hh=_contiguous(call.w_hh, dtype), b_hh=_contiguous(call.b_hh, dtype),
        ln_hh=_contiguous(call.ln_hh_weight, dtype),
        ln_cell_w=_contiguous(getattr(call, "ln_cell_weight", None), dtype),
        ln_cell_b=_contiguous(getattr(call, "ln_cell_bias", None), dtype),
        h0=h0, x0=h0 if rmask is None else (h0 * rmask).contiguous(),
        c0=_contiguous(call.c0, dtype) if lstm else None,
        lengths=_lengths(call, steps, batch, device), rmask=rmask, seed=call.seed.contiguous(),
        out=out, h_n=h_n, c_n=c_n, preact=preact, middle=middle,
        stats=stats if layer_norm else None)
    if call.resets is not None:
        h_reset = _contiguous(call.h_reset, dtype)
        io = io._replace(
            resets=_resets(call), h_reset=h_reset,
            x_reset=h_reset if rmask is None else (h_reset * rmask).contiguous(),
            c_reset=_contiguous(call.c_reset, dtype) if lstm else None)
    kernels.forward(io, _rates(call, kernels), _options(cell, call, kernels),
                    persistent=_persistent())
    return (out, *finals, *saved)


def _recurrent_products(h_in, w_hh):
    """W_hh (d ⊙ h_{t-1}) of every step, [T, B, G·H]: what the layer-norm backward normalizes
    again, as one GEMM in the input dtype (float32 accumulation) rather than a product per
    step in the kernel or a float32 tensor saved by the forward."""
    return torch.matmul(h_in, w_hh.to(h_in.dtype).t()).contiguous()


def backward(call, saved, grads):
    """{field: gradient} of the differentiable fields these kernels run (``fastrnn.backends.
    backward`` places them in the op's order)."""
    cell = cell_of(call)
    out = saved.out.contiguous()
    steps, batch, hidden = out.shape
    dtype, device = out.dtype, out.device
    layer_norm = call.ln_hh_weight is not None
    lstm = "c" in cell.states
    gates = cell.num_gates
    d_gx = new_output(steps, batch, gates * hidden, dtype=dtype, device=device)
    d_hh = new_output(steps, batch, gates * hidden, dtype=dtype, device=device)
    d_h0 = new_output(batch, hidden, dtype=dtype, device=device)
    d_c0 = new_output(batch, hidden, dtype=dtype, device=device) if lstm else None
    rmask = _contiguous(call.recurrent_mask, dtype)
    h_in = recurrent_inputs(out, call.h0, call.lengths, rmask, call.reverse, call.resets,
                            call.h_reset).contiguous()
    resets = call.resets is not None
    d_h_reset = new_output(batch, hidden, dtype=dtype, device=device) if resets else None
    d_c_reset = new_output(batch, hidden, dtype=dtype, device=device) if resets and lstm else None
    parameters = torch.zeros(2 * gates * hidden + (2 * hidden if lstm and layer_norm else 0),
                             dtype=torch.float32, device=device)
    if batch > 0 and steps > 0:
        kernels = _launch()
        io = kernels.BackwardIO(
            grad_out=_contiguous(grads[0], dtype), grad_h_n=_contiguous(grads[1], dtype),
            grad_c_n=_contiguous(grads[2], dtype) if lstm else None, out=out,
            hh=_recurrent_products(h_in, call.w_hh) if layer_norm else None,
            preact=saved.preact.contiguous(),
            middle=saved[2].contiguous(), stats=saved.stats.contiguous() if layer_norm else None,
            w_hh=_contiguous(call.w_hh, dtype), b_hh=_contiguous(call.b_hh, dtype),
            ln_hh=_contiguous(call.ln_hh_weight, dtype),
            ln_cell_w=_contiguous(getattr(call, "ln_cell_weight", None), dtype),
            ln_cell_b=_contiguous(getattr(call, "ln_cell_bias", None), dtype),
            h0=_contiguous(call.h0, dtype), c0=_contiguous(call.c0, dtype) if lstm else None,
            lengths=_lengths(call, steps, batch, device), rmask=rmask,
            seed=call.seed.contiguous(), d_gx=d_gx, d_hh=d_hh, d_h0=d_h0, d_c0=d_c0)
        if resets:
            io = io._replace(resets=_resets(call), h_reset=_contiguous(call.h_reset, dtype),
                             c_reset=_contiguous(call.c_reset, dtype) if lstm else None,
                             d_h_reset=d_h_reset, d_c_reset=d_c_reset)
        parameters = kernels.backward(io, _rates(call, kernels), _options(cell, call, kernels),
                                      persistent=_persistent())
    else:
        d_gx.zero_()
        d_hh.zero_()
        d_h0.copy_(grads[1])
        if lstm:
            d_c0.copy_(grads[2])
        for grad in (d_h_reset, d_c_reset):
            if grad is not None:
                grad.zero_()
    w_hh = call.w_hh
    width = gates * hidden

    def parameter(tensor, start, size):
        return absent_gradient(w_hh) if tensor is None else parameters[start:start + size].to(
            tensor.dtype)

    # By field name (``fastrnn.backends.backward`` places them; the LSTM's w_hr, which these
    # kernels do not run, gets an empty gradient there).
    results = {"gx": d_gx, "w_hh": recurrent_weight_grad(d_hh, h_in, w_hh),
               "b_hh": parameter(call.b_hh, 0, width),
               "ln_hh_weight": parameter(call.ln_hh_weight, width, width),
               "h0": d_h0.to(call.h0.dtype)}
    if lstm:
        results.update(ln_cell_weight=parameter(call.ln_cell_weight, 2 * width, hidden),
                       ln_cell_bias=parameter(call.ln_cell_bias, 2 * width + hidden, hidden),
                       c0=d_c0.to(call.c0.dtype))
    if resets:
        results["h_reset"] = d_h_reset.to(call.h_reset.dtype)
        if lstm:
            results["c_reset"] = d_c_reset.to(call.c_reset.dtype)
    return results
