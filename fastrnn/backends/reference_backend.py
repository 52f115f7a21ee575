"""The reference backend: the per-step reference cells, on any device, in every float dtype.

Its backward is the per-step chain rule of ``fastrnn.reference`` from the saved tensors, with
masks regenerated from the seed — what the fused backward kernels compute, written plainly.
"""
from __future__ import annotations

import torch

from .. import reference as R


def unavailable():
    return None


def unsupported(device, dtype):
    if dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        return "the reference runs float64, float32, bfloat16 and float16"
    return None


def _regularizers(zoneout_cell, zoneout_hidden, candidate_dropout, training):
    return R.Regularizers(zoneout_cell, zoneout_hidden, candidate_dropout, training)


def lstm_forward(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
                 recurrent_mask, seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout,
                 training, reverse):
    reg = _regularizers(zoneout_cell, zoneout_hidden, candidate_dropout, training)
    return R.lstm_sequence(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0,
                           lengths, recurrent_mask, reg, R.MaskSource(seed), ln_groups, reverse)


def lstm_backward(grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh,
                  ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask,
                  seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout, training,
                  reverse):
    reg = _regularizers(zoneout_cell, zoneout_hidden, candidate_dropout, training)
    return R.lstm_sequence_backward(grad_out, grad_h_n, grad_c_n, out, preact, cell, w_hh, b_hh,
                                    ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
                                    recurrent_mask, reg, R.MaskSource(seed), ln_groups, reverse)


def gru_forward(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, ln_groups,
                zoneout, candidate_dropout, training, reverse):
    reg = _regularizers(0.0, zoneout, candidate_dropout, training)
    return R.gru_sequence(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, reg,
                          R.MaskSource(seed), ln_groups, reverse)


def gru_backward(grad_out, grad_h_n, out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight,
                 h0, lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout,
                 training, reverse):
    reg = _regularizers(0.0, zoneout, candidate_dropout, training)
    return R.gru_sequence_backward(grad_out, grad_h_n, out, preact, hidden_n, w_hh, b_hh,
                                   ln_hh_weight, h0, lengths, recurrent_mask, reg,
                                   R.MaskSource(seed), ln_groups, reverse)
