"""The op boundary: ``torch.ops.fastrnn.*``, one recurrence per layer and direction.

Every backend (reference, Triton, CUDA) implements these four ops with the same schema, so
``torch.compile`` sees one opaque op per recurrence (fake implementations below give it the
shapes) and autograd sees one registered formula.  The ``backend`` argument names the
implementation; it is resolved by the caller (``fastrnn.backends.resolve``) before the op runs.

What the recurrence sees (docs/ops.md has the full contract):

* ``gx`` [T, B, G·H]: the input projection of all steps, computed outside as one GEMM
  (``W_ih x + b_ih``, or ``γ_ih ⊙ N(W_ih x) + b_ih`` with layer norm);
* ``w_hh`` [G·H, H] with dropconnect already applied, ``b_hh``, the layer-norm parameters;
* ``h0`` (and ``c0``) [B, H], ``lengths`` [B] int64 or None;
* ``recurrent_mask`` [B, H]: the inverted-dropout scale on h_{t-1}, or None;
* ``seed``: int64 scalar tensor on the device, the key of the in-kernel zoneout and candidate
  dropout masks (``fastrnn.masks``), regenerated in backward and never stored.

Saved for backward (per (t, b), G·H + H values for the LSTM, G·H + H for the GRU, plus
float32 layer-norm statistics): ``preact`` (the gate pre-activations), ``cell`` (the carried
float32 cell state, LSTM) or ``hidden_n`` (``W_hn h + b_hn`` after layer norm, GRU), ``stats``
(per-group mean and rstd).  With layer norm the backward recomputes ``W_hh h_{t-1}`` for all t in
one GEMM from ``out`` rather than saving it; ``gx`` is not kept.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import backends
from .reference import accumulate_dtype

Tensors6 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
Tensors8 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
Tensors5 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def lstm_stats_width(layer_norm: bool, ln_groups: int) -> int:
    """Columns of ``stats``: mean and rstd per group of W_hh h, then of the cell."""
    return 2 * ln_groups + 2 if layer_norm else 0


def gru_stats_width(layer_norm: bool, ln_groups: int) -> int:
    return 2 * ln_groups if layer_norm else 0


# --------------------------------------------------------------------------------------- LSTM

@torch.library.custom_op("fastrnn::lstm_forward", mutates_args=())
def lstm_forward(gx: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], ln_hh_weight: Optional[Tensor],
                 ln_cell_weight: Optional[Tensor], ln_cell_bias: Optional[Tensor], h0: Tensor,
                 c0: Tensor, lengths: Optional[Tensor], recurrent_mask: Optional[Tensor],
                 seed: Tensor, ln_groups: int, zoneout_cell: float, zoneout_hidden: float,
                 candidate_dropout: float, training: bool, reverse: bool,
                 backend: str) -> Tensors6:
    """-> (out [T,B,H], h_n [B,H], c_n [B,H], preact [T,B,4H], cell [T,B,H], stats [T,B,S] f32);
    cell is float32 (float64 for float64 inputs)."""
    _check_layer_norm_parameters(ln_hh_weight, ln_cell_weight, ln_cell_bias)
    return backends.get(backend).lstm_forward(
        gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
        recurrent_mask, seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout,
        training, reverse)


def _check_layer_norm_parameters(ln_hh_weight, ln_cell_weight, ln_cell_bias) -> None:
    """The LSTM's layer norm is on or off as a whole: γ_hh, γ_c and β_c come together."""
    given = [t is not None for t in (ln_hh_weight, ln_cell_weight, ln_cell_bias)]
    if any(given) and not all(given):
        raise ValueError("lstm_forward: ln_hh_weight, ln_cell_weight and ln_cell_bias must be "
                         f"all given or all None, got {given}")


@lstm_forward.register_fake
def _(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
      recurrent_mask, seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout, training,
      reverse, backend):
    _check_layer_norm_parameters(ln_hh_weight, ln_cell_weight, ln_cell_bias)
    steps, batch, hidden = gx.shape[0], gx.shape[1], w_hh.shape[1]
    width = lstm_stats_width(ln_hh_weight is not None, ln_groups)
    return (gx.new_empty(steps, batch, hidden), gx.new_empty(batch, hidden),
            gx.new_empty(batch, hidden), gx.new_empty(gx.shape),
            gx.new_empty(steps, batch, hidden, dtype=accumulate_dtype(gx.dtype)),
            gx.new_empty(steps, batch, width, dtype=torch.float32))


@torch.library.custom_op("fastrnn::lstm_backward", mutates_args=())
def lstm_backward(grad_out: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, out: Tensor,
                  preact: Tensor, cell: Tensor, stats: Tensor, w_hh: Tensor,
                  b_hh: Optional[Tensor], ln_hh_weight: Optional[Tensor],
                  ln_cell_weight: Optional[Tensor], ln_cell_bias: Optional[Tensor], h0: Tensor,
                  c0: Tensor, lengths: Optional[Tensor], recurrent_mask: Optional[Tensor],
                  seed: Tensor, ln_groups: int, zoneout_cell: float, zoneout_hidden: float,
                  candidate_dropout: float, training: bool, reverse: bool,
                  backend: str) -> Tensors8:
    """-> gradients of (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0);
    the gradient of an absent optional parameter is an empty tensor."""
    return backends.get(backend).lstm_backward(
        grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh, ln_hh_weight,
        ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask, seed, ln_groups,
        zoneout_cell, zoneout_hidden, candidate_dropout, training, reverse)


@lstm_backward.register_fake
def _(grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh, ln_hh_weight,
      ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask, seed, ln_groups, zoneout_cell,
      zoneout_hidden, candidate_dropout, training, reverse, backend):
    return (preact.new_empty(preact.shape), *_empty_like_each(
        w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, like=w_hh))


def _empty_like_each(*tensors, like):
    return tuple(like.new_empty(0) if t is None else t.new_empty(t.shape) for t in tensors)


def _lstm_setup_context(ctx, inputs, output):
    (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask,
     seed, *options) = inputs
    out, _, _, preact, cell, stats = output
    ctx.options = options
    ctx.mark_non_differentiable(preact, cell, stats)
    ctx.save_for_backward(out, preact, cell, stats, w_hh, b_hh, ln_hh_weight,
                          ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask, seed)


def _lstm_backward(ctx, grad_out, grad_h_n, grad_c_n, *_):
    (out, preact, cell, stats, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0,
     c0, lengths, recurrent_mask, seed) = ctx.saved_tensors
    grads = torch.ops.fastrnn.lstm_backward(
        _or_zeros(grad_out, out), _or_zeros(grad_h_n, h0), _or_zeros(grad_c_n, c0), out, preact,
        cell, stats, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
        recurrent_mask, seed, *ctx.options)
    d_gx, d_w_hh, d_b_hh, d_ln_hh, d_ln_cell_w, d_ln_cell_b, d_h0, d_c0 = grads
    return (d_gx, d_w_hh, _present(d_b_hh, b_hh), _present(d_ln_hh, ln_hh_weight),
            _present(d_ln_cell_w, ln_cell_weight), _present(d_ln_cell_b, ln_cell_bias), d_h0, d_c0,
            None, None, None) + (None,) * len(ctx.options)


torch.library.register_autograd("fastrnn::lstm_forward", _lstm_backward,
                                setup_context=_lstm_setup_context)


# ---------------------------------------------------------------------------------------- GRU

@torch.library.custom_op("fastrnn::gru_forward", mutates_args=())
def gru_forward(gx: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], ln_hh_weight: Optional[Tensor],
                h0: Tensor, lengths: Optional[Tensor], recurrent_mask: Optional[Tensor],
                seed: Tensor, ln_groups: int, zoneout: float, candidate_dropout: float,
                training: bool, reverse: bool, backend: str) -> Tensors5:
    """-> (out [T,B,H], h_n [B,H], preact [T,B,3H], hidden_n [T,B,H], stats [T,B,S] f32)."""
    return backends.get(backend).gru_forward(
        gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, ln_groups, zoneout,
        candidate_dropout, training, reverse)


@gru_forward.register_fake
def _(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, ln_groups, zoneout,
      candidate_dropout, training, reverse, backend):
    steps, batch, hidden = gx.shape[0], gx.shape[1], w_hh.shape[1]
    width = gru_stats_width(ln_hh_weight is not None, ln_groups)
    return (gx.new_empty(steps, batch, hidden), gx.new_empty(batch, hidden),
            gx.new_empty(gx.shape), gx.new_empty(steps, batch, hidden),
            gx.new_empty(steps, batch, width, dtype=torch.float32))


@torch.library.custom_op("fastrnn::gru_backward", mutates_args=())
def gru_backward(grad_out: Tensor, grad_h_n: Tensor, out: Tensor, preact: Tensor,
                 hidden_n: Tensor, stats: Tensor, w_hh: Tensor,
                 b_hh: Optional[Tensor], ln_hh_weight: Optional[Tensor], h0: Tensor,
                 lengths: Optional[Tensor], recurrent_mask: Optional[Tensor], seed: Tensor,
                 ln_groups: int, zoneout: float, candidate_dropout: float, training: bool,
                 reverse: bool, backend: str) -> Tensors5:
    """-> gradients of (gx, w_hh, b_hh, ln_hh_weight, h0); empty for an absent parameter."""
    return backends.get(backend).gru_backward(
        grad_out, grad_h_n, out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight, h0,
        lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout, training, reverse)


@gru_backward.register_fake
def _(grad_out, grad_h_n, out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight, h0, lengths,
      recurrent_mask, seed, ln_groups, zoneout, candidate_dropout, training, reverse, backend):
    return (preact.new_empty(preact.shape), *_empty_like_each(w_hh, b_hh, ln_hh_weight, h0,
                                                              like=w_hh))


def _gru_setup_context(ctx, inputs, output):
    gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, *options = inputs
    out, _, preact, hidden_n, stats = output
    ctx.options = options
    ctx.mark_non_differentiable(preact, hidden_n, stats)
    ctx.save_for_backward(out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight, h0,
                          lengths, recurrent_mask, seed)


def _gru_backward(ctx, grad_out, grad_h_n, *_):
    (out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask,
     seed) = ctx.saved_tensors
    d_gx, d_w_hh, d_b_hh, d_ln_hh, d_h0 = torch.ops.fastrnn.gru_backward(
        _or_zeros(grad_out, out), _or_zeros(grad_h_n, h0), out, preact, hidden_n, stats, w_hh,
        b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, *ctx.options)
    return (d_gx, d_w_hh, _present(d_b_hh, b_hh), _present(d_ln_hh, ln_hh_weight), d_h0,
            None, None, None) + (None,) * len(ctx.options)


torch.library.register_autograd("fastrnn::gru_forward", _gru_backward,
                                setup_context=_gru_setup_context)


def _or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _present(grad: Tensor, parameter: Optional[Tensor]) -> Optional[Tensor]:
    return None if parameter is None else grad
