"""The LSTM and layer-norm LSTM cell (gates i, f, g, o) for the drivers of kernels/recurrence.py.

The math of one step (as ``fastrnn.reference.lstm_step``), on the program's [units, rows]
tiles: a = gx + (γ_hh ⊙ N(W_hh x) + b_hh); c~ = σ(f) c + σ(i) d ⊙ tanh(g);
h~ = σ(o) tanh(γ_c N(c~) + β_c) (or tanh(c~)); c, h zoned out.

The cell norm needs statistics of c~ over all H units of a row, which no split has alone.
Instead of a third barrier per step (publish the moments, meet, then compute h and publish it),
each split publishes c~, σ(o) and — with hidden zoneout in training — the zoneout bit of its
units, plus the moments of c~; at the next step every split reads them for all units of its
rows, merges the moments, and computes h_{t-1} itself (``merged_product``); ``own_outputs``
writes its own units of ``out``.  So a layer-norm step meets two barriers: the recurrent norm's
and this one.

Backward: the cell norm's row sums S1 = Σ dN_c, S2 = Σ dN_c ⊙ N_c enter d c~ linearly, so the
gate gradients are d_a = P + S1·Q + S2·R with local P, Q, R, and the layer-norm backward of
W_hh x, which needs row sums of γ_hh ⊙ d_a, gets them from the same exchange.
"""
import triton
import triton.language as tl

from .common import (
    add_chunk_product, clamped_step, column_moments, dropout_scale, empty_product, in_range,
    load_chunk, load_slots, load_units, load_vector_chunk, norm_statistics, parameter_row,
    publish_row_values, round_to, rows_where, select_first, sigmoid, slot_columns, stack4,
    step_geometry, step_mask_index, step_slab, step_starts, store_gates, store_slots, store_units,
    tanh, unstack4, with_first_rows, with_rows_of, zoneout_weight)

# Fields of one step's half [3, B, H] of the cell exchange (``_exchange``; cell norm only).
CANDIDATE_FIELD = tl.constexpr(0)   # c~
OUTPUT_GATE_FIELD = tl.constexpr(1)  # σ(o)
ZONEOUT_FIELD = tl.constexpr(2)     # the hidden zoneout bit (training with zoneout only)



@triton.jit
def _exchange(work, t, B, H, cfg: tl.constexpr):
    """Step t's halves of the double-buffered cell exchange: (fields [3, B, H], moments
    [B', 3, SPLITS']).  Step t writes its parity while the same launch (a phase launch recomputes
    step t's input) may still read step t - 1's."""
    parity = t & 1  # t = -1 (before a first step) is read too; % would keep its sign
    padded = tl.cdiv(B, cfg.BLOCK_B) * cfg.BLOCK_B
    return (work.exchange + parity * 3 * B * H,
            work.cell_moments + parity * padded * 3 * cfg.SPLITS_P2)


# ----------------------------------------------------------------------------------- forward

@triton.jit
def initial_states(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    return (load_units(io.h0, rows, row_ok, units, unit_ok, H, False),
            load_units(io.c0, rows, row_ok, units, unit_ok, H, False))


@triton.jit
def _carried_cell(io, work, t, B, H):
    """Where step t's c is kept for the next step: the saved cell [T, B, H] when the forward
    saves it, else the per-step driver's carrier [2, B, H] by parity (a persistent launch that
    saves nothing keeps c in registers and has neither)."""
    if io.middle is not None:
        slab = step_slab(io.middle, t, B, H)
    else:
        slab = work.cells + (t & 1) * B * H  # t = -1 is read too: & keeps it in [0, 2)
    return slab


@triton.jit
def previous_states(previous_t, first, rows, row_ok, units, unit_ok, io, work, dims,
                    cfg: tl.constexpr):
    """(h, c) of the program's units before step t, read back from out and the carried c."""
    T, B, H = dims
    h0, c0 = initial_states(io, rows, row_ok, units, unit_ok, H, cfg)
    # A row past its length is not at its first step either: at the call's first step it would
    # read one step past either end of the outputs.
    carried = row_ok & (first == 0) & rows_where(rows, (previous_t >= 0) & (previous_t < T))
    h = load_units(step_slab(io.out, previous_t, B, H), rows, carried, units, unit_ok, H, False)
    c = load_units(_carried_cell(io, work, previous_t, B, H), rows, carried, units, unit_ok, H,
                   False)
    return select_first(first, h0, h), select_first(first, c0, c)


@triton.jit
def forward_constants(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    """Loaded once per launch: the recurrent-dropout scale and, with the cell norm, γ_c, β_c of
    the program's units.  (``merged_product`` reads γ_c, β_c of every unit chunk by chunk: a
    tuple of them all would stay in registers for the whole loop.)"""
    if io.rmask is not None:
        rmask = load_units(io.rmask, rows, row_ok, units, unit_ok, H, False)
    else:
        rmask = tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)
    if cfg.MERGED:
        gamma = tl.load(io.ln_cell_w + units, mask=unit_ok, other=0.0).to(tl.float32)
        beta = tl.load(io.ln_cell_b + units, mask=unit_ok, other=0.0).to(tl.float32)
    else:
        gamma = tl.zeros([cfg.BLOCK_U], tl.float32)
        beta = gamma
    return rmask, gamma, beta


@triton.jit
def forward_cell(terms, gx, h_prev, c_prev, t, rows, row_ok, units, unit_ok, active, first,
                 last, io, work, dims, rates, consts, WRITE: tl.constexpr,
                 cfg: tl.constexpr):
    """Gates, cell and (without the cell norm) hidden state of step t; returns (h, c), h being
    h_prev unchanged with the cell norm (the next step's ``merged_product`` computes it)."""
    T, B, H = dims
    rmask, gamma, beta = consts
    live = active[None, :] & row_ok[None, :]
    a_i = gx[0] + terms[0]
    a_f = gx[1] + terms[1]
    a_g = gx[2] + terms[2]
    a_o = gx[3] + terms[3]
    seed = tl.load(io.seed)
    index = step_mask_index(t, rows, units, B, H)
    scale = dropout_scale(seed, cfg.KIND_CANDIDATE, index, rates.candidate_dropout, cfg.CANDIDATE)
    c_new = sigmoid(a_f) * c_prev + sigmoid(a_i) * (tanh(a_g) * scale)
    keep_c = zoneout_weight(seed, cfg.KIND_ZONEOUT_CELL, index, rates.zoneout_cell, cfg.ZONE_C,
                            cfg.TRAINING)
    c_t = keep_c * c_prev + (1.0 - keep_c) * c_new
    o = sigmoid(a_o)
    if WRITE:
        if io.preact is not None:  # (None: no backward will follow)
            store_gates(step_slab(io.preact, t, B, 4 * H), rows, row_ok, units, unit_ok, H, live,
                        (a_i, a_f, a_g, a_o), cfg)
        if io.middle is not None or work.cells is not None:
            store_units(_carried_cell(io, work, t, B, H), rows, row_ok, units, unit_ok, H,
                        tl.where(live, c_t, 0.0))
        store_units(io.c_n, rows, row_ok & last, units, unit_ok, H, c_t)
    h = h_prev
    if cfg.MERGED:
        if WRITE:
            exchange, moments = _exchange(work, t, B, H, cfg)
            store_units(exchange + CANDIDATE_FIELD * B * H, rows, row_ok, units, unit_ok, H, c_new)
            store_units(exchange + OUTPUT_GATE_FIELD * B * H, rows, row_ok, units, unit_ok, H, o)
            if cfg.PUBLISH_ZONEOUT:
                keep_h = zoneout_weight(seed, cfg.KIND_ZONEOUT_HIDDEN, index, rates.zoneout_hidden,
                                        cfg.ZONE_H, cfg.TRAINING)
                store_units(exchange + ZONEOUT_FIELD * B * H, rows, row_ok, units, unit_ok, H,
                            keep_h)
            publish_row_values(moments, tl.program_id(1), rows, row_ok,
                               column_moments(c_new, unit_ok[:, None] & row_ok[None, :]), 3, cfg)
    else:
        keep_h = zoneout_weight(seed, cfg.KIND_ZONEOUT_HIDDEN, index, rates.zoneout_hidden,
                                cfg.ZONE_H, cfg.TRAINING)
        h_t = keep_h * h_prev + (1.0 - keep_h) * (o * tanh(c_new))
        h_t = round_to(h_t, io.out.dtype.element_ty).to(tl.float32)  # the state is carried rounded
        if WRITE:
            store_units(step_slab(io.out, t, B, H), rows, row_ok, units, unit_ok, H,
                        tl.where(live, h_t, 0.0))
            store_units(io.h_n, rows, row_ok & last, units, unit_ok, H, h_t)
            if work.inputs is not None:
                store_units(work.inputs + (t % 2) * B * H, rows, row_ok, units, unit_ok, H,
                            h_t * rmask)
        h = tl.where(live, h_t, h_prev)
    return h, tl.where(live, c_t, c_prev)


# ------------------------------------------------------------- the cell-norm exchange

@triton.jit
def _hidden_from_exchange(c_tilde, o, keep, before, mean, rstd, gamma, beta, cfg: tl.constexpr):
    """h = w ⊙ h_before + (1 - w) ⊙ σ(o) tanh(γ_c N(c~) + β_c), every operand broadcast alike."""
    h = o * tanh(gamma * ((c_tilde - mean) * rstd) + beta)
    if cfg.ZONE_H:
        h = keep * before + (1.0 - keep) * h
    return h


@triton.jit
def _cell_statistics(moments, rows, row_ok, H, cfg: tl.constexpr):
    """(mean, rstd) of each row's c~ over H from the splits' published moments."""
    return norm_statistics(moments, rows, 0, 3, cfg)


@triton.jit
def _eval_keep(like, rates, cfg: tl.constexpr):
    """The hidden zoneout weight when it is not exchanged: p in eval mode."""
    return tl.zeros(like.shape, tl.float32) + rates.zoneout_hidden[1]


@triton.jit
def own_outputs(previous_t, steps, rows, row_ok, units, unit_ok, io, work, dims, rates, consts, pc,
                cfg: tl.constexpr):
    """Writes h of step ``previous_t`` for the program's units — out (zero where the row did not
    run), h_n where it was the row's last step, and split 0's cell statistics — from the cell
    exchange of that step (a driver calls it before each step and once after the last)."""
    T, B, H = dims
    rmask, gamma, beta = consts
    has_previous = rows_where(rows, (previous_t >= 0) & (previous_t < steps))
    lengths = tl.load(io.lengths + rows, mask=row_ok, other=0).to(tl.int32)
    active, first, last, before_t = step_geometry(previous_t, lengths, cfg.REVERSE)
    active = active & has_previous
    exchange, moments = _exchange(work, previous_t, B, H, cfg)
    mean, rstd = _cell_statistics(moments, rows, row_ok, H, cfg)
    ok = row_ok & active
    c_tilde = load_units(exchange + CANDIDATE_FIELD * B * H, rows, ok, units, unit_ok, H, True)
    o = load_units(exchange + OUTPUT_GATE_FIELD * B * H, rows, ok, units, unit_ok, H, True)
    if cfg.PUBLISH_ZONEOUT:
        keep = load_units(exchange + ZONEOUT_FIELD * B * H, rows, ok, units, unit_ok, H, True)
    else:
        keep = _eval_keep(c_tilde, rates, cfg)
    before = tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)
    if cfg.ZONE_H:
        carried = load_units(step_slab(io.out, before_t, B, H), rows, ok & (first == 0), units,
                             unit_ok, H, True)
        before = select_first(first, load_units(io.h0, rows, ok & first, units, unit_ok, H,
                                                False), carried)
        if cfg.RESETS:
            # That step started an episode: it read (and zoned out towards) the reset state.
            before = with_rows_of(before, io.h_reset, rows, row_ok,
                                  step_starts(io.resets, previous_t, rows, row_ok, active, T, B),
                                  units, unit_ok, H)
    h = _hidden_from_exchange(c_tilde, o, keep, before, mean[None, :], rstd[None, :],
                              gamma[:, None], beta[:, None], cfg)
    live = active[None, :]
    store_units(step_slab(io.out, previous_t, B, H), rows, row_ok & has_previous, units, unit_ok, H,
                tl.where(live, h, 0.0))
    store_units(io.h_n, rows, row_ok & last & has_previous, units, unit_ok, H, h)
    # Every split merges the same statistics (bit for bit): split 0 alone saves them, zero
    # where the row did not run (as the other saved tensors).
    if io.stats is not None:
        stats_ok = row_ok & has_previous & ((rows * 0 + pc) == 0)
        stats_row = step_slab(io.stats, previous_t, B, cfg.STATS) + rows * cfg.STATS
        tl.store(stats_row + 2 * cfg.GROUPS, tl.where(active, mean, 0.0), mask=stats_ok)
        tl.store(stats_row + 2 * cfg.GROUPS + 1, tl.where(active, rstd, 0.0), mask=stats_ok)


@triton.jit
def merged_product(t, previous_t, first, start, rows, row_ok, weights, cols, col_ok, io, work,
                   dims, rates, cfg: tl.constexpr):
    """W_slice · x_{t-1}ᵀ with x_{t-1} = d ⊙ h_{t-1} for every unit of the rows, h_{t-1} computed
    from the previous step's cell exchange (h0 on a row's first step, h_reset on an episode
    start; the zoneout of h_{t-1} towards the state step t - 1 read, h_reset where that step
    started an episode)."""
    T, B, H = dims
    lengths = tl.load(io.lengths + rows, mask=row_ok, other=0).to(tl.int32)
    active_before, first_before, _, before_t = step_geometry(previous_t, lengths, cfg.REVERSE)
    start_before = first_before  # (unused without resets)
    if cfg.RESETS:
        start_before = step_starts(io.resets, previous_t, rows, row_ok, active_before, T, B)
    exchange, moments = _exchange(work, previous_t, B, H, cfg)
    mean, rstd = _cell_statistics(moments, rows, row_ok, H, cfg)
    # Rows on their first step take h0 (``with_first_rows``): the exchange is read for every row
    # of the tile (masked only by ``in_range``), and what those rows read from it is discarded.
    rows_mask = in_range(row_ok, cfg)
    acc = empty_product(cfg)
    for k in tl.static_range(cfg.NUM_K):
        c_tilde = load_chunk(exchange + CANDIDATE_FIELD * B * H, rows, rows_mask, k, H, cfg, True)
        o = load_chunk(exchange + OUTPUT_GATE_FIELD * B * H, rows, rows_mask, k, H, cfg, True)
        if cfg.PUBLISH_ZONEOUT:
            keep = load_chunk(exchange + ZONEOUT_FIELD * B * H, rows, rows_mask, k, H, cfg, True)
        else:
            keep = _eval_keep(c_tilde, rates, cfg)
        before = tl.zeros([cfg.BLOCK_K, cfg.BLOCK_B], tl.float32)
        if cfg.ZONE_H:
            before = load_chunk(step_slab(io.out, clamped_step(before_t, T), B, H), rows,
                                rows_mask, k, H, cfg, True)
            before = with_first_rows(before, io.h0, rows, row_ok, first_before, k, H, cfg)
            if cfg.RESETS:
                before = with_first_rows(before, io.h_reset, rows, row_ok, start_before, k, H,
                                         cfg)
        h = _hidden_from_exchange(c_tilde, o, keep, before, mean[None, :], rstd[None, :],
                                  load_vector_chunk(io.ln_cell_w, k, H, cfg)[:, None],
                                  load_vector_chunk(io.ln_cell_b, k, H, cfg)[:, None], cfg)
        h = round_to(h, io.out.dtype.element_ty).to(tl.float32)
        h = with_first_rows(h, io.h0, rows, row_ok, first, k, H, cfg)
        if cfg.RESETS:
            h = with_first_rows(h, io.h_reset, rows, row_ok, start, k, H, cfg)
        if io.rmask is not None:
            h = h * load_chunk(io.rmask, rows, rows_mask, k, H, cfg, False)
        acc = add_chunk_product(acc, weights, io.w_hh, cols, col_ok, k, h, H, cfg)
        # Loads do not move across a CTA barrier: ptxas would otherwise issue every chunk's
        # loads at once, and their registers together spill.
        tl.debug_barrier()
    return acc


# ---------------------------------------------------------------------------------- backward

@triton.jit
def backward_constants(io, units, unit_ok, H, cfg: tl.constexpr):
    if cfg.CELL_NORM:
        gamma = tl.load(io.ln_cell_w + units, mask=unit_ok, other=0.0).to(tl.float32)
        beta = tl.load(io.ln_cell_b + units, mask=unit_ok, other=0.0).to(tl.float32)
    else:
        gamma = tl.zeros([cfg.BLOCK_U], tl.float32)
        beta = gamma
    return gamma, beta


@triton.jit
def final_cell_grad(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    return load_units(io.grad_c_n, rows, row_ok, units, unit_ok, H, False)


@triton.jit
def backward_local(dh, dc, t, previous_t, rows, row_ok, units, unit_ok, active, first, start, io,
                   dims, rates, consts, cfg: tl.constexpr):
    """Step t's chain rule from the carries to the gates: (P, Q, R, the cell-norm row sums,
    context) with d a = P + S1·Q + S2·R (Q, R unused without the cell norm)."""
    T, B, H = dims
    gamma, beta = consts
    ok = row_ok & active
    live = ok[None, :] & unit_ok[:, None]
    d_h = dh + load_units(step_slab(io.grad_out, t, B, H), rows, ok, units, unit_ok, H, False)
    cols, col_ok = slot_columns(H, cfg)
    a_i, a_f, a_g, a_o = unstack4(load_slots(step_slab(io.preact, t, B, 4 * H), rows, ok, cols,
                                             col_ok, 4 * H))
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    tanh_g = tanh(a_g)
    o = sigmoid(a_o)
    seed = tl.load(io.seed)
    index = step_mask_index(t, rows, units, B, H)
    scale = dropout_scale(seed, cfg.KIND_CANDIDATE, index, rates.candidate_dropout, cfg.CANDIDATE)
    keep_c = zoneout_weight(seed, cfg.KIND_ZONEOUT_CELL, index, rates.zoneout_cell, cfg.ZONE_C,
                            cfg.TRAINING)
    keep_h = zoneout_weight(seed, cfg.KIND_ZONEOUT_HIDDEN, index, rates.zoneout_hidden, cfg.ZONE_H,
                            cfg.TRAINING)
    carried = load_units(step_slab(io.middle, previous_t, B, H), rows, ok & (first == 0), units,
                         unit_ok, H, False)
    c_prev = select_first(first, load_units(io.c0, rows, ok & first, units, unit_ok, H, False),
                          carried)
    if cfg.RESETS:
        c_prev = with_rows_of(c_prev, io.c_reset, rows, row_ok, start, units, unit_ok, H)
    c_new = f * c_prev + i * (tanh_g * scale)
    if cfg.CELL_NORM:
        stats_row = step_slab(io.stats, t, B, cfg.STATS) + rows * cfg.STATS
        mean_c = tl.load(stats_row + 2 * cfg.GROUPS, mask=ok, other=0.0)
        rstd_c = tl.load(stats_row + 2 * cfg.GROUPS + 1, mask=ok, other=0.0)
        normalized = (c_new - mean_c[None, :]) * rstd_c[None, :]
        tanh_y = tanh(gamma[:, None] * normalized + beta[:, None])
    else:
        rstd_c = tl.zeros([cfg.BLOCK_B], tl.float32)
        normalized = c_new
        tanh_y = tanh(c_new)
    d_h_new = (1.0 - keep_h) * d_h
    dy = tl.where(live, d_h_new * o * (1.0 - tanh_y * tanh_y), 0.0)
    da_o = tl.where(live, d_h_new * tanh_y * o * (1.0 - o), 0.0)
    kappa_i = tanh_g * scale * i * (1.0 - i)
    kappa_f = c_prev * f * (1.0 - f)
    kappa_g = i * scale * (1.0 - tanh_g * tanh_g)
    carry = tl.where(live, (1.0 - keep_c) * dc, 0.0)
    if cfg.CELL_NORM:
        d_norm = gamma[:, None] * dy
        a = rstd_c[None, :] * d_norm + carry
        b = tl.where(live, -rstd_c[None, :] / H, 0.0)
        c = tl.where(live, -rstd_c[None, :] * normalized / H, 0.0)
        zero = tl.zeros_like(a)
        p = (a * kappa_i, a * kappa_f, a * kappa_g, da_o)
        q = (b * kappa_i, b * kappa_f, b * kappa_g, zero)
        r = (c * kappa_i, c * kappa_f, c * kappa_g, zero)
        sums = (tl.sum(d_norm, axis=0), tl.sum(d_norm * tl.where(live, normalized, 0.0), axis=0))
    else:
        a = dy + carry
        b = a
        c = a
        p = (a * kappa_i, a * kappa_f, a * kappa_g, da_o)
        q = p
        r = p
        sums = ()
    return p, q, r, sums, (keep_h, d_h, keep_c, dc, f, a, b, c, dy, normalized)


@triton.jit
def backward_finish(context, d_terms, s1, s2, t, rows, row_ok, units, unit_ok, active, first, io,
                    dims, consts, WRITE: tl.constexpr, cfg: tl.constexpr):
    """With the row sums known: d_gx of step t and the cell-norm parameter gradients (both only
    with WRITE); returns (the part of dh_{t-1} that bypasses W_hh, dc_{t-1})."""
    T, B, H = dims
    keep_h, d_h, keep_c, dc, f, a, b, c, dy, normalized = context
    live = (row_ok & active)[None, :] & unit_ok[:, None]
    if cfg.CELL_NORM:
        d_cell = a + s1[None, :] * b + s2[None, :] * c
    else:
        d_cell = a
    if WRITE:
        cols, col_ok = slot_columns(H, cfg)
        store_slots(step_slab(io.d_gx, t, B, 4 * H), rows, row_ok, cols, col_ok, 4 * H,
                    tl.where((row_ok & active)[None, :],
                             stack4(d_terms[0], d_terms[1], d_terms[2], d_terms[3]), 0.0))
        if cfg.CELL_NORM:
            row = parameter_row(io, tl.program_id(0), H, cfg) + 2 * cfg.GATES * H
            d_gamma = tl.sum(tl.where(live, dy * normalized, 0.0), axis=1)
            d_beta = tl.sum(dy, axis=1)
            tl.store(row + units, tl.load(row + units, mask=unit_ok, other=0.0) + d_gamma,
                     mask=unit_ok)
            tl.store(row + H + units, tl.load(row + H + units, mask=unit_ok, other=0.0) + d_beta,
                     mask=unit_ok)
    return keep_h * d_h, keep_c * dc + d_cell * f
