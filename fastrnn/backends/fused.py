"""Host-side work both fused backends (Triton kernels, CUDA) do around their recurrence kernels:
the recurrent inputs of every step, the d W_hh product, absent gradients; and the result
tensors (``new_output``, ``saved_outputs``), which the cpu backend allocates the same way."""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from ..cells import cell_of
from ..reference import previous_states


def recurrent_inputs(out: torch.Tensor, h0: torch.Tensor, lengths: Optional[torch.Tensor],
                     recurrent_mask: Optional[torch.Tensor], reverse: bool,
                     resets: Optional[torch.Tensor] = None,
                     h_reset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[T, B, H]: d ⊙ h_{t-1}, what each step's recurrent product read (h_reset at an episode
    start, ``resets``)."""
    previous = previous_states(out, h0, lengths, reverse, resets, h_reset)
    return previous if recurrent_mask is None else previous * recurrent_mask.to(out.dtype)


def recurrent_weight_grad(d_hh: torch.Tensor, h_in: torch.Tensor,
                          w_hh: torch.Tensor) -> torch.Tensor:
    """d_w_hh = Σ_(t, b) d_hh ⊗ h_in: one GEMM over every step, in d_hh's dtype (accumulated in
    float32 by the GEMM for half-precision inputs)."""
    return (d_hh.flatten(0, 1).t() @ h_in.flatten(0, 1).to(d_hh.dtype)).to(w_hh.dtype)


def absent_gradient(like: torch.Tensor) -> torch.Tensor:
    """The gradient of an absent optional parameter: a fresh empty tensor (outputs never alias)."""
    return like.new_empty(0)


_poison = False


@contextlib.contextmanager
def poisoned_outputs():
    """Tests: results are allocated NaN-filled instead of uninitialised, so that a position a
    kernel forgets to write shows up."""
    global _poison
    _poison = True
    try:
        yield
    finally:
        _poison = False


def new_output(*shape, dtype, device) -> torch.Tensor:
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def saved_outputs(call, gx: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The saved tensors after out (``fastrnn.cells``: preact, the cell's middle one, stats) that
    a forward keeping them for a backward allocates for its kernels to write: [T, B, G·H] in
    gx's dtype, [T, B, H] in ``Cell.saved_dtype``, [T, B, S] float32."""
    cell = cell_of(call)
    steps, batch, rows = gx.shape
    middle = cell.saved._fields[2]
    return (new_output(steps, batch, rows, dtype=gx.dtype, device=gx.device),
            new_output(steps, batch, rows // cell.num_gates,
                       dtype=cell.saved_dtype(middle, gx.dtype), device=gx.device),
            new_output(steps, batch, cell.stats_width(call.ln_hh_weight is not None,
                                                      call.ln_groups),
                       dtype=torch.float32, device=gx.device))


class Extension:
    """A compiled extension loaded on first use (``load``: the installed module or a JIT build).
    A failed build or load is remembered in ``error``, so that ``unavailable()`` reports it and
    the build is not retried on every call."""

    def __init__(self, load, what: str):
        self._load, self._what = load, what
        self.module = None
        self.error: Optional[str] = None

    def get(self):
        if self.module is None:
            try:
                self.module = self._load()
            except Exception as error:
                self.error = f"the {self._what} could not be built or loaded: {error}"
                raise RuntimeError(f"fastrnn: {self.error}") from error
        return self.module


def check_ln_groups(call) -> None:
    """The compiled kernels normalize the gate vector as one group or per gate
    (``Cell.ln_groups``); any other count is refused before a kernel runs."""
    cell = cell_of(call)
    if call.ln_groups not in cell.ln_groups:
        raise ValueError(f"ln_groups must be 1 or {cell.num_gates} for the {cell.name.upper()}, "
                         f"got {call.ln_groups}")
