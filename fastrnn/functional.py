"""One layer, one direction: the input projection, the call's masks, then the recurrence op.

The modules (``fastrnn.modules``) stack these; they are also the functional API for users who
keep their own parameters.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import masks as M
from . import reference as R


def project_input(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], ln_ih_weight: Optional[Tensor],
                  ln_groups: int) -> Tensor:
    """gx = W_ih x + b_ih (or γ_ih ⊙ N(W_ih x) + b_ih) for all steps: one GEMM, one norm pass.

    The layer norm over ``ln_groups`` slices with a per-element gain is exactly group norm over
    the G·H features, whose fused kernel saves only its input and statistics for backward.
    """
    gx = torch.matmul(x, w_ih.t())
    if ln_ih_weight is None:
        return gx if b_ih is None else gx + b_ih
    flat = F.group_norm(gx.reshape(-1, gx.shape[-1]), ln_groups, ln_ih_weight, b_ih, eps=R.EPS)
    return flat.reshape(gx.shape)


class _PreparedCall:
    """Everything a layer/direction call feeds the recurrence besides the states: its seed, the
    small masks drawn in Python from it, W_hh after dropconnect, and the projected input."""

    def __init__(self, cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 ln_ih_weight: Optional[Tensor], ln_groups: int, training: bool,
                 recurrent_dropout: float, dropconnect: float, step_masks: dict, layer: int,
                 direction: int):
        steps, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[1]
        stochastic = (recurrent_dropout > 0 or dropconnect > 0
                      or any(p > 0 for _, p in step_masks.values()))
        active = training and stochastic
        self.seed = (M.draw_seed(x.device) if active
                     else torch.zeros((), dtype=torch.int64, device=x.device))
        self.recurrent_mask = None
        dropconnect_mask = None
        if training and recurrent_dropout > 0:
            self.recurrent_mask = M.keep_scale(self.seed, M.RECURRENT_DROPOUT, recurrent_dropout,
                                               (batch, hidden), x.dtype)
        if training and dropconnect > 0:
            dropconnect_mask = M.keep_scale(self.seed, M.DROPCONNECT, dropconnect,
                                            tuple(w_hh.shape), w_hh.dtype)
        self.w_hh = w_hh if dropconnect_mask is None else w_hh * dropconnect_mask
        self.gx = project_input(x, w_ih, b_ih, ln_ih_weight, ln_groups)
        if active and M.capturing():
            expanded = {name: (M.expand_step_masks(self.seed, kind, p, steps, batch, hidden)
                               if p > 0 else None)
                        for name, (kind, p) in step_masks.items()}
            M.record(M.CallMasks(layer=layer, direction=direction, cell=cell,
                                 recurrent=self.recurrent_mask, dropconnect=dropconnect_mask,
                                 **expanded))


def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], h0: Tensor, c0: Tensor, lengths: Optional[Tensor] = None, *,
               ln_ih_weight: Optional[Tensor] = None, ln_hh_weight: Optional[Tensor] = None,
               ln_cell_weight: Optional[Tensor] = None, ln_cell_bias: Optional[Tensor] = None,
               ln_groups: int = 1, zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0,
               recurrent_dropout: float = 0.0, candidate_dropout: float = 0.0,
               dropconnect: float = 0.0, training: bool = False, reverse: bool = False,
               backend: str = "reference", layer: int = 0,
               direction: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """x [T, B, I] -> (out [T, B, H], h_n [B, H], c_n [B, H]) for one LSTM layer and direction.

    ``backend`` must be a concrete name (see ``fastrnn.backends.resolve``).
    """
    call = _PreparedCall("lstm", x, w_ih, w_hh, b_ih, ln_ih_weight, ln_groups, training,
                         recurrent_dropout, dropconnect, {
                             "zoneout_cell": (M.ZONEOUT_CELL, zoneout_cell),
                             "zoneout_hidden": (M.ZONEOUT_HIDDEN, zoneout_hidden),
                             "candidate": (M.CANDIDATE_DROPOUT, candidate_dropout)},
                         layer, direction)
    out, h_n, c_n, *_ = torch.ops.fastrnn.lstm_forward(
        call.gx, call.w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
        call.recurrent_mask, call.seed, ln_groups, float(zoneout_cell), float(zoneout_hidden),
        float(candidate_dropout), bool(training), bool(reverse), backend)
    return out, h_n, c_n


def gru_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor] = None, *,
              ln_ih_weight: Optional[Tensor] = None, ln_hh_weight: Optional[Tensor] = None,
              ln_groups: int = 1, zoneout: float = 0.0, recurrent_dropout: float = 0.0,
              candidate_dropout: float = 0.0, dropconnect: float = 0.0, training: bool = False,
              reverse: bool = False, backend: str = "reference", layer: int = 0,
              direction: int = 0) -> Tuple[Tensor, Tensor]:
    """x [T, B, I] -> (out [T, B, H], h_n [B, H]) for one GRU layer and direction."""
    call = _PreparedCall("gru", x, w_ih, w_hh, b_ih, ln_ih_weight, ln_groups, training,
                         recurrent_dropout, dropconnect, {
                             "zoneout_hidden": (M.ZONEOUT_HIDDEN, zoneout),
                             "candidate": (M.CANDIDATE_DROPOUT, candidate_dropout)},
                         layer, direction)
    out, h_n, *_ = torch.ops.fastrnn.gru_forward(
        call.gx, call.w_hh, b_hh, ln_hh_weight, h0, lengths, call.recurrent_mask, call.seed,
        ln_groups, float(zoneout), float(candidate_dropout), bool(training), bool(reverse), backend)
    return out, h_n
