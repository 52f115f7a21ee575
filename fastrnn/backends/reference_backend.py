"""The reference backend: the per-step reference cells, on any device and dtype.

Its backward re-runs the cells from ``gx`` under ``torch.func.vjp`` (the op runs below
autograd, where ``torch.autograd.grad`` records nothing), so the gradients are exactly the
derivatives of the readable equations; masks are regenerated from the seed.
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


def lstm_backward(grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, gx, w_hh, b_hh,
                  ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask,
                  seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout, training,
                  reverse):
    reg = _regularizers(zoneout_cell, zoneout_hidden, candidate_dropout, training)
    masks = R.MaskSource(seed)
    params = (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0)

    def run(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0):
        out, h_n, c_n, *_ = R.lstm_sequence(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight,
                                            ln_cell_bias, h0, c0, lengths, recurrent_mask, reg,
                                            masks, ln_groups, reverse)
        return out, h_n, c_n

    return _vjp(run, params, (grad_out, grad_h_n, grad_c_n), like=w_hh)


def gru_forward(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, ln_groups,
                zoneout, candidate_dropout, training, reverse):
    reg = _regularizers(0.0, zoneout, candidate_dropout, training)
    return R.gru_sequence(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, reg,
                          R.MaskSource(seed), ln_groups, reverse)


def gru_backward(grad_out, grad_h_n, out, preact, hidden_n, stats, gx, w_hh, b_hh, ln_hh_weight,
                 h0, lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout,
                 training, reverse):
    reg = _regularizers(0.0, zoneout, candidate_dropout, training)
    masks = R.MaskSource(seed)

    def run(gx, w_hh, b_hh, ln_hh_weight, h0):
        out, h_n, *_ = R.gru_sequence(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask,
                                      reg, masks, ln_groups, reverse)
        return out, h_n

    return _vjp(run, (gx, w_hh, b_hh, ln_hh_weight, h0), (grad_out, grad_h_n), like=w_hh)


def _vjp(run, params, cotangents, like):
    """Gradients of ``run`` w.r.t. each present param; an empty tensor for each absent one."""
    present = [i for i, p in enumerate(params) if p is not None]

    def run_present(*values):
        args = list(params)
        for i, value in zip(present, values):
            args[i] = value
        return run(*args)

    _, pullback = torch.func.vjp(run_present, *(params[i] for i in present))
    grads = pullback(tuple(c.to(params[0].dtype) for c in cotangents))
    result = [like.new_empty(0) for _ in params]
    for i, grad in zip(present, grads):
        result[i] = grad
    return tuple(result)
