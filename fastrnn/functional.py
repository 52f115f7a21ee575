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

LN_EPS = 1e-5


def project_input(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], ln_ih_weight: Optional[Tensor],
                  ln_groups: int) -> Tensor:
    """gx = W_ih x + b_ih (or γ_ih ⊙ N(W_ih x) + b_ih) for all steps: one GEMM, one norm pass."""
    gx = torch.matmul(x, w_ih.t())
    if ln_ih_weight is not None:
        group = gx.shape[-1] // ln_groups
        grouped = gx.unflatten(-1, (ln_groups, group))
        gx = F.layer_norm(grouped, (group,), eps=LN_EPS).flatten(-2) * ln_ih_weight
    return gx if b_ih is None else gx + b_ih


class _CallRandomness:
    """The seed of one layer/direction call and the small masks derived from it in Python."""

    def __init__(self, x: Tensor, w_hh: Tensor, batch: int, training: bool, recurrent_dropout: float,
                 dropconnect: float, stochastic: bool):
        hidden = w_hh.shape[1]
        self.active = training and stochastic
        self.seed = (M.draw_seed(x.device) if self.active
                     else torch.zeros((), dtype=torch.int64, device=x.device))
        self.recurrent_mask = None
        self.dropconnect_mask = None
        if training and recurrent_dropout > 0:
            self.recurrent_mask = M.keep_scale(self.seed, M.RECURRENT_DROPOUT, recurrent_dropout,
                                               (batch, hidden), x.dtype)
        if training and dropconnect > 0:
            self.dropconnect_mask = M.keep_scale(self.seed, M.DROPCONNECT, dropconnect,
                                                 tuple(w_hh.shape), w_hh.dtype)


def _record(cell: str, layer: int, direction: int, rnd: _CallRandomness, steps: int, batch: int,
            hidden: int, probabilities: dict) -> None:
    expanded = {name: (M.expand_step_masks(rnd.seed, kind, p, steps, batch, hidden) if p > 0 else None)
                for name, (kind, p) in probabilities.items()}
    M.record(M.CallMasks(layer=layer, direction=direction, cell=cell, recurrent=rnd.recurrent_mask,
                         dropconnect=rnd.dropconnect_mask, **expanded))


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
    steps, batch = x.shape[0], x.shape[1]
    hidden = w_hh.shape[1]
    stochastic = (zoneout_cell > 0 or zoneout_hidden > 0 or candidate_dropout > 0
                  or recurrent_dropout > 0 or dropconnect > 0)
    rnd = _CallRandomness(x, w_hh, batch, training, recurrent_dropout, dropconnect, stochastic)
    if rnd.dropconnect_mask is not None:
        w_hh = w_hh * rnd.dropconnect_mask
    gx = project_input(x, w_ih, b_ih, ln_ih_weight, ln_groups)
    if rnd.active and M.capturing():
        _record("lstm", layer, direction, rnd, steps, batch, hidden, {
            "zoneout_cell": (M.ZONEOUT_CELL, zoneout_cell),
            "zoneout_hidden": (M.ZONEOUT_HIDDEN, zoneout_hidden),
            "candidate": (M.CANDIDATE_DROPOUT, candidate_dropout)})
    out, h_n, c_n, *_ = torch.ops.fastrnn.lstm_forward(
        gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
        rnd.recurrent_mask, rnd.seed, ln_groups, float(zoneout_cell), float(zoneout_hidden),
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
    steps, batch = x.shape[0], x.shape[1]
    hidden = w_hh.shape[1]
    stochastic = zoneout > 0 or candidate_dropout > 0 or recurrent_dropout > 0 or dropconnect > 0
    rnd = _CallRandomness(x, w_hh, batch, training, recurrent_dropout, dropconnect, stochastic)
    if rnd.dropconnect_mask is not None:
        w_hh = w_hh * rnd.dropconnect_mask
    gx = project_input(x, w_ih, b_ih, ln_ih_weight, ln_groups)
    if rnd.active and M.capturing():
        _record("gru", layer, direction, rnd, steps, batch, hidden, {
            "zoneout_hidden": (M.ZONEOUT_HIDDEN, zoneout),
            "candidate": (M.CANDIDATE_DROPOUT, candidate_dropout)})
    out, h_n, *_ = torch.ops.fastrnn.gru_forward(
        gx, w_hh, b_hh, ln_hh_weight, h0, lengths, rnd.recurrent_mask, rnd.seed, ln_groups,
        float(zoneout), float(candidate_dropout), bool(training), bool(reverse), backend)
    return out, h_n
