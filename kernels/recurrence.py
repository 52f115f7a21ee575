"""The drivers every cell shares: one layer and direction of a recurrence over all T steps,
forward and backward, written once and parameterized by a cell (kernels/lstm.py, gru.py).

A program (pb, pc) owns the rows of batch tile pb and the hidden units of column split pc, with
every gate of them, and (``HOIST``) keeps its slice of W_hh on chip for the launch (``common``).
A step:

forward   1. the recurrent input x_{t-1} = d ⊙ h_{t-1} of the tile's rows, for every unit, read
             from what the splits exchanged at the previous step (or the initial state);
          2. the product W_slice xᵀ, then (layer norm) each split publishes the moments of its
             columns, **barrier**, every split merges them and normalizes its columns;
          3. the cell (``CELL.forward_cell``) writes the step's outputs and publishes what the
             next step's input is made of, **barrier**.
backward  1. the cell's local chain rule from the carried gradients (``CELL.backward_local``)
             gives d(γ_hh N(W_hh x) + b_hh) as P + S1·Q + S2·R, where S1, S2 are row sums over
             every unit (the LSTM's cell norm; zero for cells without one);
          2. (layer norm) each split publishes its partial sums of those row sums and of the
             layer-norm backward's sums — affine in S1, S2, so one exchange serves both —,
             **barrier**; the cell finishes its step (``CELL.backward_finish``); d W_hh x;
          3. each split multiplies its d(W_hh x) columns by its W_sliceᵀ — its share of
             W_hhᵀ d(W_hh x) for every unit —, publishes it, **barrier**, and sums the shares
             of its own units: dh_{t-1}.
So a step meets at most two barriers: layer norm's and the exchange (one without layer norm).

Two drivers run the same step functions:

* ``*_persistent``: one launch, the time loop inside, splits meeting at ``tile_barrier``.  Needs
  every program resident (with several splits the host launches it cooperatively); with one
  split it has no grid barrier and also runs under TRITON_INTERPRET (the interpreter's default
  tiling).  The forward loads the next step's gx before the step's barriers.
* ``*_phase``: one launch per phase per step; the kernel boundary is the barrier and each phase
  recomputes the cheap local values of the phases before it.  Grids too large to be resident,
  FASTRNN_TRITON_PERSISTENT=0, and tilings of several splits under the interpreter (where
  programs run one after another) use it.

Episode starts (``cfg.RESETS``): a row whose step t is flagged in ``io.resets`` reads the reset
state there (h_reset, c_reset; x_reset = d ⊙ h_reset in the recurrent product) instead of the
one its previous step left, as on a first step it reads the initial state; backward, the
gradient of the state read there is added to d_h_reset (d_c_reset), a float32 accumulator each
program owns for its rows and units, and the carries become zero.  Without resets none of this
is compiled.

A batch tile runs only to its longest sequence; its later steps of out (forward) and of d_gx,
d_hh (backward) are zero-filled.  Rows past their own end emit zeros and carry their state (or
gradient) through unchanged.
"""
import triton
import triton.language as tl

from .common import (
    GATE_SLOTS, add_chunk_product, clamped_step, empty_product, gate_group, gate_valid,
    group_moments, hoisted_weights, in_range, load_chunk, load_gate_vector, load_slots,
    load_units, norm_statistics, parameter_row, program_tile, publish_row_values,
    publish_transposed_product, reduce_transposed_product, row_geometry, rows_where, split_sum,
    stack4, step_slab, step_starts, store_slots, store_units, tile_barrier, tile_steps,
    time_of_step, unstack4, with_first_rows, with_rows_of)

# Per-step phases of the ``*_phase`` kernels (the persistent kernels run them all in one).
PHASE_NORM = tl.constexpr(0)     # forward: publish the layer-norm moments of W_hh x
PHASE_CELL = tl.constexpr(1)     # forward: the cell and its outputs
PHASE_FINISH = tl.constexpr(2)   # forward: outputs the cell leaves to the next step, at the end
PHASE_SUMS = tl.constexpr(0)     # backward: publish the row sums (layer norm)
PHASE_GRADS = tl.constexpr(1)    # backward: d_gx, d(W_hh x), publish the W_hhᵀ shares
PHASE_CARRY = tl.constexpr(2)    # backward: sum the shares into dh_{t-1}, update the carries


@triton.jit
def writes(phase: tl.constexpr, cfg: tl.constexpr):
    """Whether this launch makes the writes of ``phase`` (a persistent launch makes them all)."""
    return cfg.PERSISTENT or cfg.PHASE == phase


@triton.jit
def gate_vectors(ptr, units, unit_ok, H, cfg: tl.constexpr):
    """The program's [units] slice of each gate of a [G·H] vector, or zeros when absent."""
    # if/else, not an early return: the compiler visits the statements after a constexpr
    # branch's return too, and would dereference the absent pointer.
    if ptr is None:
        zero = tl.zeros([cfg.BLOCK_U], tl.float32)
        vectors = (zero, zero, zero, zero)
    else:
        vectors = (load_gate_vector(ptr, units, unit_ok, 0, H, cfg),
                   load_gate_vector(ptr, units, unit_ok, 1, H, cfg),
                   load_gate_vector(ptr, units, unit_ok, 2, H, cfg),
                   load_gate_vector(ptr, units, unit_ok, 3, H, cfg))
    return vectors



# ----------------------------------------------------------------------------------- forward

@triton.jit
def exchanged_product(t, previous_t, first, start, rows, row_ok, weights, cols, col_ok, io, work,
                      dims, cfg: tl.constexpr):
    """W_slice · x_{t-1}ᵀ with x_{t-1} = d ⊙ h_{t-1} for every unit of the rows: what the splits
    wrote at the previous step (``work.inputs`` [2, B, H] by step parity with a recurrent mask,
    else ``out`` itself), or x0 = d ⊙ h0 on a row's first step (x_reset = d ⊙ h_reset on an
    episode start, ``start``)."""
    T, B, H = dims
    if work.inputs is not None:
        previous = work.inputs + ((t + 1) % 2) * B * H
    else:
        previous = step_slab(io.out, clamped_step(previous_t, T), B, H)
    acc = empty_product(cfg)
    for k in tl.static_range(cfg.NUM_K):
        x = load_chunk(previous, rows, in_range(row_ok, cfg), k, H, cfg, True)
        x = with_first_rows(x, io.x0, rows, row_ok, first, k, H, cfg)
        if cfg.RESETS:
            x = with_first_rows(x, io.x_reset, rows, row_ok, start, k, H, cfg)
        acc = add_chunk_product(acc, weights, io.w_hh, cols, col_ok, k, x, H, cfg)
    return acc


@triton.jit
def normalized_recurrent_terms(hh, t, pc, rows, row_ok, units, unit_ok, active, io, work, dims,
                               consts, syncs, ok, cfg: tl.constexpr):
    """γ_hh ⊙ N(W_hh x) + b_hh (or W_hh x + b_hh) per gate slot, from the product ``hh``
    [4·U, rows]; with layer norm the splits exchange moments (one barrier) and split 0 stores
    the statistics.  Returns (the four terms, syncs, ok)."""
    T, B, H = dims
    bias, gamma = consts
    gates = unstack4(hh)
    if cfg.LAYER_NORM:
        if writes(PHASE_NORM, cfg):
            moments = ()
            for group in tl.static_range(cfg.GROUPS):
                moments = moments + group_moments(gates, unit_ok, row_ok, group, cfg)
            publish_row_values(work.moments, pc, rows, row_ok, moments, cfg.MOMENT_SLOTS, cfg)
        if cfg.PERSISTENT:
            syncs += 1
            ok = ok & tile_barrier(work.sync, tl.program_id(0), syncs * cfg.SPLITS, cfg)
        # Every split merges the same statistics (bit for bit): split 0 alone saves them, zero
        # where the row does not run (io.stats None: no backward will follow).
        stats_ok = row_ok & ((rows * 0 + pc) == 0)
        if io.stats is not None:
            stats_row = step_slab(io.stats, t, B, cfg.STATS) + rows * cfg.STATS
        statistics = ()
        for group in tl.static_range(cfg.GROUPS):
            mean, rstd = norm_statistics(work.moments, rows, group, cfg.MOMENT_SLOTS, cfg)
            if writes(PHASE_CELL, cfg):
                if io.stats is not None:
                    tl.store(stats_row + group, tl.where(active, mean, 0.0), mask=stats_ok)
                    tl.store(stats_row + cfg.GROUPS + group, tl.where(active, rstd, 0.0),
                             mask=stats_ok)
            statistics = statistics + ((mean, rstd),)
        terms = ()
        for gate in tl.static_range(GATE_SLOTS):
            if gate < cfg.GATES:
                mean, rstd = statistics[gate * cfg.GROUPS // cfg.GATES]
                term = (gates[gate] - mean[None, :]) * rstd[None, :] * gamma[gate][:, None]
            else:
                term = gates[gate]
            terms = terms + (term + bias[gate][:, None],)
    else:
        terms = (gates[0] + bias[0][:, None], gates[1] + bias[1][:, None],
                 gates[2] + bias[2][:, None], gates[3] + bias[3][:, None])
    return terms, syncs, ok


@triton.jit
def forward_step(t, steps, h_prev, c_prev, gx, syncs, ok, io, work, dims, rates, weights, consts,
                 cell_consts, cfg: tl.constexpr, CELL: tl.constexpr):
    """One step.  Persistent: every phase with the barriers between; a phase launch makes only
    its own writes.  ``h_prev``/``c_prev`` are the program's states, ``gx`` the step's input
    projection [4·U, rows].  Returns (h, c, syncs, ok)."""
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    active, first, last, previous_t = row_geometry(io.lengths, t, rows, row_ok, cfg.REVERSE)
    start = first  # (unused without resets)
    if cfg.RESETS:
        start = step_starts(io.resets, t, rows, row_ok, active, T, B)
    if cfg.MERGED:
        hh = CELL.merged_product(t, previous_t, first, start, rows, row_ok, weights, cols, col_ok,
                                 io, work, dims, rates, cfg)
    else:
        hh = exchanged_product(t, previous_t, first, start, rows, row_ok, weights, cols, col_ok,
                               io, work, dims, cfg)
    terms, syncs, ok = normalized_recurrent_terms(hh, t, pc, rows, row_ok, units, unit_ok, active,
                                                  io, work, dims, consts, syncs, ok, cfg)
    if cfg.RESETS:
        if not cfg.MERGED:  # (the cell exchange's h_{t-1} is made in ``merged_product``)
            h_prev = with_rows_of(h_prev, io.h_reset, rows, row_ok, start, units, unit_ok, H)
        if io.c_reset is not None:
            c_prev = with_rows_of(c_prev, io.c_reset, rows, row_ok, start, units, unit_ok, H)
    h_prev, c_prev = CELL.forward_cell(terms, unstack4(gx), h_prev, c_prev, t, rows, row_ok, units,
                                       unit_ok, active, first, last, io, work, dims, rates,
                                       cell_consts, writes(PHASE_CELL, cfg), cfg)
    if cfg.PERSISTENT:
        syncs += 1
        ok = ok & tile_barrier(work.sync, tl.program_id(0), syncs * cfg.SPLITS, cfg)
    return h_prev, c_prev, syncs, ok


@triton.jit
def load_gx(t, rows, row_ok, cols, col_ok, io, dims, cfg: tl.constexpr):
    T, B, H = dims
    return load_slots(step_slab(io.gx, t, B, cfg.GATES * H), rows, row_ok, cols, col_ok,
                      cfg.GATES * H)


@triton.jit
def zero_step(t, rows, row_ok, units, unit_ok, io, dims, cfg: tl.constexpr):
    """A step after the tile's longest sequence: out is zero."""
    T, B, H = dims
    store_units(step_slab(io.out, t, B, H), rows, row_ok, units, unit_ok, H,
                tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32))


@triton.jit
def forward_constants(io, units, unit_ok, H, cfg: tl.constexpr):
    return gate_vectors(io.b_hh, units, unit_ok, H, cfg), gate_vectors(io.ln_hh, units, unit_ok,
                                                                       H, cfg)


@triton.jit
def forward_persistent(io, work, dims, rates, cfg: tl.constexpr, CELL: tl.constexpr):
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    weights = hoisted_weights(io.w_hh, cols, col_ok, H, cfg)
    consts = forward_constants(io, units, unit_ok, H, cfg)
    cell_consts = CELL.forward_constants(io, rows, row_ok, units, unit_ok, H, cfg)
    h_prev, c_prev = CELL.initial_states(io, rows, row_ok, units, unit_ok, H, cfg)
    steps = tile_steps(io.lengths, rows, row_ok)
    gx = load_gx(time_of_step(0, steps, cfg.REVERSE), rows, row_ok, cols, col_ok, io, dims, cfg)
    syncs = 0
    ok = True
    # A cell with ``own_outputs`` writes each step's h at the start of the next, so its loop
    # runs once more for the last step's: one copy of that code, in the loop (a copy after the
    # loop kept its lane offsets through the loop, spilled, with triton 3.6).
    if cfg.MERGED:
        loop_end = steps + 1
    else:
        loop_end = steps
    for s in range(0, loop_end):
        if ok:
            if cfg.MERGED:
                CELL.own_outputs(time_of_step(s - 1, steps, cfg.REVERSE), steps, rows, row_ok,
                                 units, unit_ok, io, work, dims, rates, cell_consts, pc, cfg)
            if s < steps:
                t = time_of_step(s, steps, cfg.REVERSE)
                t_next = time_of_step(s + 1, steps, cfg.REVERSE)
                gx_next = load_gx(t_next, rows, row_ok & rows_where(rows, s + 1 < steps), cols,
                                  col_ok, io, dims, cfg)
                h_prev, c_prev, syncs, ok = forward_step(t, steps, h_prev, c_prev, gx, syncs, ok,
                                                         io, work, dims, rates, weights, consts,
                                                         cell_consts, cfg, CELL)
                gx = gx_next
    # The lengths are read again rather than kept through the time loop for this tail: kept,
    # they cost triton 3.6 registers in the loop (gru_reg forward, B=16 H=768: 167 -> 238).
    steps = tile_steps(io.lengths, rows, row_ok)
    for t in range(steps, T):
        zero_step(t, rows, row_ok, units, unit_ok, io, dims, cfg)


@triton.jit(do_not_specialize=["t"])
def forward_phase(io, work, dims, rates, t, cfg: tl.constexpr, CELL: tl.constexpr):
    """One phase of step t (PHASE_FINISH: the writes the cell left for after the last step)."""
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    steps = tile_steps(io.lengths, rows, row_ok)
    cell_consts = CELL.forward_constants(io, rows, row_ok, units, unit_ok, H, cfg)
    if cfg.PHASE == PHASE_FINISH:
        CELL.own_outputs(time_of_step(steps - 1, steps, cfg.REVERSE), steps, rows, row_ok, units,
                         unit_ok, io, work, dims, rates, cell_consts, pc, cfg)
    elif t >= steps:
        if writes(PHASE_CELL, cfg):
            zero_step(t, rows, row_ok, units, unit_ok, io, dims, cfg)
    else:
        weights = hoisted_weights(io.w_hh, cols, col_ok, H, cfg)
        consts = forward_constants(io, units, unit_ok, H, cfg)
        active, first, last, previous_t = row_geometry(io.lengths, t, rows, row_ok, cfg.REVERSE)
        h_prev, c_prev = CELL.previous_states(previous_t, first, rows, row_ok, units, unit_ok, io,
                                              work, dims, cfg)
        gx = load_gx(t, rows, row_ok, cols, col_ok, io, dims, cfg)
        if cfg.MERGED and cfg.PHASE == cfg.FIRST_PHASE:
            CELL.own_outputs(previous_t, steps, rows, row_ok, units, unit_ok, io, work, dims,
                             rates, cell_consts, pc, cfg)
        forward_step(t, steps, h_prev, c_prev, gx, 0, True, io, work, dims, rates, weights, consts,
                     cell_consts, cfg, CELL)


# ---------------------------------------------------------------------------------- backward

@triton.jit
def recomputed_norm(t, rows, row_ok, active, cols, col_ok, io, dims, cfg: tl.constexpr):
    """N(W_hh x_{t-1}) per gate slot, from W_hh x_{t-1} recomputed for every step by one GEMM
    before the launch (``io.hh``) and the statistics the forward saved."""
    T, B, H = dims
    gates = unstack4(load_slots(step_slab(io.hh, t, B, cfg.GATES * H), rows, row_ok & active,
                                cols, col_ok, cfg.GATES * H))
    stats_row = step_slab(io.stats, t, B, cfg.STATS) + rows * cfg.STATS
    ok = row_ok & active
    normalized = ()
    for gate in tl.static_range(GATE_SLOTS):
        if gate < cfg.GATES:
            group = gate_group(gate, cfg)
            mean = tl.load(stats_row + group, mask=ok, other=0.0)
            rstd = tl.load(stats_row + cfg.GROUPS + group, mask=ok, other=0.0)
            normalized = normalized + ((gates[gate] - mean[None, :]) * rstd[None, :],)
        else:
            normalized = normalized + (gates[gate] * 0.0,)
    return normalized


@triton.jit
def norm_sums(tiles, normalized, gamma, unit_ok, row_ok, group: tl.constexpr, cfg: tl.constexpr):
    """Per row, this split's (Σ γ⊙v, Σ γ⊙v⊙N) over the columns of layer-norm group ``group``."""
    total = tl.zeros([cfg.BLOCK_B], tl.float32)
    weighted = total
    for gate in tl.static_range(cfg.GATES):
        if gate_group(gate, cfg) == group:
            valid = gate_valid(unit_ok, row_ok, gate, cfg)
            scaled = tl.where(valid, tiles[gate] * gamma[gate][:, None], 0.0)
            total += tl.sum(scaled, axis=0)
            weighted += tl.sum(scaled * normalized[gate], axis=0)
    return total, weighted


@triton.jit
def norm_backward_means(sums_ptr, rows, group: tl.constexpr, s1, s2, H, cfg: tl.constexpr):
    """Per row, the means over layer-norm group ``group`` of dN = γ_hh ⊙ d(·) and of dN ⊙ N,
    from the splits' published sums: with the cell norm each is affine in (S1, S2)."""
    base = 2 * cfg.CELL_NORM + (2 + 4 * cfg.CELL_NORM) * group
    total = split_sum(sums_ptr, rows, base, cfg.SUM_SLOTS, cfg)
    weighted = split_sum(sums_ptr, rows, base + 1, cfg.SUM_SLOTS, cfg)
    if cfg.CELL_NORM:
        total += (s1 * split_sum(sums_ptr, rows, base + 2, cfg.SUM_SLOTS, cfg)
                  + s2 * split_sum(sums_ptr, rows, base + 4, cfg.SUM_SLOTS, cfg))
        weighted += (s1 * split_sum(sums_ptr, rows, base + 3, cfg.SUM_SLOTS, cfg)
                     + s2 * split_sum(sums_ptr, rows, base + 5, cfg.SUM_SLOTS, cfg))
    width = H * (cfg.GATES // cfg.GROUPS)
    return total / width, weighted / width


@triton.jit
def backward_step(t, steps, dh, dc, syncs, ok, io, work, dims, rates, weights, consts,
                  cell_consts, cfg: tl.constexpr, CELL: tl.constexpr):
    """One step back from the carried dh_t, dc_t of the program's units.  Returns
    (dh_{t-1}, dc_{t-1}, syncs, ok); rows that do not run at t keep their carries."""
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    active, first, last, previous_t = row_geometry(io.lengths, t, rows, row_ok, cfg.REVERSE)
    start = first  # (unused without resets)
    if cfg.RESETS:
        start = step_starts(io.resets, t, rows, row_ok, active, T, B)
    live = active[None, :] & row_ok[None, :]
    gamma, rmask = consts
    p, q, r, cell_sums, context = CELL.backward_local(dh, dc, t, previous_t, rows, row_ok, units,
                                                      unit_ok, active, first, start, io, dims,
                                                      rates, cell_consts, cfg)
    s1 = tl.zeros([cfg.BLOCK_B], tl.float32)
    s2 = s1
    d_terms = p
    if cfg.LAYER_NORM:
        normalized = recomputed_norm(t, rows, row_ok, active, cols, col_ok, io, dims, cfg)
        if writes(PHASE_SUMS, cfg):
            sums = cell_sums
            for group in tl.static_range(cfg.GROUPS):
                sums = sums + norm_sums(p, normalized, gamma, unit_ok, row_ok, group, cfg)
                if cfg.CELL_NORM:
                    sums = sums + norm_sums(q, normalized, gamma, unit_ok, row_ok, group, cfg)
                    sums = sums + norm_sums(r, normalized, gamma, unit_ok, row_ok, group, cfg)
            publish_row_values(work.sums, pc, rows, row_ok, sums, cfg.SUM_SLOTS, cfg)
        if cfg.PERSISTENT:
            syncs += 1
            ok = ok & tile_barrier(work.sync, tl.program_id(0), syncs * cfg.SPLITS, cfg)
        if cfg.CELL_NORM:
            s1 = split_sum(work.sums, rows, 0, cfg.SUM_SLOTS, cfg)
            s2 = split_sum(work.sums, rows, 1, cfg.SUM_SLOTS, cfg)
            d_terms = (p[0] + s1[None, :] * q[0] + s2[None, :] * r[0],
                       p[1] + s1[None, :] * q[1] + s2[None, :] * r[1],
                       p[2] + s1[None, :] * q[2] + s2[None, :] * r[2],
                       p[3] + s1[None, :] * q[3] + s2[None, :] * r[3])
    direct, dc_prev = CELL.backward_finish(context, d_terms, s1, s2, t, rows, row_ok, units,
                                           unit_ok, active, first, io, dims, cell_consts,
                                           writes(PHASE_GRADS, cfg), cfg)
    if writes(PHASE_GRADS, cfg):
        d_hh = d_terms
        if cfg.LAYER_NORM:
            means = ()
            for group in tl.static_range(cfg.GROUPS):
                means = means + (norm_backward_means(work.sums, rows, group, s1, s2, H, cfg),)
            d_hh = ()
            for gate in tl.static_range(GATE_SLOTS):
                if gate < cfg.GATES:
                    mean_d, mean_dn = means[gate * cfg.GROUPS // cfg.GATES]
                    rstd = tl.load(step_slab(io.stats, t, B, cfg.STATS) + rows * cfg.STATS
                                   + cfg.GROUPS + gate * cfg.GROUPS // cfg.GATES,
                                   mask=row_ok & active, other=0.0)
                    d_normalized = d_terms[gate] * gamma[gate][:, None]
                    d_hh = d_hh + (rstd[None, :] * (d_normalized - mean_d[None, :]
                                                    - normalized[gate] * mean_dn[None, :]),)
                else:
                    d_hh = d_hh + (d_terms[gate] * 0.0,)
        d_hh = tl.where(live, stack4(d_hh[0], d_hh[1], d_hh[2], d_hh[3]), 0.0)
        store_slots(step_slab(io.d_hh, t, B, cfg.GATES * H), rows, row_ok, cols, col_ok,
                    cfg.GATES * H, d_hh)
        accumulate_parameter_grads(d_terms, normalized if cfg.LAYER_NORM else d_terms, pb, live,
                                   cols, col_ok, io, dims, cfg)
        publish_transposed_product(weights, io.w_hh, cols, col_ok, d_hh,
                                   work.shares + (t % 2) * cfg.SPLITS * cfg.SPLITS * B * cfg.BLOCK_U, pb, pc, rows,
                                   row_ok, B, H, cfg)
    if cfg.PERSISTENT:
        syncs += 1
        ok = ok & tile_barrier(work.sync, tl.program_id(0), syncs * cfg.SPLITS, cfg)
    if writes(PHASE_CARRY, cfg):
        through = reduce_transposed_product(work.shares + (t % 2) * cfg.SPLITS * cfg.SPLITS * B * cfg.BLOCK_U, pc, rows,
                                            row_ok, B, cfg)
        if io.rmask is not None:
            through = through * rmask
        dh_prev = direct + through
        if cfg.RESETS:
            dh_prev, dc_prev = reset_gradients(start, dh_prev, dc_prev, rows, row_ok, units,
                                               unit_ok, io, H)
        store_units(io.d_h0, rows, row_ok & first, units, unit_ok, H, dh_prev)
        if io.d_c0 is not None:
            store_units(io.d_c0, rows, row_ok & first, units, unit_ok, H, dc_prev)
        dh = tl.where(live, dh_prev, dh)
        dc = tl.where(live, dc_prev, dc)
    return dh, dc, syncs, ok


@triton.jit
def reset_gradients(start, dh_prev, dc_prev, rows, row_ok, units, unit_ok, io, H):
    """At an episode start the gradient of the state the step read goes to the reset state
    (added to the float32 accumulators d_h_reset, d_c_reset), none to the previous step."""
    if tl.max(start.to(tl.int32), axis=0) > 0:
        ok = row_ok & start
        store_units(io.d_h_reset, rows, ok, units, unit_ok, H,
                    load_units(io.d_h_reset, rows, ok, units, unit_ok, H, False) + dh_prev)
        dh_prev = tl.where(start[None, :], 0.0, dh_prev)
        if io.d_c_reset is not None:
            store_units(io.d_c_reset, rows, ok, units, unit_ok, H,
                        load_units(io.d_c_reset, rows, ok, units, unit_ok, H, False) + dc_prev)
            dc_prev = tl.where(start[None, :], 0.0, dc_prev)
    return dh_prev, dc_prev


@triton.jit
def accumulate_parameter_grads(d_terms, normalized, pb, live, cols, col_ok, io, dims,
                               cfg: tl.constexpr):
    """The step's share of d b_hh and d γ_hh, added to this tile's partial row of
    ``param_grads`` [tiles, (b_hh, γ_hh, cell parameters)]: each program owns its columns, so
    no atomics, and the host sums the tiles in a fixed order (deterministic)."""
    T, B, H = dims
    width = cfg.GATES * H
    row = parameter_row(io, pb, H, cfg)
    if io.b_hh is not None:
        d_bias = tl.sum(tl.where(live, stack4(d_terms[0], d_terms[1], d_terms[2], d_terms[3]),
                                 0.0), axis=1)
        tl.store(row + cols, tl.load(row + cols, mask=col_ok, other=0.0) + d_bias, mask=col_ok)
    if cfg.LAYER_NORM:
        d_gamma = tl.sum(tl.where(live, stack4(d_terms[0] * normalized[0],
                                               d_terms[1] * normalized[1],
                                               d_terms[2] * normalized[2],
                                               d_terms[3] * normalized[3]), 0.0), axis=1)
        tl.store(row + width + cols, tl.load(row + width + cols, mask=col_ok, other=0.0) + d_gamma,
                 mask=col_ok)


@triton.jit
def zero_backward_step(t, rows, row_ok, cols, col_ok, io, dims, cfg: tl.constexpr):
    """A step after the tile's longest sequence: d_gx and d(W_hh x) are zero."""
    T, B, H = dims
    zero = tl.zeros([GATE_SLOTS * cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)
    store_slots(step_slab(io.d_gx, t, B, cfg.GATES * H), rows, row_ok, cols, col_ok, cfg.GATES * H,
                zero)
    store_slots(step_slab(io.d_hh, t, B, cfg.GATES * H), rows, row_ok, cols, col_ok, cfg.GATES * H,
                zero)


@triton.jit
def backward_constants(io, rows, row_ok, units, unit_ok, H, cfg: tl.constexpr):
    gamma = gate_vectors(io.ln_hh, units, unit_ok, H, cfg)
    if io.rmask is not None:
        rmask = load_units(io.rmask, rows, row_ok, units, unit_ok, H, False)
    else:
        rmask = tl.zeros([cfg.BLOCK_U, cfg.BLOCK_B], tl.float32)
    return gamma, rmask


@triton.jit
def backward_persistent(io, work, dims, rates, cfg: tl.constexpr, CELL: tl.constexpr):
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    weights = hoisted_weights(io.w_hh, cols, col_ok, H, cfg)
    consts = backward_constants(io, rows, row_ok, units, unit_ok, H, cfg)
    cell_consts = CELL.backward_constants(io, units, unit_ok, H, cfg)
    dh = load_units(io.grad_h_n, rows, row_ok, units, unit_ok, H, False)
    dc = CELL.final_cell_grad(io, rows, row_ok, units, unit_ok, H, cfg)
    steps = tile_steps(io.lengths, rows, row_ok)
    syncs = 0
    ok = True
    for s in range(0, steps):
        if ok:
            # Backward visits the steps in the opposite order to the forward direction.
            t = time_of_step(s, steps, not cfg.REVERSE)
            dh, dc, syncs, ok = backward_step(t, steps, dh, dc, syncs, ok, io, work, dims, rates,
                                              weights, consts, cell_consts, cfg, CELL)
    for t in range(steps, T):
        zero_backward_step(t, rows, row_ok, cols, col_ok, io, dims, cfg)


@triton.jit(do_not_specialize=["t"])
def backward_phase(io, work, dims, rates, t, cfg: tl.constexpr, CELL: tl.constexpr):
    """One phase of step t.  The carries live in work.carries [2 (dh, dc), 2 (parity), B, H]
    float32: read from the slot of step t + 1's parity, written to step t's, so that every
    phase of a step reads the same carries."""
    T, B, H = dims
    pb, rows, row_ok, pc, units, unit_ok, cols, col_ok = program_tile(B, H, cfg)
    steps = tile_steps(io.lengths, rows, row_ok)
    carry_in = (t + 1) % 2
    carry_out = t % 2
    dh = load_units(work.carries + carry_in * B * H, rows, row_ok, units, unit_ok, H, False)
    dc = load_units(work.carries + (2 + carry_in) * B * H, rows, row_ok, units, unit_ok, H, False)
    if t >= steps:
        if writes(PHASE_GRADS, cfg):
            zero_backward_step(t, rows, row_ok, cols, col_ok, io, dims, cfg)
    else:
        weights = hoisted_weights(io.w_hh, cols, col_ok, H, cfg)
        consts = backward_constants(io, rows, row_ok, units, unit_ok, H, cfg)
        cell_consts = CELL.backward_constants(io, units, unit_ok, H, cfg)
        dh, dc, syncs, ok = backward_step(t, steps, dh, dc, 0, True, io, work, dims, rates,
                                          weights, consts, cell_consts, cfg, CELL)
    if writes(PHASE_CARRY, cfg):
        store_units(work.carries + carry_out * B * H, rows, row_ok, units, unit_ok, H, dh)
        store_units(work.carries + (2 + carry_out) * B * H, rows, row_ok, units, unit_ok, H, dc)
