"""The GRU and layer-norm GRU cell (gates r, z, n; r multiplies W_hn h + b_hn, as PyTorch) for
the drivers of kernels/recurrence.py.

The math of one step (as ``fastrnn.reference.gru_step``), on the program's [units, rows] tiles,
with q = γ_hh ⊙ N(W_hh x) + b_hh (or W_hh x + b_hh) split into q_r, q_z, q_n:
r = σ(gx_r + q_r); z = σ(gx_z + q_z); n = d ⊙ tanh(gx_n + r ⊙ q_n);
h = zoneout(h_{t-1}, (1 - z) ⊙ n + z ⊙ h_{t-1}).  The fourth gate slot of the product is empty.
"""
import triton
import triton.language as tl

from .common import (
    dropout_scale, load_slots, load_units, round_to, rows_where, select_first, sigmoid,
    slot_columns, stack4, step_mask_index, step_slab, store_gates, store_slots, store_units, tanh,
    unstack4, with_rows_of, zoneout_weight)



@triton.jit
def _no_state(cfg: tl.constexpr):
    return tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)


@triton.jit
def initial_states(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    return load_units(io.h0, rows, row_ok, units, unit_ok, H, False), _no_state(cfg)


@triton.jit
def previous_states(previous_t, first, rows, row_ok, units, unit_ok, io, work, dims,
                    cfg: tl.constexpr):
    T, B, H = dims
    h0, _ = initial_states(io, rows, row_ok, units, unit_ok, H, cfg)
    # A row past its length is not at its first step either: at the call's first step it would
    # read one step past either end of the outputs.
    carried = row_ok & (first == 0) & rows_where(rows, (previous_t >= 0) & (previous_t < T))
    h = load_units(step_slab(io.out, previous_t, B, H), rows, carried, units, unit_ok, H, False)
    return select_first(first, h0, h), _no_state(cfg)


@triton.jit
def forward_constants(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    """The recurrent-dropout scale of the program's units (loaded once per launch)."""
    if io.rmask is not None:
        rmask = load_units(io.rmask, rows, row_ok, units, unit_ok, H, False)
    else:
        rmask = _no_state(cfg)
    return rmask


@triton.jit
def forward_cell(terms, gx, h_prev, c_prev, t, rows, row_ok, units, unit_ok, active, first,
                 last, io, work, dims, rates, rmask, WRITE: tl.constexpr,
                 cfg: tl.constexpr):
    """Gates and hidden state of step t; returns (h, unused)."""
    T, B, H = dims
    live = active[None, :] & row_ok[None, :]
    a_r = gx[0] + terms[0]
    a_z = gx[1] + terms[1]
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    a_n = gx[2] + r * terms[2]
    seed = tl.load(io.seed)
    index = step_mask_index(t, rows, units, B, H)
    n = tanh(a_n) * dropout_scale(seed, cfg.KIND_CANDIDATE, index, rates.candidate_dropout,
                                  cfg.CANDIDATE)
    keep = zoneout_weight(seed, cfg.KIND_ZONEOUT_HIDDEN, index, rates.zoneout_hidden, cfg.ZONE_H,
                          cfg.TRAINING)
    h_t = keep * h_prev + (1.0 - keep) * ((1.0 - z) * n + z * h_prev)
    h_t = round_to(h_t, io.out.dtype.element_ty).to(tl.float32)  # the state is carried rounded
    if WRITE:
        store_units(step_slab(io.out, t, B, H), rows, row_ok, units, unit_ok, H,
                    tl.where(live, h_t, 0.0))
        store_units(io.h_n, rows, row_ok & last, units, unit_ok, H, h_t)
        if io.preact is not None:  # (None, and middle too: no backward will follow)
            store_gates(step_slab(io.preact, t, B, 3 * H), rows, row_ok, units, unit_ok, H, live,
                        (a_r, a_z, a_n), cfg)
            store_units(step_slab(io.middle, t, B, H), rows, row_ok, units, unit_ok, H,
                        tl.where(live, terms[2], 0.0))
        if work.inputs is not None:
            store_units(work.inputs + (t % 2) * B * H, rows, row_ok, units, unit_ok, H,
                        h_t * rmask)
    return tl.where(live, h_t, h_prev), c_prev


# ---------------------------------------------------------------------------------- backward

@triton.jit
def backward_constants(io, units, unit_ok, H, cfg: tl.constexpr):
    return ()


@triton.jit
def final_cell_grad(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    return _no_state(cfg)


@triton.jit
def backward_local(dh, dc, t, previous_t, rows, row_ok, units, unit_ok, active, first, start, io,
                   dims, rates, consts, cfg: tl.constexpr):
    """Step t's chain rule from dh_t to d(q) = (d a_r, d a_z, d a_n ⊙ r): (P, Q, R, (), context)
    with no row sums (Q, R unused)."""
    T, B, H = dims
    ok = row_ok & active
    live = ok[None, :] & unit_ok[:, None]
    d_h = dh + load_units(step_slab(io.grad_out, t, B, H), rows, ok, units, unit_ok, H, False)
    cols, col_ok = slot_columns(H, cfg)
    a_r, a_z, a_n, _ = unstack4(load_slots(step_slab(io.preact, t, B, 3 * H), rows, ok, cols, col_ok,
                                           3 * H))
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    tanh_n = tanh(a_n)
    q_n = load_units(step_slab(io.middle, t, B, H), rows, ok, units, unit_ok, H, False)
    carried = load_units(step_slab(io.out, previous_t, B, H), rows, ok & (first == 0), units, unit_ok,
                         H, False)
    h_prev = select_first(first, load_units(io.h0, rows, ok & first, units, unit_ok, H, False),
                          carried)
    if cfg.RESETS:
        h_prev = with_rows_of(h_prev, io.h_reset, rows, row_ok, start, units, unit_ok, H)
    seed = tl.load(io.seed)
    index = step_mask_index(t, rows, units, B, H)
    scale = dropout_scale(seed, cfg.KIND_CANDIDATE, index, rates.candidate_dropout, cfg.CANDIDATE)
    keep = zoneout_weight(seed, cfg.KIND_ZONEOUT_HIDDEN, index, rates.zoneout_hidden, cfg.ZONE_H,
                          cfg.TRAINING)
    d_candidate = (1.0 - keep) * d_h
    da_z = tl.where(live, d_candidate * (h_prev - tanh_n * scale) * z * (1.0 - z), 0.0)
    da_n = tl.where(live, d_candidate * (1.0 - z) * scale * (1.0 - tanh_n * tanh_n), 0.0)
    da_r = da_n * q_n * r * (1.0 - r)
    p = (da_r, da_z, da_n * r, tl.zeros_like(da_n))
    return p, p, p, (), (keep, d_h, d_candidate, z, da_r, da_z, da_n)


@triton.jit
def backward_finish(context, d_terms, s1, s2, t, rows, row_ok, units, unit_ok, active, first, io,
                    dims, consts, WRITE: tl.constexpr, cfg: tl.constexpr):
    """d_gx of step t (only with WRITE); returns (the part of dh_{t-1} that bypasses W_hh,
    unused)."""
    T, B, H = dims
    keep, d_h, d_candidate, z, da_r, da_z, da_n = context
    if WRITE:
        cols, col_ok = slot_columns(H, cfg)
        store_slots(step_slab(io.d_gx, t, B, 3 * H), rows, row_ok, cols, col_ok, 3 * H,
                    stack4(da_r, da_z, da_n, da_n))
    return keep * d_h + d_candidate * z, _no_state(cfg)
