"""The cuda backend: persistent CUDA kernels from csrc/, one launch per layer and direction.

How it is put together: the kernels live in ``.cu`` files that include only CUDA headers, because
torch's CUDA headers do not compile against the CPU build of torch that CI uses (it lacks the
generated ``c10/cuda/impl/cuda_cmake_macros.h``, and ``ATen/cuda/CUDAContext.h`` needs cuSPARSE's
headers, which CI's CUDA toolkit does not have); they are exposed by a small pybind11 module,
``fastrnn._C``, that takes device addresses, sizes, dtype codes and the stream handle.  This
module is the rest of the backend: it allocates every tensor with torch, launches on
``torch.cuda.current_stream()``, and does the work around the recurrence with torch ops: the
weight gradient ``d W_hh = d_hhᵀ (d ⊙ h_{t-1})`` as one GEMM, the recomputation of
``W_hh (d ⊙ h_{t-1})`` for all t when the layer-norm backward needs it, and the sum of the
per-tile parameter-gradient partials.  So csrc/ compiles without a CUDA build of torch
(``.ci/compile_csrc.sh`` checks it on CPU machines), and the ops of ``fastrnn.ops`` reach it as
``backend="cuda"``.  Nothing here synchronizes with the host, so calls can be captured in
CUDA graphs.  csrc/README.md describes the kernels.

Optional features (``FEATURES``): episode starts ("resets": the flags and reset states go to the
kernels, which return d h_reset / d c_reset as float32 sums); not the LSTM's proj_size, whose
gradient comes back empty.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import masks as M
from ..cells import CELLS, cell_of
from . import cuda_build
from .fused import (Extension, absent_gradient, check_ln_groups, recurrent_inputs,
                    recurrent_weight_grad, saved_outputs)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fastrnn.backends: the optional call features the kernels run (episode starts; not proj_size).
FEATURES = frozenset({"resets"})
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # csrc/dtype.cuh

_extension = Extension(lambda: cuda_build.load_extension(), "CUDA extension")


def unavailable() -> Optional[str]:
    """Why the backend cannot run here (and what to install), or None.  Never compiles anything."""
    reason = cuda_build.torch_without_cuda()
    if reason is not None:
        return reason
    if _extension.error is not None:
        return _extension.error
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    if _extension.module is not None or cuda_build.installed_extension_present():
        return None
    return cuda_build.jit_unavailable()


def unsupported(device, dtype) -> Optional[str]:
    if device.type != "cuda":
        return "the CUDA kernels run CUDA tensors only (CPU tensors run on backend='reference')"
    if dtype not in DTYPES:
        return "the CUDA kernels take float32, bfloat16 and float16 (float64 runs on backend='reference')"
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "the CUDA kernels need compute capability 8.0 or newer; use backend='triton'"
    return None


def _ext():
    return _extension.get()


def _kernel_input(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The kernels read every tensor but lengths, seed and the float32 saved ones as the call's
    element type: a parameter of another dtype would be misread (or read past its end)."""
    return None if tensor is None else tensor.to(dtype).contiguous()


def _address(tensor: Optional[torch.Tensor]) -> int:
    return 0 if tensor is None else tensor.data_ptr()


class _Call:
    """One recurrence call: sizes, options, its plan on the device, and the launch."""

    def __init__(self, call, backward: bool, gx_like: torch.Tensor):
        cell, w_hh, ln_groups = cell_of(call).name, call.w_hh, call.ln_groups
        zoneout_cell = getattr(call, "zoneout_cell", 0.0)
        zoneout_hidden, candidate_dropout = call.zoneout_hidden, call.candidate_dropout
        gates = CELLS[cell].num_gates
        check_ln_groups(call)
        self.cell, self.backward, self.device = cell, backward, gx_like.device
        self.steps, self.batch, self.hidden = gx_like.shape[0], gx_like.shape[1], w_hh.shape[1]
        self.gates = gates
        # hidden == 0 too: there is nothing to compute, and the planner divides by the team size.
        self.empty = self.steps == 0 or self.batch == 0 or self.hidden == 0
        self.options = dict(
            steps=self.steps, batch=self.batch, hidden=self.hidden, gates=gates, ln_groups=ln_groups,
            dtype=_DTYPE_CODES[gx_like.dtype], reverse=int(call.reverse),
            training=int(call.training),
            zoneout_cell=float(zoneout_cell), zoneout_cell_threshold=M.threshold(zoneout_cell),
            zoneout_hidden=float(zoneout_hidden), zoneout_hidden_threshold=M.threshold(zoneout_hidden),
            candidate_dropout=float(candidate_dropout),
            candidate_threshold=M.threshold(candidate_dropout))
        self.plan = None
        if not self.empty:
            try:
                # The plan reads the current device's properties: make it the tensors' device.
                with torch.cuda.device(self.device):
                    self.plan = _ext().plan(cell, backward, self.hidden, self.batch,
                                            self.options["dtype"], call.ln_hh_weight is not None)
            except ValueError as error:
                raise ValueError(f"backend='cuda' cannot run this layer: {error}") from None

    def workspace(self, *shape, dtype=torch.float32) -> torch.Tensor:
        return torch.empty(shape, device=self.device, dtype=dtype)

    def scratch(self) -> torch.Tensor:
        return self.workspace(self.plan["scratch_floats"])

    def launch(self, **tensors) -> None:
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device).cuda_stream
            _ext().launch(self.cell, self.backward, stream=stream, **self.options, **self.plan,
                          **{name: _address(t) for name, t in tensors.items()})


def _common_inputs(call, like):
    """The tensors of ``call`` both cells' kernels read, as they read them."""
    dtype, device = like.dtype, like.device
    lengths = call.lengths
    return dict(w_hh=_kernel_input(call.w_hh, dtype), b_hh=_kernel_input(call.b_hh, dtype),
                ln_hh_weight=_kernel_input(call.ln_hh_weight, dtype),
                h0=_kernel_input(call.h0, dtype),
                recurrent_mask=_kernel_input(call.recurrent_mask, dtype),
                lengths=(None if lengths is None else
                         lengths.to(device=device, dtype=torch.int64).contiguous()),
                seed=call.seed.to(device=device, dtype=torch.int64).contiguous(),
                **_reset_inputs(call, like))


def _reset_state(call, field: str) -> torch.Tensor:
    """Reset state ``field`` (h_reset, c_reset) of a call with resets: zeros where the op call
    left it out, as the functional layer fills it."""
    state = getattr(call, field)
    return torch.zeros_like(getattr(call, field.replace("_reset", "0"))) if state is None else state


def _reset_inputs(call, like):
    """The episode starts (``resets`` [T, B] as bytes, nonzero where a step reads the reset
    state) and the reset states in the element type; nothing (null pointers: the kernels run as
    without the feature) for a call without resets."""
    if call.resets is None:
        return {}
    return dict(resets=call.resets.to(device=like.device, dtype=torch.uint8).contiguous(),
                **{field: _kernel_input(_reset_state(call, field), like.dtype)
                   for field in cell_of(call).reset_states})


def _reset_accumulators(call, like):
    """Backward: the kernels' float32 accumulators d_h_reset (d_c_reset) [B, H], which the
    kernel zeroes and sums into; None (null) for a call without resets."""
    return {f"d_{field}": (None if call.resets is None else torch.empty(
                _reset_state(call, field).shape, device=like.device, dtype=torch.float32))
            for field in cell_of(call).reset_states}


def _reset_grads(call, accumulators):
    """{reset state: its gradient}, each accumulator in its state's dtype; none for a state the
    call does not give (the registry fills in an empty tensor)."""
    return {field: accumulators[f"d_{field}"].to(getattr(call, field).dtype)
            for field in cell_of(call).reset_states
            if getattr(call, field) is not None and call.resets is not None}


def _zero_reset_grads(call):
    """An empty call's gradients of the reset states: zeros (no step reads them)."""
    return {field: torch.zeros_like(getattr(call, field)) for field in cell_of(call).reset_states
            if getattr(call, field) is not None and call.resets is not None}


def _recurrent_inputs(call, saved) -> torch.Tensor:
    """[T, B, H] d ⊙ h_{t-1}: what each step's product read (h_reset at episode starts)."""
    resets = None if call.resets is None else call.resets.to(saved.out.device, torch.bool)
    return recurrent_inputs(saved.out, call.h0, call.lengths, call.recurrent_mask, call.reverse,
                            resets, None if resets is None else _reset_state(call, "h_reset")
                            ).contiguous()


def _parameter_grads(call, partials, d_hh, inputs, w_hh, present):
    """{field: gradient} of W_hh (one GEMM) and of the parameters in ``present`` (the per-tile
    partial sums of d b_hh, d γ_hh, d γ_c, d β_c; empty for an absent one)."""
    rows = call.gates * call.hidden
    d_w_hh = recurrent_weight_grad(d_hh, inputs, w_hh)
    sums = partials.sum(0)
    slices = {"b_hh": sums[:rows], "ln_hh_weight": sums[rows:2 * rows],
              "ln_cell_weight": sums[2 * rows:2 * rows + call.hidden],
              "ln_cell_bias": sums[2 * rows + call.hidden:]}
    grads = {name: (slices[name].to(w_hh.dtype) if tensor is not None else absent_gradient(w_hh))
             for name, tensor in present.items()}
    return {"w_hh": d_w_hh, **grads}


# ---------------------------------------------------------------------------------------- LSTM

def _saved_outputs(call, save: bool, gx) -> dict:
    """The saved tensors by their kernel argument names (``fused.saved_outputs``), or none:
    without ``save`` the kernels get null pointers and write nothing a backward would read."""
    return dict(zip(cell_of(call).saved._fields[1:], saved_outputs(call, gx))) if save else {}


def _lstm_forward(call, save):
    gx, h0, c0 = call.gx, call.h0, call.c0
    launch = _Call(call, False, gx)
    steps, batch, hidden = launch.steps, launch.batch, launch.hidden
    out = gx.new_empty(steps, batch, hidden)
    saved = _saved_outputs(call, save, gx)
    if launch.empty:
        return (out, h0.to(gx.dtype, copy=True), c0.to(gx.dtype, copy=True), *saved.values())
    h_n, c_n = gx.new_empty(batch, hidden), gx.new_empty(batch, hidden)
    launch.launch(gx=gx.contiguous(), ln_cell_weight=_kernel_input(call.ln_cell_weight, gx.dtype),
                  ln_cell_bias=_kernel_input(call.ln_cell_bias, gx.dtype),
                  c0=_kernel_input(c0, gx.dtype), **_common_inputs(call, gx),
                  out=out, h_n=h_n, c_n=c_n, **saved,
                  state=gx.new_empty(2, batch, hidden), scratch=launch.scratch())
    return (out, h_n, c_n, *saved.values())


def _lstm_backward(call, saved, grads):
    grad_out, grad_h_n, grad_c_n = grads
    w_hh, h0, c0 = call.w_hh, call.h0, call.c0
    launch = _Call(call, True, saved.preact)
    preact = saved.preact
    dtype = preact.dtype
    present = {"b_hh": call.b_hh, "ln_hh_weight": call.ln_hh_weight,
               "ln_cell_weight": call.ln_cell_weight, "ln_cell_bias": call.ln_cell_bias}
    # By field name: the registry gives w_hr (FEATURES has no proj_size) an empty gradient.
    if launch.empty:
        return {"gx": torch.zeros_like(preact), "w_hh": torch.zeros_like(w_hh),
                **_zero_grads(present, w_hh), "h0": grad_h_n.to(dtype).clone(),
                "c0": grad_c_n.to(dtype).clone(), **_zero_reset_grads(call)}
    inputs = _recurrent_inputs(call, saved)
    layer_norm = call.ln_hh_weight is not None
    d_gx = torch.empty_like(preact)
    d_hh = torch.empty_like(preact) if layer_norm else d_gx  # without layer norm d_hh is d_gx
    d_h0, d_c0 = preact.new_empty(h0.shape), preact.new_empty(c0.shape)  # as the element type
    reset_grads = _reset_accumulators(call, preact)
    partials = launch.workspace(launch.plan["tiles"], 2 * 4 * launch.hidden + 2 * launch.hidden)
    common = _common_inputs(call, preact)
    launch.launch(grad_out=grad_out.to(dtype).contiguous(),
                  grad_h_n=grad_h_n.to(dtype).contiguous(),
                  grad_c_n=grad_c_n.to(dtype).contiguous(), out=saved.out.contiguous(),
                  preact=preact.contiguous(), cell=saved.cell.contiguous(),
                  stats=saved.stats.contiguous(),
                  hh=inputs.matmul(common["w_hh"].t()).contiguous() if layer_norm else None,
                  ln_cell_weight=_kernel_input(call.ln_cell_weight, dtype),
                  ln_cell_bias=_kernel_input(call.ln_cell_bias, dtype),
                  c0=_kernel_input(c0, dtype), **common, d_gx=d_gx, d_hh=d_hh, d_h0=d_h0,
                  d_c0=d_c0, **reset_grads, param_partials=partials, scratch=launch.scratch())
    return {"gx": d_gx, **_parameter_grads(launch, partials, d_hh, inputs, w_hh, present),
            "h0": d_h0.to(h0.dtype), "c0": d_c0.to(c0.dtype), **_reset_grads(call, reset_grads)}


# ----------------------------------------------------------------------------------------- GRU

def _gru_forward(call, save):
    gx, h0 = call.gx, call.h0
    launch = _Call(call, False, gx)
    steps, batch, hidden = launch.steps, launch.batch, launch.hidden
    out = gx.new_empty(steps, batch, hidden)
    saved = _saved_outputs(call, save, gx)
    if launch.empty:
        return (out, h0.to(gx.dtype, copy=True), *saved.values())
    h_n = gx.new_empty(batch, hidden)
    launch.launch(gx=gx.contiguous(), **_common_inputs(call, gx), out=out, h_n=h_n, **saved,
                  state=gx.new_empty(2, batch, hidden), scratch=launch.scratch())
    return (out, h_n, *saved.values())


def _gru_backward(call, saved, grads):
    grad_out, grad_h_n = grads
    w_hh, h0 = call.w_hh, call.h0
    launch = _Call(call, True, saved.preact)
    preact = saved.preact
    dtype = preact.dtype
    present = {"b_hh": call.b_hh, "ln_hh_weight": call.ln_hh_weight}
    if launch.empty:
        return {"gx": torch.zeros_like(preact), "w_hh": torch.zeros_like(w_hh),
                **_zero_grads(present, w_hh), "h0": grad_h_n.to(dtype).clone(),
                **_zero_reset_grads(call)}
    inputs = _recurrent_inputs(call, saved)
    layer_norm = call.ln_hh_weight is not None
    d_gx, d_hh = torch.empty_like(preact), torch.empty_like(preact)
    d_h0 = preact.new_empty(h0.shape)  # written as the element type
    reset_grads = _reset_accumulators(call, preact)
    partials = launch.workspace(launch.plan["tiles"], 2 * 3 * launch.hidden + 2 * launch.hidden)
    common = _common_inputs(call, preact)
    launch.launch(grad_out=grad_out.to(dtype).contiguous(),
                  grad_h_n=grad_h_n.to(dtype).contiguous(), out=saved.out.contiguous(),
                  preact=preact.contiguous(), hidden_n=saved.hidden_n.contiguous(),
                  stats=saved.stats.contiguous(),
                  hh=inputs.matmul(common["w_hh"].t()).contiguous() if layer_norm else None,
                  **common, d_gx=d_gx, d_hh=d_hh, d_h0=d_h0, **reset_grads,
                  param_partials=partials, scratch=launch.scratch())
    return {"gx": d_gx, **_parameter_grads(launch, partials, d_hh, inputs, w_hh, present),
            "h0": d_h0.to(h0.dtype), **_reset_grads(call, reset_grads)}


def _zero_grads(present, w_hh):
    return {name: w_hh.new_zeros(t.shape) if t is not None else absent_gradient(w_hh)
            for name, t in present.items()}


_RUNNERS = {"lstm": (_lstm_forward, _lstm_backward), "gru": (_gru_forward, _gru_backward)}
CELL_NAMES = tuple(_RUNNERS)  # fastrnn.backends: the cells csrc/ has kernels for


def forward(call, save=True):
    """(out, h_n[, c_n]) and, with ``save``, the saved tensors (``fastrnn.cells``); without it
    the kernels write none (inference holds O(B·H) beyond out and the states)."""
    return _RUNNERS[cell_of(call).name][0](call, save)


def backward(call, saved, grads):
    """{field: gradient} of the differentiable fields these kernels run (``fastrnn.backends.
    backward`` places them in the op's order)."""
    return _RUNNERS[cell_of(call).name][1](call, saved, grads)
