"""Host-side work both fused backends (Triton kernels, CUDA) do around their recurrence kernels."""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import previous_states


def recurrent_inputs(out: torch.Tensor, h0: torch.Tensor, lengths: Optional[torch.Tensor],
                     recurrent_mask: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """[T, B, H]: d ⊙ h_{t-1}, what each step's recurrent product read."""
    previous = previous_states(out, h0, lengths, reverse)
    return previous if recurrent_mask is None else previous * recurrent_mask.to(out.dtype)


def recurrent_weight_grad(d_hh: torch.Tensor, h_in: torch.Tensor,
                          w_hh: torch.Tensor) -> torch.Tensor:
    """d_w_hh = Σ_(t, b) d_hh ⊗ h_in: one GEMM over every step, in d_hh's dtype."""
    return (d_hh.flatten(0, 1).t() @ h_in.flatten(0, 1).to(d_hh.dtype)).to(w_hh.dtype)


def absent_gradient(like: torch.Tensor) -> torch.Tensor:
    """The gradient of an absent optional parameter: a fresh empty tensor (outputs never alias)."""
    return like.new_empty(0)
