"""Reference cells: the equations of SPEC.md, one time step at a time, in plain PyTorch.

These functions are the statement of the math that every fused kernel is judged against, and
the "reference" backend of the fastrnn ops (CPU, float64, and the fallback on CUDA).
Statistics, gate math and the cell state run in float32 (float64 for float64 inputs); the
recurrent product and the hidden state stay in the input dtype, as in the kernels.

A layer call runs ``gx`` (the input projection of every step, see ``project_input``) through
``lstm_sequence`` / ``gru_sequence``; masks come from a ``MaskSource``: regenerated from the
call's seed (the backend) or replayed from a captured ``CallMasks`` (tests).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import masks as M

EPS = 1e-5


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(v: Tensor, groups: int) -> Tuple[Tensor, Tensor, Tensor]:
    """N(v) over ``groups`` equal slices of the last dim: (normalized, mean, rstd), biased variance."""
    grouped = v.reshape(*v.shape[:-1], groups, v.shape[-1] // groups)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + EPS)
    return ((grouped - mean) * rstd).reshape(v.shape), mean.squeeze(-1), rstd.squeeze(-1)


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

    def hits(self, kind: int, p: float, t: int, batch: int, hidden: int) -> Optional[Tensor]:
        if p == 0.0:
            return None
        if self.captured is not None:
            full = {M.ZONEOUT_CELL: self.captured.zoneout_cell,
                    M.ZONEOUT_HIDDEN: self.captured.zoneout_hidden,
                    M.CANDIDATE_DROPOUT: self.captured.candidate}[kind]
            return None if full is None else full[t]
        return M.step_hits(self.seed, kind, p, t, batch, hidden)


class Regularizers(NamedTuple):
    zoneout_cell: float = 0.0       # LSTM only
    zoneout_hidden: float = 0.0     # the GRU's `zoneout`
    candidate_dropout: float = 0.0
    training: bool = False


class StepProbabilities:
    """The probabilities whose masks a step draws: none in eval mode."""

    def __init__(self, reg: Regularizers):
        on = reg.training
        self.zoneout_cell = reg.zoneout_cell if on else 0.0
        self.zoneout_hidden = reg.zoneout_hidden if on else 0.0
        self.candidate = reg.candidate_dropout if on else 0.0


def _recurrent_product(h: Tensor, w_hh: Tensor, recurrent_mask: Optional[Tensor],
                       ln_hh_weight: Optional[Tensor], ln_groups: int, acc: torch.dtype):
    """W_hh (d ⊙ h), layer-normalized when γ_hh is given; returns it and the (mean, rstd) stats."""
    h_in = h if recurrent_mask is None else h * recurrent_mask
    hh = (h_in @ w_hh.t()).to(acc)
    if ln_hh_weight is None:
        return hh, []
    normalized, mean, rstd = normalize(hh, ln_groups)
    return ln_hh_weight * normalized, [mean, rstd]


def _candidate_scale(hits: Optional[Tensor], p: float) -> Optional[Tensor]:
    return None if hits is None else (~hits).to(torch.float32) / (1.0 - p)


def lstm_step(gx_t, h, c, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, ln_groups,
              recurrent_mask, reg: Regularizers, hits_c, hits_h, hits_cand):
    """One LSTM step (SPEC §1-2). h: [B, H] in the input dtype, c: [B, H] float32/64.

    Returns (h_t, c_t, preact, stats): the zoned states and what the kernels save for backward.
    """
    acc = c.dtype
    hh, stats = _recurrent_product(h, w_hh, recurrent_mask, ln_hh_weight, ln_groups, acc)
    a = gx_t.to(acc) + hh
    if b_hh is not None:
        a = a + b_hh
    i, f, g, o = a.chunk(4, dim=-1)
    candidate = torch.tanh(g)
    scale = _candidate_scale(hits_cand, reg.candidate_dropout)
    if scale is not None:
        candidate = candidate * scale.to(acc)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * candidate
    y = c_new
    if ln_cell_weight is not None:
        normalized, mean_c, rstd_c = normalize(c_new, 1)
        y = ln_cell_weight * normalized + ln_cell_bias
        stats = stats + [mean_c, rstd_c]
    h_new = torch.sigmoid(o) * torch.tanh(y)
    c_t = zoneout(c, c_new, reg.zoneout_cell, hits_c, reg.training)
    h_t = zoneout(h.to(acc), h_new, reg.zoneout_hidden, hits_h, reg.training).to(h.dtype)
    return h_t, c_t, a, stats


def gru_step(gx_t, h, w_hh, b_hh, ln_hh_weight, ln_groups, recurrent_mask, reg: Regularizers,
             hits_h, hits_cand):
    """One GRU step (PyTorch convention: r gates W_hn h + b_hn). Returns (h_t, preact, hidden_n, stats)."""
    acc = accumulate_dtype(h.dtype)
    hh, stats = _recurrent_product(h, w_hh, recurrent_mask, ln_hh_weight, ln_groups, acc)
    if b_hh is not None:
        hh = hh + b_hh
    gx_r, gx_z, gx_n = gx_t.to(acc).chunk(3, dim=-1)
    hh_r, hh_z, hh_n = hh.chunk(3, dim=-1)
    a_r, a_z = gx_r + hh_r, gx_z + hh_z
    r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
    a_n = gx_n + r * hh_n
    n = torch.tanh(a_n)
    scale = _candidate_scale(hits_cand, reg.candidate_dropout)
    if scale is not None:
        n = n * scale.to(acc)
    h_prev = h.to(acc)
    h_new = (1.0 - z) * n + z * h_prev
    h_t = zoneout(h_prev, h_new, reg.zoneout_hidden, hits_h, reg.training).to(h.dtype)
    return h_t, torch.cat([a_r, a_z, a_n], dim=-1), hh_n, stats


def _time_order(steps: int, reverse: bool):
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _active(lengths: Optional[Tensor], t: int) -> Optional[Tensor]:
    """[B, 1] bool: which sequences still run at step t (None: all of them)."""
    return None if lengths is None else (t < lengths).unsqueeze(-1)


def _keep_if(active, new, old):
    return new if active is None else torch.where(active, new, old)


def lstm_sequence(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
                  recurrent_mask, reg: Regularizers, masks: MaskSource, ln_groups: int = 1,
                  reverse: bool = False):
    """Runs an LSTM layer over gx [T, B, 4H].

    Returns (out, h_n, c_n, preact, cell, stats) with the shapes of ``fastrnn::lstm_forward``.
    Steps t >= lengths[b] leave the state unchanged and emit zeros (their saved rows are zero).
    """
    steps, batch = gx.shape[0], gx.shape[1]
    hidden = w_hh.shape[1]
    acc = accumulate_dtype(gx.dtype)
    h, c = h0, c0.to(acc)
    outs: List[Tensor] = [None] * steps
    preacts, cells, stats = [None] * steps, [None] * steps, [None] * steps
    p = StepProbabilities(reg)
    for t in _time_order(steps, reverse):
        h_t, c_t, a, step_stats = lstm_step(
            gx[t], h, c, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, ln_groups,
            recurrent_mask, reg, masks.hits(M.ZONEOUT_CELL, p.zoneout_cell, t, batch, hidden),
            masks.hits(M.ZONEOUT_HIDDEN, p.zoneout_hidden, t, batch, hidden),
            masks.hits(M.CANDIDATE_DROPOUT, p.candidate, t, batch, hidden))
        active = _active(lengths, t)
        outs[t] = _keep_if(active, h_t, torch.zeros_like(h_t))
        preacts[t] = _keep_if(active, a, torch.zeros_like(a)).to(gx.dtype)
        cells[t] = _keep_if(active, c_t, torch.zeros_like(c_t))
        stats[t] = _stack_stats(step_stats, batch, active, gx.device)
        h, c = _keep_if(active, h_t, h), _keep_if(active, c_t, c)
    return (torch.stack(outs), h, c.to(gx.dtype), torch.stack(preacts), torch.stack(cells),
            torch.stack(stats))


def gru_sequence(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, reg: Regularizers,
                 masks: MaskSource, ln_groups: int = 1, reverse: bool = False):
    """Runs a GRU layer over gx [T, B, 3H].

    Returns (out, h_n, preact, hidden_n, stats) with the shapes of ``fastrnn::gru_forward``.
    """
    steps, batch = gx.shape[0], gx.shape[1]
    hidden = w_hh.shape[1]
    h = h0
    outs: List[Tensor] = [None] * steps
    preacts, hidden_ns, stats = [None] * steps, [None] * steps, [None] * steps
    p = StepProbabilities(reg)
    for t in _time_order(steps, reverse):
        h_t, a, hh_n, step_stats = gru_step(
            gx[t], h, w_hh, b_hh, ln_hh_weight, ln_groups, recurrent_mask, reg,
            masks.hits(M.ZONEOUT_HIDDEN, p.zoneout_hidden, t, batch, hidden),
            masks.hits(M.CANDIDATE_DROPOUT, p.candidate, t, batch, hidden))
        active = _active(lengths, t)
        outs[t] = _keep_if(active, h_t, torch.zeros_like(h_t))
        preacts[t] = _keep_if(active, a, torch.zeros_like(a)).to(gx.dtype)
        hidden_ns[t] = _keep_if(active, hh_n, torch.zeros_like(hh_n)).to(gx.dtype)
        stats[t] = _stack_stats(step_stats, batch, active, gx.device)
        h = _keep_if(active, h_t, h)
    return torch.stack(outs), h, torch.stack(preacts), torch.stack(hidden_ns), torch.stack(stats)


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


def previous_states(out: Tensor, initial: Tensor, lengths: Optional[Tensor], reverse: bool):
    """[T, B, H]: the state each step read (``out`` of the row's previous step, or ``initial``)."""
    steps = out.shape[0]
    if reverse:
        shifted = torch.cat([out[1:], initial.unsqueeze(0).to(out.dtype)])
        next_step = torch.arange(1, steps + 1, device=out.device)[:, None]
        first = next_step >= (steps if lengths is None else lengths[None, :])
    else:
        shifted = torch.cat([initial.unsqueeze(0).to(out.dtype), out[:-1]])
        first = (torch.arange(steps, device=out.device) == 0)[:, None].expand(steps, out.shape[1])
    return torch.where(first.unsqueeze(-1), initial.unsqueeze(0).to(out.dtype), shifted)


class _RecurrentGrads:
    """Accumulates dW_hh, db_hh, dγ_hh and returns dh_{t-1} through W_hh (d ⊙ h)."""

    def __init__(self, w_hh, b_hh, ln_hh_weight, ln_groups, recurrent_mask, acc):
        self.w_hh, self.ln_hh_weight, self.groups = w_hh, ln_hh_weight, ln_groups
        self.recurrent_mask, self.acc = recurrent_mask, acc
        self.d_w_hh = torch.zeros(w_hh.shape, dtype=acc, device=w_hh.device)
        self.d_b_hh = None if b_hh is None else torch.zeros(b_hh.shape, dtype=acc, device=w_hh.device)
        self.d_ln = (None if ln_hh_weight is None
                     else torch.zeros(ln_hh_weight.shape, dtype=acc, device=w_hh.device))

    def step(self, d_after_bias: Tensor, h_prev: Tensor) -> Tensor:
        """d_after_bias: grad of (γ_hh N(W_hh h) or W_hh h) + b_hh; returns d h_{t-1} through it."""
        h_in = h_prev if self.recurrent_mask is None else h_prev * self.recurrent_mask
        if self.d_b_hh is not None:
            self.d_b_hh += d_after_bias.sum(0)
        d_hh = d_after_bias
        if self.ln_hh_weight is not None:
            normalized, _, rstd = normalize((h_in @ self.w_hh.t()).to(self.acc), self.groups)
            self.d_ln += (d_after_bias * normalized).sum(0)
            d_hh = normalize_backward(d_after_bias * self.ln_hh_weight, normalized, rstd, self.groups)
        self.d_w_hh += d_hh.t() @ h_in.to(self.acc)
        d_h_in = d_hh @ self.w_hh.to(self.acc)
        return d_h_in if self.recurrent_mask is None else d_h_in * self.recurrent_mask

    def results(self, like: Tensor):
        return (_cast_or_empty(self.d_w_hh, like), _cast_or_empty(self.d_b_hh, like),
                _cast_or_empty(self.d_ln, like))


def _cast_or_empty(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The gradient in the parameter dtype, or a fresh empty tensor for an absent parameter."""
    return like.new_empty(0) if grad is None else grad.to(like.dtype)


def lstm_sequence_backward(grad_out, grad_h_n, grad_c_n, out, preact, cell, w_hh, b_hh,
                           ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
                           recurrent_mask, reg: Regularizers, masks: MaskSource, ln_groups=1,
                           reverse=False):
    """Gradients of (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0)."""
    steps, batch, hidden = out.shape
    acc = accumulate_dtype(out.dtype)
    h_prevs = previous_states(out, h0, lengths, reverse)
    c_prevs = previous_states(cell.to(acc), c0.to(acc), lengths, reverse)
    recurrent = _RecurrentGrads(w_hh, b_hh, ln_hh_weight, ln_groups, recurrent_mask, acc)
    d_cell_w = None if ln_cell_weight is None else torch.zeros(hidden, dtype=acc, device=out.device)
    d_cell_b = None if ln_cell_bias is None else torch.zeros(hidden, dtype=acc, device=out.device)
    d_gx = torch.zeros(preact.shape, dtype=acc, device=out.device)
    dh, dc = grad_h_n.to(acc), grad_c_n.to(acc)
    p = StepProbabilities(reg)
    for t in reversed(list(_time_order(steps, reverse))):
        hits_c = masks.hits(M.ZONEOUT_CELL, p.zoneout_cell, t, batch, hidden)
        hits_h = masks.hits(M.ZONEOUT_HIDDEN, p.zoneout_hidden, t, batch, hidden)
        hits_cand = masks.hits(M.CANDIDATE_DROPOUT, p.candidate, t, batch, hidden)
        h_prev, c_prev = h_prevs[t], c_prevs[t]
        i, f, g, o = preact[t].to(acc).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        scale = _candidate_scale(hits_cand, reg.candidate_dropout)
        candidate = g if scale is None else g * scale.to(acc)
        c_new = f * c_prev + i * candidate
        d_h_total = dh + grad_out[t].to(acc)
        d_h_new, d_h_prev = zoneout_backward(d_h_total, reg.zoneout_hidden, hits_h, reg.training)
        d_c_new, d_c_prev = zoneout_backward(dc, reg.zoneout_cell, hits_c, reg.training)
        y = c_new
        if ln_cell_weight is not None:
            normalized, _, rstd_c = normalize(c_new, 1)
            y = ln_cell_weight * normalized + ln_cell_bias
        tanh_y = torch.tanh(y)
        d_o = d_h_new * tanh_y * o * (1 - o)
        d_y = d_h_new * o * (1 - tanh_y * tanh_y)
        if ln_cell_weight is not None:
            d_cell_w_t, d_cell_b_t = (d_y * normalized), d_y
            d_c_new = d_c_new + normalize_backward(d_y * ln_cell_weight, normalized, rstd_c, 1)
        else:
            d_c_new = d_c_new + d_y
        d_i = d_c_new * candidate * i * (1 - i)
        d_f = d_c_new * c_prev * f * (1 - f)
        d_g = d_c_new * i * (1 - g * g) * (1.0 if scale is None else scale.to(acc))
        d_c_prev = d_c_prev + d_c_new * f
        d_a = torch.cat([d_i, d_f, d_g, d_o], dim=-1)
        active = _active(lengths, t)
        if active is not None:
            d_a = torch.where(active, d_a, 0.0)
        d_gx[t] = d_a
        d_h_prev = d_h_prev + recurrent.step(d_a, h_prev)
        if d_cell_w is not None:
            d_cell_w += _keep_if(active, d_cell_w_t, torch.zeros_like(d_cell_w_t)).sum(0)
            d_cell_b += _keep_if(active, d_cell_b_t, torch.zeros_like(d_cell_b_t)).sum(0)
        dh, dc = _keep_if(active, d_h_prev, dh), _keep_if(active, d_c_prev, dc)
    d_w_hh, d_b_hh, d_ln_hh = recurrent.results(w_hh)
    return (d_gx.to(preact.dtype), d_w_hh, d_b_hh, d_ln_hh, _cast_or_empty(d_cell_w, w_hh),
            _cast_or_empty(d_cell_b, w_hh), dh.to(h0.dtype), dc.to(c0.dtype))


def gru_sequence_backward(grad_out, grad_h_n, out, preact, hidden_n, w_hh, b_hh, ln_hh_weight, h0,
                          lengths, recurrent_mask, reg: Regularizers, masks: MaskSource,
                          ln_groups=1, reverse=False):
    """Gradients of (gx, w_hh, b_hh, ln_hh_weight, h0)."""
    steps, batch, hidden = out.shape
    acc = accumulate_dtype(out.dtype)
    h_prevs = previous_states(out, h0, lengths, reverse)
    recurrent = _RecurrentGrads(w_hh, b_hh, ln_hh_weight, ln_groups, recurrent_mask, acc)
    d_gx = torch.zeros(preact.shape, dtype=acc, device=out.device)
    dh = grad_h_n.to(acc)
    p = StepProbabilities(reg)
    for t in reversed(list(_time_order(steps, reverse))):
        hits_h = masks.hits(M.ZONEOUT_HIDDEN, p.zoneout_hidden, t, batch, hidden)
        hits_cand = masks.hits(M.CANDIDATE_DROPOUT, p.candidate, t, batch, hidden)
        h_prev = h_prevs[t]
        a_r, a_z, a_n = preact[t].to(acc).chunk(3, dim=-1)
        r, z, tanh_n = torch.sigmoid(a_r), torch.sigmoid(a_z), torch.tanh(a_n)
        scale = _candidate_scale(hits_cand, reg.candidate_dropout)
        scale = 1.0 if scale is None else scale.to(acc)
        n = tanh_n * scale
        d_h_total = dh + grad_out[t].to(acc)
        d_h_new, d_h_prev = zoneout_backward(d_h_total, reg.zoneout_hidden, hits_h, reg.training)
        d_a_n = d_h_new * (1 - z) * scale * (1 - tanh_n * tanh_n)
        d_a_z = d_h_new * (h_prev.to(acc) - n) * z * (1 - z)
        d_a_r = d_a_n * hidden_n[t].to(acc) * r * (1 - r)
        d_h_prev = d_h_prev + d_h_new * z
        d_a = torch.cat([d_a_r, d_a_z, d_a_n], dim=-1)
        d_after_bias = torch.cat([d_a_r, d_a_z, d_a_n * r], dim=-1)
        active = _active(lengths, t)
        if active is not None:
            d_a = torch.where(active, d_a, 0.0)
            d_after_bias = torch.where(active, d_after_bias, 0.0)
        d_gx[t] = d_a
        d_h_prev = d_h_prev + recurrent.step(d_after_bias, h_prev)
        dh = _keep_if(active, d_h_prev, dh)
    d_w_hh, d_b_hh, d_ln_hh = recurrent.results(w_hh)
    return d_gx.to(preact.dtype), d_w_hh, d_b_hh, d_ln_hh, dh.to(h0.dtype)
