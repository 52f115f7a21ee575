"""Reference cells: the equations of every cell, one time step at a time, in plain PyTorch.

These functions are the statement of the math that every fused kernel is judged against, and
the "reference" backend of the fastrnn ops (CPU, float64, and the fallback on CUDA).
Statistics, gate math and the cell state run in float32 (float64 for float64 inputs); the
recurrent product and the hidden state stay in the input dtype, as in the kernels.

A recurrence call (``fastrnn.cells.LSTMCall`` / ``GRUCall``: the input projection ``gx`` of
every step, see ``project_input``, the recurrent weights, states and options) runs through
``lstm_sequence`` / ``gru_sequence``; masks come from a ``MaskSource``: regenerated from the
call's seed (the backend) or replayed from a captured ``CallMasks`` (tests).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import masks as M
from .cells import (GRU, LAYER_NORM_EPS, LSTM, GRUCall, GRUSaved, LSTMCall, LSTMSaved,
                    accumulate_dtype, cell_of)


# Float32 statistics overflow once |v| nears 2^64 (the squares pass 2^128) though N(v) is of
# order one.  A group whose largest |v| reaches 2^NORM_SCALE_EXPONENT is first multiplied by the
# power of two that brings it to about 2^E: exact, and N_eps(s·v) = N_{eps/s²}(v), which at that
# magnitude differs from N_eps(v) far below float32 resolution.  Smaller groups are left alone
# (s = 1), so ordinary values are normalized bit for bit as without it.
NORM_SCALE_EXPONENT = 40


def norm_scale(grouped: Tensor) -> Tensor:
    """[..., groups, 1] power-of-two factor of each group of ``grouped`` (1 below 2^40), in its
    dtype, outside autograd (N is invariant to it)."""
    largest = grouped.detach().abs().amax(-1, keepdim=True).float()
    # floor(log2) rather than frexp, which ONNX lacks; either way the shift is a whole number
    # (exp2 of it a power of two), give or take one where log2 rounds.
    shift = (torch.floor(torch.log2(largest)) + 1 - NORM_SCALE_EXPONENT).clamp_min(0)
    return torch.exp2(-shift).to(grouped.dtype)


def normalize(v: Tensor, groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """N(v) over ``groups`` equal slices of the last dim: (normalized, mean, rstd), biased variance
    (statistics of huge groups taken after ``norm_scale``, returned for v itself)."""
    grouped = v.reshape(*v.shape[:-1], groups, v.shape[-1] // groups)
    scale = norm_scale(grouped)
    scaled = grouped * scale
    mean = scaled.mean(-1, keepdim=True)
    var = scaled.var(-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + LAYER_NORM_EPS)
    return (((scaled - mean) * rstd).reshape(v.shape), (mean / scale).squeeze(-1),
            (rstd * scale).squeeze(-1))


def project_input(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor],
                  ln_ih_weight: Optional[Tensor], ln_groups: int) -> Tensor:
    """gx_t = W_ih x_t + b_ih, or γ_ih ⊙ N(W_ih x_t) + b_ih with layer norm, for every t at once."""
    gx = x @ w_ih.t()
    if ln_ih_weight is not None:
        normalized, _, _ = normalize(gx.to(accumulate_dtype(x.dtype)), ln_groups)
        gx = (ln_ih_weight * normalized).to(x.dtype)
    return gx if b_ih is None else gx + b_ih


def zoneout(previous: Tensor, candidate: Tensor, p: float, hits: Optional[Tensor],
            training: bool) -> Tensor:
    """s_t = m ⊙ s_{t-1} + (1 - m) ⊙ s~_t in training; the expectation in eval."""
    if p == 0.0:
        return candidate
    if training:
        return torch.where(hits, previous, candidate)
    return p * previous + (1.0 - p) * candidate


class MaskSource:
    """Per-step masks of one call, either regenerated from its seed or replayed from tensors."""

    def __init__(self, seed: Optional[Tensor] = None, captured: Optional[M.CallMasks] = None):
        self.seed = seed
        self.captured = captured

    def hits(self, field: str, kind: int, p: float, t: int, batch: int,
             hidden: int) -> Optional[Tensor]:
        """[B, H] bool hits at step t of the mask a call draws for its probability ``field``."""
        if p == 0.0:
            return None
        if self.captured is not None:
            full = getattr(self.captured, field)
            return None if full is None else full[t]
        return M.step_hits(self.seed, kind, p, t, batch, hidden)


class StepMasks:
    """The per-step masks one step of a call draws (none in eval mode), by call field."""

    def __init__(self, call, masks: MaskSource, t: int):
        cell, batch = cell_of(call), call.h0.shape[0]
        self.hits = {field: masks.hits(field, kind, getattr(call, field) if call.training else 0.0,
                                       t, batch, cell.mask_width(field, call))
                     for field, kind in cell.step_masks.items()}

    def __getattr__(self, field: str) -> Optional[Tensor]:
        try:
            return self.__dict__["hits"][field]
        except KeyError:
            raise AttributeError(field) from None


def _recurrent_product(h: Tensor, call, acc: torch.dtype):
    """W_hh (d ⊙ h), layer-normalized when γ_hh is given; returns it and the (mean, rstd) stats."""
    h_in = h if call.recurrent_mask is None else h * call.recurrent_mask
    hh = (h_in @ call.w_hh.t()).to(acc)
    if call.ln_hh_weight is None:
        return hh, []
    normalized, mean, rstd = normalize(hh, call.ln_groups)
    return call.ln_hh_weight * normalized, [mean, rstd]


def _candidate_scale(hits: Optional[Tensor], p: float, acc: torch.dtype) -> Optional[Tensor]:
    """δ_t in the gate-math dtype: 1/(1-p) rounded to float32 would cost a float64 call its
    precision (docs/cells.md)."""
    return None if hits is None else (~hits).to(acc) / (1.0 - p)


def project_output(m: Tensor, call: LSTMCall, dtype: torch.dtype) -> Tensor:
    """h~ = W_hr m (torch.nn's proj_size), reading m rounded to the input dtype like the
    recurrent product reads h; m itself without a projection."""
    if call.w_hr is None:
        return m
    return (m.to(dtype) @ call.w_hr.t()).to(m.dtype)


def lstm_step(call: LSTMCall, gx_t: Tensor, h: Tensor, c: Tensor, masks: StepMasks):
    """One LSTM step. h: [B, P] in the input dtype, c: [B, H] float32/64 (P = H without a
    projection).

    Returns (h_t, c_t, preact, stats): the zoned states and what the kernels save for backward.
    """
    acc = c.dtype
    hh, stats = _recurrent_product(h, call, acc)
    a = gx_t.to(acc) + hh
    if call.b_hh is not None:
        a = a + call.b_hh
    i, f, g, o = a.chunk(4, dim=-1)
    candidate = torch.tanh(g)
    scale = _candidate_scale(masks.candidate_dropout, call.candidate_dropout, acc)
    if scale is not None:
        candidate = candidate * scale
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * candidate
    y = c_new
    if call.ln_cell_weight is not None:
        normalized, mean_c, rstd_c = normalize(c_new, 1)
        y = call.ln_cell_weight * normalized + call.ln_cell_bias
        stats = stats + [mean_c, rstd_c]
    h_new = project_output(torch.sigmoid(o) * torch.tanh(y), call, h.dtype)
    c_t = zoneout(c, c_new, call.zoneout_cell, masks.zoneout_cell, call.training)
    h_t = zoneout(h.to(acc), h_new, call.zoneout_hidden, masks.zoneout_hidden,
                  call.training).to(h.dtype)
    return h_t, c_t, a, stats


def gru_step(call: GRUCall, gx_t: Tensor, h: Tensor, masks: StepMasks):
    """One GRU step (PyTorch convention: r gates W_hn h + b_hn). Returns (h_t, preact, hidden_n, stats)."""
    acc = accumulate_dtype(h.dtype)
    hh, stats = _recurrent_product(h, call, acc)
    if call.b_hh is not None:
        hh = hh + call.b_hh
    gx_r, gx_z, gx_n = gx_t.to(acc).chunk(3, dim=-1)
    hh_r, hh_z, hh_n = hh.chunk(3, dim=-1)
    a_r, a_z = gx_r + hh_r, gx_z + hh_z
    r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
    a_n = gx_n + r * hh_n
    n = torch.tanh(a_n)
    scale = _candidate_scale(masks.candidate_dropout, call.candidate_dropout, acc)
    if scale is not None:
        n = n * scale
    h_prev = h.to(acc)
    h_new = (1.0 - z) * n + z * h_prev
    h_t = zoneout(h_prev, h_new, call.zoneout_hidden, masks.zoneout_hidden,
                  call.training).to(h.dtype)
    return h_t, torch.cat([a_r, a_z, a_n], dim=-1), hh_n, stats


def _time_order(steps: int, reverse: bool):
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _active(lengths: Optional[Tensor], t: int) -> Optional[Tensor]:
    """[B, 1] bool: which sequences still run at step t (None: all of them)."""
    return None if lengths is None else (t < lengths).unsqueeze(-1)


def _keep_if(active, new, old):
    return new if active is None else torch.where(active, new, old)


def _starts(call, t: int) -> Optional[Tensor]:
    """[B, 1] bool: which rows start an episode at step t, reading the reset state (None: none).
    A row past its length holds its state whatever ``resets`` says there."""
    if call.resets is None:
        return None
    starts, active = call.resets[t].unsqueeze(-1), _active(call.lengths, t)
    return starts if active is None else starts & active


def _reset(call, t: int, state: Tensor, reset_state: Optional[Tensor]) -> Tensor:
    """The state step t reads: ``reset_state`` on the rows that start an episode there."""
    starts = _starts(call, t)
    return state if starts is None else torch.where(starts, reset_state.to(state.dtype), state)


def lstm_sequence(call: LSTMCall, masks: MaskSource, save: bool = True):
    """Runs an LSTM layer over call.gx [T, B, 4H] (h and out P-sized under a projection).

    Returns (out, h_n, c_n, preact, cell, stats) with the shapes of ``fastrnn::lstm_forward``, or
    with ``save=False`` only (out, h_n, c_n), keeping nothing else per step.
    Steps t >= lengths[b] leave the state unchanged and emit zeros (their saved rows are zero).
    """
    gx = call.gx
    steps, batch = gx.shape[0], gx.shape[1]
    h, c = call.h0, call.c0.to(accumulate_dtype(gx.dtype))
    out = gx.new_zeros(steps, batch, h.shape[-1])
    preacts, cells, stats = [None] * steps, [None] * steps, [None] * steps
    for t in _time_order(steps, call.reverse):
        h, c = _reset(call, t, h, call.h_reset), _reset(call, t, c, call.c_reset)
        h_t, c_t, a, step_stats = lstm_step(call, gx[t], h, c, StepMasks(call, masks, t))
        active = _active(call.lengths, t)
        out[t] = _keep_if(active, h_t, torch.zeros_like(h_t))
        if save:
            preacts[t] = _keep_if(active, a, torch.zeros_like(a)).to(gx.dtype)
            cells[t] = _keep_if(active, c_t, torch.zeros_like(c_t))
            stats[t] = _stack_stats(step_stats, batch, active, gx.device)
        h, c = _keep_if(active, h_t, h), _keep_if(active, c_t, c)
    if not save:
        return out, h, c.to(gx.dtype)
    return out, h, c.to(gx.dtype), torch.stack(preacts), torch.stack(cells), torch.stack(stats)


def gru_sequence(call: GRUCall, masks: MaskSource, save: bool = True):
    """Runs a GRU layer over call.gx [T, B, 3H].

    Returns (out, h_n, preact, hidden_n, stats) with the shapes of ``fastrnn::gru_forward``, or
    with ``save=False`` only (out, h_n).
    """
    gx = call.gx
    steps, batch = gx.shape[0], gx.shape[1]
    h = call.h0
    out = gx.new_zeros(steps, batch, h.shape[-1])
    preacts, hidden_ns, stats = [None] * steps, [None] * steps, [None] * steps
    for t in _time_order(steps, call.reverse):
        h = _reset(call, t, h, call.h_reset)
        h_t, a, hh_n, step_stats = gru_step(call, gx[t], h, StepMasks(call, masks, t))
        active = _active(call.lengths, t)
        out[t] = _keep_if(active, h_t, torch.zeros_like(h_t))
        if save:
            preacts[t] = _keep_if(active, a, torch.zeros_like(a)).to(gx.dtype)
            hidden_ns[t] = _keep_if(active, hh_n, torch.zeros_like(hh_n)).to(gx.dtype)
            stats[t] = _stack_stats(step_stats, batch, active, gx.device)
        h = _keep_if(active, h_t, h)
    if not save:
        return out, h
    return out, h, torch.stack(preacts), torch.stack(hidden_ns), torch.stack(stats)


def _stack_stats(step_stats: List[Tensor], batch: int, active, device) -> Tensor:
    """[B, S] float32: the per-group means, then rstds, of each layer norm of the step."""
    if not step_stats:
        return torch.zeros(batch, 0, device=device)
    columns = torch.cat([s.reshape(batch, -1) for s in step_stats], dim=-1).float()
    return _keep_if(active, columns, torch.zeros_like(columns))


# ------------------------------------------------------------------------------------ backward
# The chain rule of the steps above, one step at a time in reverse, from what the forward saved
# (out, preact, cell) — the same inputs the fused backward kernels get.  Checked against autograd
# of the forward cells by gradcheck (tests/test_reference.py).

def normalize_backward(d_normalized: Tensor, normalized: Tensor, rstd: Tensor, groups: int) -> Tensor:
    """d v from d N(v): rstd · (dn − mean(dn) − n · mean(dn ⊙ n)) within each group."""
    dn = d_normalized.reshape(*d_normalized.shape[:-1], groups, -1)
    n = normalized.reshape(dn.shape)
    dv = rstd.unsqueeze(-1) * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))
    return dv.reshape(d_normalized.shape)


def zoneout_backward(d_state: Tensor, p: float, hits: Optional[Tensor], training: bool):
    """Splits d s_t into (d s~_t, the share that flows straight to s_{t-1})."""
    if p == 0.0:
        return d_state, torch.zeros_like(d_state)
    if training:
        return torch.where(hits, 0.0, d_state), torch.where(hits, d_state, 0.0)
    return (1.0 - p) * d_state, p * d_state


def previous_states(out: Tensor, initial: Tensor, lengths: Optional[Tensor], reverse: bool,
                    resets: Optional[Tensor] = None, reset_state: Optional[Tensor] = None):
    """[T, B, H]: the state each step read (``out`` of the row's previous step, ``initial``, or
    ``reset_state`` where ``resets`` marks an episode start)."""
    steps = out.shape[0]
    if reverse:
        shifted = torch.cat([out[1:], initial.unsqueeze(0).to(out.dtype)])
        next_step = torch.arange(1, steps + 1, device=out.device)[:, None]
        first = next_step >= (steps if lengths is None else lengths[None, :])
    else:
        shifted = torch.cat([initial.unsqueeze(0).to(out.dtype), out[:-1]])
        first = (torch.arange(steps, device=out.device) == 0)[:, None].expand(steps, out.shape[1])
    read = torch.where(first.unsqueeze(-1), initial.unsqueeze(0).to(out.dtype), shifted)
    if resets is None:
        return read
    return torch.where(resets.unsqueeze(-1), reset_state.unsqueeze(0).to(out.dtype), read)


class _ResetGrads:
    """What crosses an episode start: d of the state read there goes to the reset state."""

    def __init__(self, call, reset_state: Optional[Tensor], acc: torch.dtype):
        self.call = call
        self.grad = None if reset_state is None else torch.zeros(reset_state.shape, dtype=acc,
                                                                 device=reset_state.device)

    def step(self, t: int, d_previous: Tensor) -> Tensor:
        """Takes d of the state step t read; returns the share that flows to the step before."""
        starts = _starts(self.call, t)
        if starts is None:
            return d_previous
        self.grad += torch.where(starts, d_previous, 0.0)
        return torch.where(starts, 0.0, d_previous)

    def result(self, like: Optional[Tensor]) -> Tensor:
        return _cast_or_empty(self.grad, like if like is not None else self.call.w_hh)


class _RecurrentGrads:
    """Accumulates dW_hh, db_hh, dγ_hh and returns dh_{t-1} through W_hh (d ⊙ h)."""

    def __init__(self, call, acc):
        self.call, self.acc = call, acc
        w_hh = call.w_hh
        self.d_w_hh = torch.zeros(w_hh.shape, dtype=acc, device=w_hh.device)
        self.d_b_hh = _zeros_like_present(call.b_hh, acc)
        self.d_ln = _zeros_like_present(call.ln_hh_weight, acc)

    def step(self, d_after_bias: Tensor, h_prev: Tensor) -> Tensor:
        """d_after_bias: grad of (γ_hh N(W_hh h) or W_hh h) + b_hh; returns d h_{t-1} through it."""
        call = self.call
        h_in = h_prev if call.recurrent_mask is None else h_prev * call.recurrent_mask
        if self.d_b_hh is not None:
            self.d_b_hh += d_after_bias.sum(0)
        d_hh = d_after_bias
        if call.ln_hh_weight is not None:
            normalized, _, rstd = normalize((h_in @ call.w_hh.t()).to(self.acc), call.ln_groups)
            self.d_ln += (d_after_bias * normalized).sum(0)
            d_hh = normalize_backward(d_after_bias * call.ln_hh_weight, normalized, rstd,
                                      call.ln_groups)
        self.d_w_hh += d_hh.t() @ h_in.to(self.acc)
        d_h_in = d_hh @ call.w_hh.to(self.acc)
        return d_h_in if call.recurrent_mask is None else d_h_in * call.recurrent_mask

    def results(self):
        like = self.call.w_hh
        return (_cast_or_empty(self.d_w_hh, like), _cast_or_empty(self.d_b_hh, like),
                _cast_or_empty(self.d_ln, like))


def _zeros_like_present(tensor: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if tensor is None else torch.zeros(tensor.shape, dtype=dtype, device=tensor.device)


def _cast_or_empty(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The gradient in the parameter dtype, or a fresh empty tensor for an absent parameter."""
    return like.new_empty(0) if grad is None else grad.to(like.dtype)


def lstm_sequence_backward(call: LSTMCall, saved: LSTMSaved, grads, masks: MaskSource):
    """Gradients of (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, w_hr,
    h_reset, c_reset) from ``grads`` = (d out, d h_n, d c_n)."""
    grad_out, grad_h_n, grad_c_n = grads
    out, preact, cell = saved.out, saved.preact, saved.cell
    steps = out.shape[0]
    acc = accumulate_dtype(out.dtype)
    h_prevs = previous_states(out, call.h0, call.lengths, call.reverse, call.resets, call.h_reset)
    c_prevs = previous_states(cell.to(acc), call.c0.to(acc), call.lengths, call.reverse,
                              call.resets, call.c_reset)
    h_reset, c_reset = _ResetGrads(call, call.h_reset, acc), _ResetGrads(call, call.c_reset, acc)
    recurrent = _RecurrentGrads(call, acc)
    d_cell_w = _zeros_like_present(call.ln_cell_weight, acc)
    d_cell_b = _zeros_like_present(call.ln_cell_bias, acc)
    d_w_hr = _zeros_like_present(call.w_hr, acc)
    d_gx = torch.zeros(preact.shape, dtype=acc, device=out.device)
    dh, dc = grad_h_n.to(acc), grad_c_n.to(acc)
    for t in reversed(list(_time_order(steps, call.reverse))):
        step_masks = StepMasks(call, masks, t)
        h_prev, c_prev = h_prevs[t], c_prevs[t]
        i, f, g, o = preact[t].to(acc).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        scale = _candidate_scale(step_masks.candidate_dropout, call.candidate_dropout, acc)
        candidate = g if scale is None else g * scale
        c_new = f * c_prev + i * candidate
        d_h_total = dh + grad_out[t].to(acc)
        d_h_new, d_h_prev = zoneout_backward(d_h_total, call.zoneout_hidden,
                                             step_masks.zoneout_hidden, call.training)
        d_c_new, d_c_prev = zoneout_backward(dc, call.zoneout_cell, step_masks.zoneout_cell,
                                             call.training)
        y = c_new
        if call.ln_cell_weight is not None:
            normalized, _, rstd_c = normalize(c_new, 1)
            y = call.ln_cell_weight * normalized + call.ln_cell_bias
        tanh_y = torch.tanh(y)
        active = _active(call.lengths, t)
        d_m = d_h_new  # d of m = σ(o) ⊙ tanh(y), through h~ = W_hr m under a projection
        if call.w_hr is not None:
            d_projected = _keep_if(active, d_h_new, torch.zeros_like(d_h_new))
            d_w_hr += d_projected.t() @ (o * tanh_y).to(out.dtype).to(acc)
            d_m = d_h_new @ call.w_hr.to(acc)
        d_o = d_m * tanh_y * o * (1 - o)
        d_y = d_m * o * (1 - tanh_y * tanh_y)
        if call.ln_cell_weight is not None:
            d_cell_w_t, d_cell_b_t = (d_y * normalized), d_y
            d_c_new = d_c_new + normalize_backward(d_y * call.ln_cell_weight, normalized, rstd_c, 1)
        else:
            d_c_new = d_c_new + d_y
        d_i = d_c_new * candidate * i * (1 - i)
        d_f = d_c_new * c_prev * f * (1 - f)
        d_g = d_c_new * i * (1 - g * g) * (1.0 if scale is None else scale)
        d_c_prev = d_c_prev + d_c_new * f
        d_a = torch.cat([d_i, d_f, d_g, d_o], dim=-1)
        if active is not None:
            d_a = torch.where(active, d_a, 0.0)
        d_gx[t] = d_a
        d_h_prev = d_h_prev + recurrent.step(d_a, h_prev)
        if d_cell_w is not None:
            d_cell_w += _keep_if(active, d_cell_w_t, torch.zeros_like(d_cell_w_t)).sum(0)
            d_cell_b += _keep_if(active, d_cell_b_t, torch.zeros_like(d_cell_b_t)).sum(0)
        d_h_prev, d_c_prev = h_reset.step(t, d_h_prev), c_reset.step(t, d_c_prev)
        dh, dc = _keep_if(active, d_h_prev, dh), _keep_if(active, d_c_prev, dc)
    d_w_hh, d_b_hh, d_ln_hh = recurrent.results()
    return (d_gx.to(preact.dtype), d_w_hh, d_b_hh, d_ln_hh, _cast_or_empty(d_cell_w, call.w_hh),
            _cast_or_empty(d_cell_b, call.w_hh), dh.to(call.h0.dtype), dc.to(call.c0.dtype),
            _cast_or_empty(d_w_hr, call.w_hh), h_reset.result(call.h_reset),
            c_reset.result(call.c_reset))


def gru_sequence_backward(call: GRUCall, saved: GRUSaved, grads, masks: MaskSource):
    """Gradients of (gx, w_hh, b_hh, ln_hh_weight, h0, h_reset) from ``grads`` = (d out, d h_n)."""
    grad_out, grad_h_n = grads
    out, preact, hidden_n = saved.out, saved.preact, saved.hidden_n
    steps, batch, hidden = out.shape
    acc = accumulate_dtype(out.dtype)
    h_prevs = previous_states(out, call.h0, call.lengths, call.reverse, call.resets, call.h_reset)
    h_reset = _ResetGrads(call, call.h_reset, acc)
    recurrent = _RecurrentGrads(call, acc)
    d_gx = torch.zeros(preact.shape, dtype=acc, device=out.device)
    dh = grad_h_n.to(acc)
    for t in reversed(list(_time_order(steps, call.reverse))):
        step_masks = StepMasks(call, masks, t)
        h_prev = h_prevs[t]
        a_r, a_z, a_n = preact[t].to(acc).chunk(3, dim=-1)
        r, z, tanh_n = torch.sigmoid(a_r), torch.sigmoid(a_z), torch.tanh(a_n)
        scale = _candidate_scale(step_masks.candidate_dropout, call.candidate_dropout, acc)
        scale = 1.0 if scale is None else scale
        n = tanh_n * scale
        d_h_total = dh + grad_out[t].to(acc)
        d_h_new, d_h_prev = zoneout_backward(d_h_total, call.zoneout_hidden,
                                             step_masks.zoneout_hidden, call.training)
        d_a_n = d_h_new * (1 - z) * scale * (1 - tanh_n * tanh_n)
        d_a_z = d_h_new * (h_prev.to(acc) - n) * z * (1 - z)
        d_a_r = d_a_n * hidden_n[t].to(acc) * r * (1 - r)
        d_h_prev = d_h_prev + d_h_new * z
        d_a = torch.cat([d_a_r, d_a_z, d_a_n], dim=-1)
        d_after_bias = torch.cat([d_a_r, d_a_z, d_a_n * r], dim=-1)
        active = _active(call.lengths, t)
        if active is not None:
            d_a = torch.where(active, d_a, 0.0)
            d_after_bias = torch.where(active, d_after_bias, 0.0)
        d_gx[t] = d_a
        d_h_prev = h_reset.step(t, d_h_prev + recurrent.step(d_after_bias, h_prev))
        dh = _keep_if(active, d_h_prev, dh)
    d_w_hh, d_b_hh, d_ln_hh = recurrent.results()
    return (d_gx.to(preact.dtype), d_w_hh, d_b_hh, d_ln_hh, dh.to(call.h0.dtype),
            h_reset.result(call.h_reset))


SEQUENCES = {LSTM.name: (lstm_sequence, lstm_sequence_backward),
             GRU.name: (gru_sequence, gru_sequence_backward)}
