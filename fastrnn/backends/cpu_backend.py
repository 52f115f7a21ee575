"""The cpu backend: fused C++ recurrences for CPU tensors (``fastrnn._cpu``, csrc/cpu/).

Each call runs its whole time loop in C++: per step one BLAS product of the recurrent weight
into a preallocated buffer, then one pass over the rows, parallel over rows with torch's thread
count, doing the layer norm, gates, regularizers and lengths with the per-element math the CUDA
kernels share (csrc/cell_math.cuh, the masks of csrc/philox.cuh, bit for bit those of
``fastrnn.masks``).  The backward runs the same way in reverse and forms d W_hh with one GEMM over
every step.  float32 and float64 (gate math in the input's precision, so ``gradcheck`` runs on
it) and bfloat16 (float32 math and state).  Without ``save`` the forward keeps only out and the
final states, with O(B·H) workspace.

This module allocates every result (``fused.new_output``, so poisoned-output tests see what a
kernel leaves unwritten) and converts the call's tensors to what the kernels read; the build is
``cpu_build``'s.  docs/ops.md, "The cpu backend", states threads and determinism.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import masks as M
from ..cells import cell_of
from . import cpu_build
from .fused import Extension, absent_gradient, check_ln_groups, new_output, saved_outputs

DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_extension = Extension(lambda: cpu_build.load_extension(), "CPU extension fastrnn._cpu")


def unavailable() -> Optional[str]:
    """Why the backend cannot run here (and what to install), or None.  Compiles nothing: a
    missing extension that can be built on first use counts as available."""
    if _extension.error is not None:
        return _extension.error
    if _extension.module is not None or cpu_build.installed_extension_present():
        return None
    return cpu_build.jit_unavailable()


def unsupported(device, dtype) -> Optional[str]:
    if device.type != "cpu":
        return "the CPU kernels run CPU tensors only"
    if dtype not in DTYPES:
        return "the CPU kernels take float32, float64 and bfloat16 (float16 runs on backend='reference')"
    return None


def _ext():
    return _extension.get()


def _cast(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """What the kernels read: contiguous, in the call's element type (a no-op when it is)."""
    return None if tensor is None else tensor.to(dtype).contiguous()


def _call_tensors(ext, call, dtype):
    lengths = call.lengths
    return ext.CallTensors(
        w_hh=_cast(call.w_hh, dtype), b_hh=_cast(call.b_hh, dtype),
        ln_hh_weight=_cast(call.ln_hh_weight, dtype),
        ln_cell_weight=_cast(getattr(call, "ln_cell_weight", None), dtype),
        ln_cell_bias=_cast(getattr(call, "ln_cell_bias", None), dtype),
        h0=_cast(call.h0, dtype), c0=_cast(getattr(call, "c0", None), dtype),
        lengths=None if lengths is None else lengths.to(torch.int64).contiguous(),
        recurrent_mask=_cast(call.recurrent_mask, dtype),
        resets=None if call.resets is None else call.resets.to(torch.bool).contiguous(),
        h_reset=_cast(call.h_reset, dtype), c_reset=_cast(getattr(call, "c_reset", None), dtype))


def _options(ext, call):
    zoneout_cell = float(getattr(call, "zoneout_cell", 0.0))
    zoneout_hidden, candidate = float(call.zoneout_hidden), float(call.candidate_dropout)
    return ext.Options(
        ln_groups=int(call.ln_groups), zoneout_cell=zoneout_cell, zoneout_hidden=zoneout_hidden,
        candidate_dropout=candidate, zoneout_cell_threshold=M.threshold(zoneout_cell),
        zoneout_hidden_threshold=M.threshold(zoneout_hidden),
        candidate_threshold=M.threshold(candidate), training=bool(call.training),
        reverse=bool(call.reverse), seed=int(call.seed))


def forward(call, save: bool = True):
    """(out, h_n[, c_n]) and, with ``save``, the saved tensors (``fastrnn.cells``)."""
    cell = cell_of(call)
    check_ln_groups(call)
    ext = _ext()
    gx = call.gx.contiguous()
    dtype, device = gx.dtype, gx.device
    steps, batch = gx.shape[0], gx.shape[1]
    hidden, width = gx.shape[2] // cell.num_gates, call.h0.shape[-1]
    lstm = "c" in cell.states
    out = new_output(steps, batch, width, dtype=dtype, device=device)
    finals = [new_output(batch, width, dtype=dtype, device=device)]
    if lstm:
        finals.append(new_output(batch, hidden, dtype=dtype, device=device))
    saved = saved_outputs(call, gx) if save else ()
    ext.forward(cell=cell.name, call=_call_tensors(ext, call, dtype), options=_options(ext, call),
                gx=gx, out=out, h_n=finals[0], c_n=finals[1] if lstm else None,
                preact=saved[0] if save else None, middle=saved[1] if save else None,
                stats=saved[2] if save else None)
    return (out, *finals, *saved)


def backward(call, saved, grads):
    """{field: gradient} of the cell's differentiable fields (``fastrnn.cells.Cell.differentiable``)
    that these kernels run; ``fastrnn.backends.backward`` places them."""
    cell = cell_of(call)
    check_ln_groups(call)
    ext = _ext()
    lstm = "c" in cell.states
    preact = saved.preact.contiguous()
    dtype, device = preact.dtype, preact.device
    grad_out, grad_h_n = (_cast(g, dtype) for g in grads[:2])
    grad_c_n = _cast(grads[2], dtype) if lstm else None
    w_hh = call.w_hh

    def like(tensor):
        return None if tensor is None else new_output(*tensor.shape, dtype=tensor.dtype, device=device)

    present = [("b_hh", call.b_hh), ("ln_hh_weight", call.ln_hh_weight)]
    if lstm:
        present += [("ln_cell_weight", call.ln_cell_weight), ("ln_cell_bias", call.ln_cell_bias)]
    params = {name: like(tensor) for name, tensor in present}
    d_gx = new_output(*preact.shape, dtype=dtype, device=device)
    d_w_hh, d_h0 = like(w_hh), like(call.h0)
    d_c0 = like(call.c0) if lstm else None
    resets = [like(getattr(call, field)) for field in cell.reset_states] if call.resets is not None else []
    ext.backward(cell=cell.name, call=_call_tensors(ext, call, dtype), options=_options(ext, call),
                 grad_out=grad_out, grad_h_n=grad_h_n, grad_c_n=grad_c_n,
                 out=saved.out.contiguous(), preact=preact,
                 middle=saved[2].contiguous(), stats=saved.stats.contiguous(), d_gx=d_gx,
                 d_w_hh=d_w_hh, d_b_hh=params["b_hh"], d_ln_hh_weight=params["ln_hh_weight"],
                 d_ln_cell_weight=params.get("ln_cell_weight"),
                 d_ln_cell_bias=params.get("ln_cell_bias"), d_h0=d_h0, d_c0=d_c0,
                 d_h_reset=resets[0] if resets else None,
                 d_c_reset=resets[1] if len(resets) > 1 else None)
    results = {"gx": d_gx, "w_hh": d_w_hh, "h0": d_h0, "c0": d_c0,
               **{name: absent_gradient(w_hh) if grad is None else grad
                  for name, grad in params.items()},
               **dict(zip(cell.reset_states, resets))}
    return {name: grad for name, grad in results.items() if name in cell.differentiable}


CELL_NAMES = ("lstm", "gru")  # fastrnn.backends: the cells csrc/cpu/ has kernels for
FEATURES = frozenset({"resets"})  # fastrnn.backends: the optional call features it runs
