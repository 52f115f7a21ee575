"""Triton fused LSTM and layer-norm LSTM: forward and backward of one layer and direction.

Implements ``fastrnn::lstm_forward`` / ``lstm_backward`` for the Triton backend (the backend
signature of fastrnn/backends/reference_backend.py; docs/ops.md is the contract).

Structure.  Program (pb, pc) owns a tile of ``block_b`` batch rows and ``block_h`` hidden
units, with all four gates of those units.  Every step it needs the whole h_{t-1} of its rows
and, with layer norm, row statistics over all units, so the column splits of a batch tile meet
at exchange points: h_t goes through ``out`` itself (h_{t-1} of a row is ``out`` at its previous
step, or h0 on its first), layer-norm moments through small per-split buffers.

The body of a step is a chain of ``@triton.jit`` functions cut at those exchange points.  Two
drivers run the same functions:

* ``_lstm_forward_persistent`` / ``_lstm_backward_persistent``: one launch, the time loop
  inside, splits meeting at ``sync_tile`` grid barriers.  A batch tile runs only to its longest
  sequence and zero-fills the steps after it.  Needs every program resident (a GPU and a grid
  within the SM count), or a single column split (then it also runs under TRITON_INTERPRET).
* ``_lstm_forward_phase`` / ``_lstm_backward_phase``: one launch per phase per step, each
  phase recomputing the cheap local values of the phases before it instead of storing them;
  the kernel boundary is the barrier.  Used under the interpreter (where programs run one after
  another and a spin barrier would deadlock) and as the fallback.

Numerics (as the reference): the recurrent product reads ``h_{t-1} ⊙ recurrent_mask`` rounded
to the input dtype and accumulates in float32; statistics, gate math and the cell state are
float32.  float32 products use TF32 iff ``torch.backends.cuda.matmul.allow_tf32`` (the
``input_precision`` constexpr).  Zoneout and candidate-dropout masks are regenerated from the
seed with ``mask_hit`` in forward and backward, never stored.

Backward.  A reverse-time kernel of the same structure produces ``d_gx`` (= d preact) per step
and ``d_hh``, the gradient w.r.t. W_hh (d ⊙ h_{t-1}) (equal to d_gx without layer norm), which
the splits exchange to form dh_{t-1} = d ⊙ (W_hhᵀ d_hh).  d_w_hh is then one GEMM in torch;
bias and layer-norm parameter gradients are per-batch-tile partial rows summed on the host
(deterministic).  With layer norm W_hh (d ⊙ h_{t-1}) is recomputed for all t by one GEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrnn import masks as M
from fastrnn.backends.fused import absent_gradient, recurrent_inputs, recurrent_weight_grad
from fastrnn.kernels.common import (
    EPS, accumulate_columns, add_backward_gate_product, add_gate_product, barrier_counters,
    cooperative_launch, dropout_scale, exchange_buffer, gate_moments, gate_tile, group_statistics,
    hoisted_weight_tile, launch_options, lengths_or_full, load_previous, load_rows, new_output,
    norm_input_grad, present_or, program_tile, recurrent_input, row_geometry, sigmoid,
    step_mask_index, step_order, store_gate_moments, store_gate_tile, store_norm_sums, store_rows,
    summed_partial, sync_tile, tanh, tile_steps, tiling_for, time_of_step, zoneout_weight)
from fastrnn.cells import LSTM as _LSTM
lstm_stats_width = _LSTM.stats_width

GATES = 4
G = tl.constexpr(4)
HH_SLOTS = tl.constexpr(8)    # per split and row: (sum, centred squares) of each gate's W_hh h
CELL_SLOTS = tl.constexpr(2)  # per split and row: (sum, centred squares) of c~, or the two
                              # backward sums of the cell norm

# Forward phases of the per-step driver (with layer norm; without it one phase does it all).
PHASE_HH_MOMENTS = tl.constexpr(0)
PHASE_CELL_MOMENTS = tl.constexpr(1)
PHASE_OUTPUT = tl.constexpr(2)
# Backward phases (without layer norm only the last two).
PHASE_CELL_SUMS = tl.constexpr(0)
PHASE_GATE_GRADS = tl.constexpr(1)
PHASE_HH_GRADS = tl.constexpr(2)
PHASE_HIDDEN_GRAD = tl.constexpr(3)


# ----------------------------------------------------------------------------- shared pieces

@triton.jit
def _statistics_writer(rows, row_ok, pc):
    """Rows whose statistics this program writes: every split merges the same values, split 0
    stores them.  (Row-shaped comparison: the interpreter mishandles scalar_bool & row_mask.)"""
    return row_ok & ((rows * 0 + pc) == 0)


@triton.jit
def _row_stat(stats_ptr, t, rows, ok, column, B, S: tl.constexpr):
    return tl.load(stats_ptr + (rows.to(tl.int64) + t * B) * S + column, mask=ok, other=0.0)


@triton.jit
def _store_row_stat(stats_ptr, t, rows, ok, column, value, B, S: tl.constexpr):
    tl.store(stats_ptr + (rows.to(tl.int64) + t * B) * S + column, value, mask=ok)


@triton.jit
def _hh_statistics(partials_ptr, rows, row_ok, H, GROUPS: tl.constexpr, SPLITS: tl.constexpr,
                   SPLITS_P2: tl.constexpr, BLOCK_H: tl.constexpr):
    """(mean_i, mean_f, mean_g, mean_o, rstd_i, rstd_f, rstd_g, rstd_o) of the gates'
    layer-norm groups."""
    mean_i, rstd_i = group_statistics(partials_ptr, rows, row_ok, 0, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, HH_SLOTS)
    mean_f, rstd_f = group_statistics(partials_ptr, rows, row_ok, 1, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, HH_SLOTS)
    mean_g, rstd_g = group_statistics(partials_ptr, rows, row_ok, 2, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, HH_SLOTS)
    mean_o, rstd_o = group_statistics(partials_ptr, rows, row_ok, 3, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, HH_SLOTS)
    return mean_i, mean_f, mean_g, mean_o, rstd_i, rstd_f, rstd_g, rstd_o


@triton.jit
def _saved_hh_statistics(stats_ptr, t, rows, ok, gate, B, GROUPS: tl.constexpr, S: tl.constexpr):
    """(mean, rstd) of gate ``gate``'s layer-norm group, as the forward saved them."""
    group = gate * GROUPS // 4
    return (_row_stat(stats_ptr, t, rows, ok, group, B, S),
            _row_stat(stats_ptr, t, rows, ok, GROUPS + group, B, S))


@triton.jit
def _cell_statistics(partials_ptr, rows, row_ok, H, SPLITS: tl.constexpr,
                     SPLITS_P2: tl.constexpr, BLOCK_H: tl.constexpr):
    """(mean, rstd) of c~ over H: the cell's moments sit in slots 0, 1 like a single gate's."""
    mean, var = gate_moments(partials_ptr, rows, row_ok, 0, H, SPLITS, SPLITS_P2, BLOCK_H,
                             CELL_SLOTS)
    return mean, 1.0 / tl.sqrt(var + EPS)


# ----------------------------------------------------------------------------------- forward

@triton.jit
def _forward_product(out_ptr, h0_ptr, rmask_ptr, w_ptr, w_i, w_f, w_g, w_o, previous_t, rows,
                     row_ok, active, first, units, unit_ok, B, H, HAS_RMASK: tl.constexpr,
                     HOIST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """W_hh (d ⊙ h_{t-1}) for the program's rows and units, one [rows, units] tile per gate.
    With HOIST the caller passes the four weight tiles (the whole reduction in one block);
    otherwise w_i..w_o are unused and W_hh is streamed in BLOCK_K chunks."""
    hh_i = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    hh_f = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    hh_g = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    hh_o = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = recurrent_input(out_ptr, h0_ptr, rmask_ptr, previous_t, rows, row_ok, active, first,
                            ks, k_ok, B, H, HAS_RMASK, DOT_DTYPE)
        hh_i = add_gate_product(hh_i, h, w_i, w_ptr, 0, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
        hh_f = add_gate_product(hh_f, h, w_f, w_ptr, 1, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
        hh_g = add_gate_product(hh_g, h, w_g, w_ptr, 2, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
        hh_o = add_gate_product(hh_o, h, w_o, w_ptr, 3, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
    return hh_i, hh_f, hh_g, hh_o


@triton.jit
def _preact(hh, mean, rstd, gate, gx_ptr, b_ptr, ln_ptr, t, rows, row_ok, units, unit_ok, B, H,
            HAS_BIAS: tl.constexpr, LAYER_NORM: tl.constexpr):
    """a = gx + (γ_hh ⊙ N(W_hh h) or W_hh h) + b_hh for one gate."""
    a = gate_tile(gx_ptr, t, gate, rows, row_ok, units, unit_ok, B, H, 4, False)
    if LAYER_NORM:
        gamma = tl.load(ln_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)
        a += gamma[None, :] * ((hh - mean[:, None]) * rstd[:, None])
    else:
        a += hh
    if HAS_BIAS:
        a += tl.load(b_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    return a


@triton.jit
def _forward_cell(a_i, a_f, a_g, cell_ptr, c0_ptr, seed, cand_threshold, candidate_p, t,
                  previous_t, rows, row_ok, active, first, units, unit_ok, B, H,
                  CANDIDATE: tl.constexpr):
    """(c_{t-1}, c~_t) = (c_{t-1}, σ(f) c_{t-1} + σ(i) d ⊙ tanh(g))."""
    c_prev = load_previous(cell_ptr, c0_ptr, previous_t, rows, row_ok, active, first, units,
                            unit_ok, B, H, False)
    scale = dropout_scale(seed, 2, step_mask_index(t, rows, units, B, H), cand_threshold,
                          candidate_p, CANDIDATE)
    return c_prev, sigmoid(a_f) * c_prev + sigmoid(a_i) * (tanh(a_g) * scale)


@triton.jit
def _store_gates(ptr, t, rows, row_ok, active, units, unit_ok, B, H, v_i, v_f, v_g, v_o):
    """Step t of a [T, B, 4H] tensor from the four gate tiles; finished rows get zeros."""
    live = active[:, None]
    store_gate_tile(ptr, t, 0, rows, row_ok, units, unit_ok, B, H, tl.where(live, v_i, 0.0), 4)
    store_gate_tile(ptr, t, 1, rows, row_ok, units, unit_ok, B, H, tl.where(live, v_f, 0.0), 4)
    store_gate_tile(ptr, t, 2, rows, row_ok, units, unit_ok, B, H, tl.where(live, v_g, 0.0), 4)
    store_gate_tile(ptr, t, 3, rows, row_ok, units, unit_ok, B, H, tl.where(live, v_o, 0.0), 4)


@triton.jit
def _store_hh_stats(stats_ptr, mean_i, mean_f, mean_g, mean_o, rstd_i, rstd_f, rstd_g, rstd_o,
                    t, rows, ok, active, B, GROUPS: tl.constexpr, S: tl.constexpr):
    """Columns [0, GROUPS) means, [GROUPS, 2·GROUPS) rstds (zero on finished rows)."""
    _store_row_stat(stats_ptr, t, rows, ok, 0, tl.where(active, mean_i, 0.0), B, S)
    _store_row_stat(stats_ptr, t, rows, ok, GROUPS, tl.where(active, rstd_i, 0.0), B, S)
    if GROUPS == 4:
        _store_row_stat(stats_ptr, t, rows, ok, 1, tl.where(active, mean_f, 0.0), B, S)
        _store_row_stat(stats_ptr, t, rows, ok, 2, tl.where(active, mean_g, 0.0), B, S)
        _store_row_stat(stats_ptr, t, rows, ok, 3, tl.where(active, mean_o, 0.0), B, S)
        _store_row_stat(stats_ptr, t, rows, ok, 5, tl.where(active, rstd_f, 0.0), B, S)
        _store_row_stat(stats_ptr, t, rows, ok, 6, tl.where(active, rstd_g, 0.0), B, S)
        _store_row_stat(stats_ptr, t, rows, ok, 7, tl.where(active, rstd_o, 0.0), B, S)


@triton.jit
def _forward_output(c_prev, c_new, a_o, out_ptr, h0_ptr, cell_ptr, h_n_ptr, c_n_ptr, stats_ptr,
                    cell_partials_ptr, ln_cell_w_ptr, ln_cell_b_ptr, seed, zc_threshold, zc_p,
                    zh_threshold, zh_p, t, previous_t, rows, row_ok, active, first, last, units,
                    unit_ok, pc, B, H, GROUPS: tl.constexpr, S: tl.constexpr,
                    LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
                    TRAINING: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    """h~ = σ(o) tanh(γ_c N(c~) + β_c or c~), zoneout of c and h, and every write of step t."""
    y = c_new
    if LAYER_NORM:
        mean_c, rstd_c = _cell_statistics(cell_partials_ptr, rows, row_ok, H, SPLITS, SPLITS_P2,
                                          BLOCK_H)
        gamma = tl.load(ln_cell_w_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)
        beta = tl.load(ln_cell_b_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)
        y = gamma[None, :] * ((c_new - mean_c[:, None]) * rstd_c[:, None]) + beta[None, :]
        stat_ok = _statistics_writer(rows, row_ok, pc)
        _store_row_stat(stats_ptr, t, rows, stat_ok, 2 * GROUPS, tl.where(active, mean_c, 0.0),
                        B, S)
        _store_row_stat(stats_ptr, t, rows, stat_ok, 2 * GROUPS + 1,
                        tl.where(active, rstd_c, 0.0), B, S)
    h_new = sigmoid(a_o) * tanh(y)
    index = step_mask_index(t, rows, units, B, H)
    keep_c = zoneout_weight(seed, 0, index, zc_threshold, zc_p, ZONE_C, TRAINING)
    keep_h = zoneout_weight(seed, 1, index, zh_threshold, zh_p, ZONE_H, TRAINING)
    h_prev = load_previous(out_ptr, h0_ptr, previous_t, rows, row_ok, active, first, units,
                            unit_ok, B, H, True)
    c_t = keep_c * c_prev + (1.0 - keep_c) * c_new
    h_t = (keep_h * h_prev + (1.0 - keep_h) * h_new).to(out_ptr.dtype.element_ty)
    live = active[:, None]
    step = (t * B).to(tl.int64) * H
    store_rows(out_ptr + step, rows, row_ok, units, unit_ok, H, tl.where(live, h_t, 0.0))
    store_rows(cell_ptr + step, rows, row_ok, units, unit_ok, H, tl.where(live, c_t, 0.0))
    store_rows(h_n_ptr, rows, last, units, unit_ok, H, h_t)
    store_rows(c_n_ptr, rows, last, units, unit_ok, H, c_t)


@triton.jit
def _forward_step(t, pc, rows, row_ok, units, unit_ok, w_i, w_f, w_g, w_o, syncs, counter_ptr,
                  gx_ptr, w_ptr, b_ptr, ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, h0_ptr, c0_ptr,
                  lengths_ptr, rmask_ptr, seed_ptr, out_ptr, h_n_ptr, c_n_ptr, preact_ptr,
                  cell_ptr, stats_ptr, hh_partials_ptr, cell_partials_ptr, B, H,
                  zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold, candidate_p,
                  PHASE: tl.constexpr, PERSISTENT: tl.constexpr, GROUPS: tl.constexpr,
                  S: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr,
                  LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
                  CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
                  HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                  DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One forward step.  PERSISTENT: all phases with barriers between them; otherwise the
    phases up to PHASE are recomputed and only PHASE's writes are made.  Returns the number of
    barriers passed so far."""
    active, first, last, previous_t = row_geometry(lengths_ptr, t, rows, row_ok, REVERSE)
    seed = tl.load(seed_ptr)
    hh_i, hh_f, hh_g, hh_o = _forward_product(
        out_ptr, h0_ptr, rmask_ptr, w_ptr, w_i, w_f, w_g, w_o, previous_t, rows, row_ok, active,
        first, units, unit_ok, B, H, HAS_RMASK, HOIST, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE,
        PRECISION)
    mean_i = tl.zeros([BLOCK_B], tl.float32)
    mean_f, mean_g, mean_o = mean_i, mean_i, mean_i
    rstd_i, rstd_f, rstd_g, rstd_o = mean_i, mean_i, mean_i, mean_i
    if LAYER_NORM:
        if PERSISTENT or PHASE == PHASE_HH_MOMENTS:
            valid = row_ok[:, None] & unit_ok[None, :]
            store_gate_moments(hh_i, valid, hh_partials_ptr, rows, row_ok, pc, 0, SPLITS, HH_SLOTS)
            store_gate_moments(hh_f, valid, hh_partials_ptr, rows, row_ok, pc, 1, SPLITS, HH_SLOTS)
            store_gate_moments(hh_g, valid, hh_partials_ptr, rows, row_ok, pc, 2, SPLITS, HH_SLOTS)
            store_gate_moments(hh_o, valid, hh_partials_ptr, rows, row_ok, pc, 3, SPLITS, HH_SLOTS)
        if PERSISTENT:
            syncs += 1
            sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
        mean_i, mean_f, mean_g, mean_o, rstd_i, rstd_f, rstd_g, rstd_o = _hh_statistics(
            hh_partials_ptr, rows, row_ok, H, GROUPS, SPLITS, SPLITS_P2, BLOCK_H)
    if PERSISTENT or PHASE >= PHASE_CELL_MOMENTS or not LAYER_NORM:
        a_i = _preact(hh_i, mean_i, rstd_i, 0, gx_ptr, b_ptr, ln_hh_ptr, t, rows, row_ok, units,
                      unit_ok, B, H, HAS_BIAS, LAYER_NORM)
        a_f = _preact(hh_f, mean_f, rstd_f, 1, gx_ptr, b_ptr, ln_hh_ptr, t, rows, row_ok, units,
                      unit_ok, B, H, HAS_BIAS, LAYER_NORM)
        a_g = _preact(hh_g, mean_g, rstd_g, 2, gx_ptr, b_ptr, ln_hh_ptr, t, rows, row_ok, units,
                      unit_ok, B, H, HAS_BIAS, LAYER_NORM)
        a_o = _preact(hh_o, mean_o, rstd_o, 3, gx_ptr, b_ptr, ln_hh_ptr, t, rows, row_ok, units,
                      unit_ok, B, H, HAS_BIAS, LAYER_NORM)
        c_prev, c_new = _forward_cell(a_i, a_f, a_g, cell_ptr, c0_ptr, seed, cand_threshold,
                                      candidate_p, t, previous_t, rows, row_ok, active, first,
                                      units, unit_ok, B, H, CANDIDATE)
        if PERSISTENT or PHASE == PHASE_CELL_MOMENTS or not LAYER_NORM:
            _store_gates(preact_ptr, t, rows, row_ok, active, units, unit_ok, B, H, a_i, a_f,
                         a_g, a_o)
        if LAYER_NORM:
            if PERSISTENT or PHASE == PHASE_CELL_MOMENTS:
                _store_hh_stats(stats_ptr, mean_i, mean_f, mean_g, mean_o, rstd_i, rstd_f,
                                rstd_g, rstd_o, t, rows, _statistics_writer(rows, row_ok, pc),
                                active, B, GROUPS, S)
                store_gate_moments(c_new, row_ok[:, None] & unit_ok[None, :], cell_partials_ptr,
                                   rows, row_ok, pc, 0, SPLITS, CELL_SLOTS)
            if PERSISTENT:
                syncs += 1
                sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
        if PERSISTENT or PHASE == PHASE_OUTPUT or not LAYER_NORM:
            _forward_output(c_prev, c_new, a_o, out_ptr, h0_ptr, cell_ptr, h_n_ptr, c_n_ptr,
                            stats_ptr, cell_partials_ptr, ln_cell_w_ptr, ln_cell_b_ptr, seed,
                            zc_threshold, zc_p, zh_threshold, zh_p, t, previous_t, rows, row_ok,
                            active, first, last, units, unit_ok, pc, B, H, GROUPS, S, LAYER_NORM,
                            ZONE_C, ZONE_H, TRAINING, SPLITS, SPLITS_P2, BLOCK_H)
    if PERSISTENT:
        syncs += 1
        sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
    return syncs


@triton.jit
def _hoisted_weights(w_ptr, units, unit_ok, H, HOIST: tl.constexpr, TRANSPOSED: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The program's i, f, g, o tiles of W_hh (see ``hoisted_weight_tile``)."""
    w_i = hoisted_weight_tile(w_ptr, 0, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    w_f = hoisted_weight_tile(w_ptr, 1, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    w_g = hoisted_weight_tile(w_ptr, 2, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    w_o = hoisted_weight_tile(w_ptr, 3, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    return w_i, w_f, w_g, w_o


@triton.jit
def _zero_finished_steps(ptr, steps, T, rows, row_ok, cols, col_ok, B, width,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Steps after a batch tile's longest sequence are skipped; their rows must still read 0."""
    for t in range(steps, T):
        store_rows(ptr + (t * B).to(tl.int64) * width, rows, row_ok, cols, col_ok, width,
                   tl.zeros([BLOCK_B, BLOCK_H], tl.float32))


@triton.jit
def _lstm_forward_persistent(
        gx_ptr, w_ptr, b_ptr, ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, h0_ptr, c0_ptr,
        lengths_ptr, rmask_ptr, seed_ptr, out_ptr, h_n_ptr, c_n_ptr, preact_ptr, cell_ptr,
        stats_ptr, hh_partials_ptr, cell_partials_ptr, counters_ptr, T, B, H,
        zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold, candidate_p,
        GROUPS: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr,
        LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
        CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
        HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    w_i, w_f, w_g, w_o = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, True, BLOCK_K, DOT_DTYPE)
    steps = tile_steps(lengths_ptr, rows, row_ok)
    syncs = 0
    for s in range(0, steps):
        syncs = _forward_step(
            time_of_step(s, steps, REVERSE), pc, rows, row_ok, units, unit_ok,
            w_i, w_f, w_g, w_o, syncs, counters_ptr + pb, gx_ptr, w_ptr, b_ptr, ln_hh_ptr,
            ln_cell_w_ptr, ln_cell_b_ptr, h0_ptr, c0_ptr, lengths_ptr, rmask_ptr, seed_ptr,
            out_ptr, h_n_ptr, c_n_ptr, preact_ptr, cell_ptr, stats_ptr, hh_partials_ptr,
            cell_partials_ptr, B, H, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold,
            candidate_p, 0, True, GROUPS, S, HAS_BIAS, HAS_RMASK, LAYER_NORM, ZONE_C, ZONE_H,
            CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS, SPLITS_P2, BLOCK_B, BLOCK_H, BLOCK_K,
            DOT_DTYPE, PRECISION)
    _zero_finished_steps(out_ptr, steps, T, rows, row_ok, units, unit_ok, B, H,
                         BLOCK_B, BLOCK_H)


@triton.jit(do_not_specialize=["t"])
def _lstm_forward_phase(
        gx_ptr, w_ptr, b_ptr, ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, h0_ptr, c0_ptr,
        lengths_ptr, rmask_ptr, seed_ptr, out_ptr, h_n_ptr, c_n_ptr, preact_ptr, cell_ptr,
        stats_ptr, hh_partials_ptr, cell_partials_ptr, counters_ptr, T, B, H,
        zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold, candidate_p, t,
        GROUPS: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr,
        LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
        CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
        HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, PHASE: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    w_i, w_f, w_g, w_o = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, True, BLOCK_K, DOT_DTYPE)
    _forward_step(
        t, pc, rows, row_ok, units, unit_ok, w_i, w_f, w_g, w_o, 0, counters_ptr + pb, gx_ptr,
        w_ptr, b_ptr, ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, h0_ptr, c0_ptr, lengths_ptr,
        rmask_ptr, seed_ptr, out_ptr, h_n_ptr, c_n_ptr, preact_ptr, cell_ptr, stats_ptr,
        hh_partials_ptr, cell_partials_ptr, B, H, zc_threshold, zc_p, zh_threshold, zh_p,
        cand_threshold, candidate_p, PHASE, False, GROUPS, S, HAS_BIAS, HAS_RMASK, LAYER_NORM,
        ZONE_C, ZONE_H, CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS, SPLITS_P2, BLOCK_B,
        BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)


# ---------------------------------------------------------------------------------- backward

@triton.jit
def _backward_cell(dh, dc, t, previous_t, rows, row_ok, active, first, units, unit_ok,
                   grad_out_ptr, preact_ptr, cell_ptr, c0_ptr, stats_ptr, ln_cell_w_ptr,
                   ln_cell_b_ptr, seed, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold,
                   candidate_p, B, H, GROUPS: tl.constexpr, S: tl.constexpr,
                   LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
                   CANDIDATE: tl.constexpr, TRAINING: tl.constexpr):
    """Step t's local backward from dh_t, dc_t (the carries) to the cell norm's output grad.

    Recomputes the gates and c~ from preact and c_{t-1}.  Returns dH (grad of h_t), the
    zoneout weights, the gate activations, c_{t-1}, N(c~) (c~ without layer norm), d ⊙ tanh(g)'s
    scale d, dN = γ_c ⊙ dy (dy without layer norm), dy and the grad of σ(o)."""
    ok = row_ok & active
    step = (t * B).to(tl.int64) * H
    d_h = dh + load_rows(grad_out_ptr + step, rows, ok, units, unit_ok, H, 0.0, False)
    i = sigmoid(gate_tile(preact_ptr, t, 0, rows, ok, units, unit_ok, B, H, 4, False))
    f = sigmoid(gate_tile(preact_ptr, t, 1, rows, ok, units, unit_ok, B, H, 4, False))
    tanh_g = tanh(gate_tile(preact_ptr, t, 2, rows, ok, units, unit_ok, B, H, 4, False))
    o = sigmoid(gate_tile(preact_ptr, t, 3, rows, ok, units, unit_ok, B, H, 4, False))
    index = step_mask_index(t, rows, units, B, H)
    scale = dropout_scale(seed, 2, index, cand_threshold, candidate_p, CANDIDATE)
    keep_c = zoneout_weight(seed, 0, index, zc_threshold, zc_p, ZONE_C, TRAINING)
    keep_h = zoneout_weight(seed, 1, index, zh_threshold, zh_p, ZONE_H, TRAINING)
    c_prev = load_previous(cell_ptr, c0_ptr, previous_t, rows, row_ok, active, first, units,
                            unit_ok, B, H, False)
    c_new = f * c_prev + i * (tanh_g * scale)
    if LAYER_NORM:
        mean_c = _row_stat(stats_ptr, t, rows, ok, 2 * GROUPS, B, S)
        rstd_c = _row_stat(stats_ptr, t, rows, ok, 2 * GROUPS + 1, B, S)
        gamma = tl.load(ln_cell_w_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
        beta = tl.load(ln_cell_b_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
        normalized = (c_new - mean_c[:, None]) * rstd_c[:, None]
        tanh_y = tanh(gamma * normalized + beta)
    else:
        gamma = 1.0
        normalized = c_new
        tanh_y = tanh(c_new)
    d_h_new = (1.0 - keep_h) * d_h
    dy = d_h_new * o * (1.0 - tanh_y * tanh_y)
    return (d_h, keep_h, keep_c, i, f, tanh_g, o, c_prev, normalized, scale, gamma * dy, dy,
            d_h_new * tanh_y)


@triton.jit
def _backward_gates(dc, d_normalized, normalized, rstd_c, sum_dn, sum_dnn, keep_c, i, f, tanh_g,
                    o, c_prev, scale, d_o, H, LAYER_NORM: tl.constexpr):
    """Through the cell norm (given the row sums of dN and dN ⊙ N over H) and the gates:
    returns d a_i, d a_f, d a_g, d a_o and dc_{t-1}."""
    if LAYER_NORM:
        d_c_new = rstd_c[:, None] * (d_normalized - sum_dn[:, None] / H
                                     - normalized * (sum_dnn[:, None] / H))
    else:
        d_c_new = d_normalized
    d_c_new += (1.0 - keep_c) * dc
    da_i = d_c_new * tanh_g * scale * i * (1.0 - i)
    da_f = d_c_new * c_prev * f * (1.0 - f)
    da_g = d_c_new * i * scale * (1.0 - tanh_g * tanh_g)
    da_o = d_o * o * (1.0 - o)
    return da_i, da_f, da_g, da_o, keep_c * dc + d_c_new * f


@triton.jit
def _hh_norm_local(da, gate, hh_ptr, ln_hh_ptr, stats_ptr, t, rows, ok, units, unit_ok, B, H,
                   GROUPS: tl.constexpr, S: tl.constexpr):
    """(N(W_hh h), γ_hh ⊙ da, rstd) of one gate, from the recomputed W_hh h and saved stats."""
    mean, rstd = _saved_hh_statistics(stats_ptr, t, rows, ok, gate, B, GROUPS, S)
    hh = gate_tile(hh_ptr, t, gate, rows, ok, units, unit_ok, B, H, 4, False)
    gamma = tl.load(ln_hh_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)
    return (hh - mean[:, None]) * rstd[:, None], da * gamma[None, :], rstd


@triton.jit
def _backward_product(dhh_ptr, w_ptr, w_i, w_f, w_g, w_o, t, rows, row_ok, units, unit_ok, B, H,
                      HOIST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """W_hhᵀ d_hh for the program's units: the sum over the four gate blocks of d_hh_g W_g."""
    acc = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        acc = add_backward_gate_product(acc, dhh_ptr, w_i, w_ptr, 0, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
        acc = add_backward_gate_product(acc, dhh_ptr, w_f, w_ptr, 1, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
        acc = add_backward_gate_product(acc, dhh_ptr, w_g, w_ptr, 2, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
        acc = add_backward_gate_product(acc, dhh_ptr, w_o, w_ptr, 3, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
    return acc


@triton.jit
def _store_gate_grads(da_i, da_f, da_g, da_o, dy, normalized, d_gx_ptr, d_bias_ptr,
                      d_ln_cell_w_ptr, d_ln_cell_b_ptr, t, pb, rows, row_ok, active, units,
                      unit_ok, B, H, HAS_BIAS: tl.constexpr, LAYER_NORM: tl.constexpr):
    """d_gx of step t, and this step's share of the b_hh, γ_c, β_c gradients."""
    _store_gates(d_gx_ptr, t, rows, row_ok, active, units, unit_ok, B, H, da_i, da_f, da_g, da_o)
    ok = row_ok & active
    if HAS_BIAS:
        row = d_bias_ptr + pb * 4 * H
        accumulate_columns(row, units, unit_ok, da_i, ok)
        accumulate_columns(row + H, units, unit_ok, da_f, ok)
        accumulate_columns(row + 2 * H, units, unit_ok, da_g, ok)
        accumulate_columns(row + 3 * H, units, unit_ok, da_o, ok)
    if LAYER_NORM:
        accumulate_columns(d_ln_cell_w_ptr + pb * H, units, unit_ok, dy * normalized, ok)
        accumulate_columns(d_ln_cell_b_ptr + pb * H, units, unit_ok, dy, ok)


@triton.jit
def _backward_step(t, pb, pc, rows, row_ok, units, unit_ok, w_i, w_f, w_g, w_o, dh, dc, syncs,
                   counter_ptr, grad_out_ptr, preact_ptr, cell_ptr, stats_ptr, hh_ptr, w_ptr,
                   ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, c0_ptr, lengths_ptr, rmask_ptr,
                   seed_ptr, d_gx_ptr, dhh_ptr, d_h0_ptr, d_c0_ptr, d_bias_ptr, d_ln_hh_ptr,
                   d_ln_cell_w_ptr, d_ln_cell_b_ptr, hh_partials_ptr, cell_partials_ptr, B, H,
                   zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold, candidate_p,
                   PHASE: tl.constexpr, PERSISTENT: tl.constexpr, GROUPS: tl.constexpr,
                   S: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr,
                   LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr, ZONE_H: tl.constexpr,
                   CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
                   HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One backward step from the carries (dh_t, dc_t) of the program's units to
    (dh_{t-1}, dc_{t-1}); finished rows keep their carries.  PERSISTENT / PHASE as in
    ``_forward_step``.  Returns (dh, dc, barriers passed)."""
    active, first, last, previous_t = row_geometry(lengths_ptr, t, rows, row_ok, REVERSE)
    ok = row_ok & active
    seed = tl.load(seed_ptr)
    (d_h, keep_h, keep_c, i, f, tanh_g, o, c_prev, normalized, scale, d_normalized, dy,
     d_o) = _backward_cell(dh, dc, t, previous_t, rows, row_ok, active, first, units, unit_ok,
                           grad_out_ptr, preact_ptr, cell_ptr, c0_ptr, stats_ptr, ln_cell_w_ptr,
                           ln_cell_b_ptr, seed, zc_threshold, zc_p, zh_threshold, zh_p,
                           cand_threshold, candidate_p, B, H, GROUPS, S, LAYER_NORM, ZONE_C,
                           ZONE_H, CANDIDATE, TRAINING)
    sum_dn = tl.zeros([BLOCK_B], tl.float32)
    sum_dnn = sum_dn
    rstd_c = sum_dn
    if LAYER_NORM:
        if PERSISTENT or PHASE == PHASE_CELL_SUMS:
            store_norm_sums(d_normalized, normalized, cell_partials_ptr, rows, row_ok, units,
                             unit_ok, pc, 0, SPLITS, CELL_SLOTS)
        if PERSISTENT:
            syncs += 1
            sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
        sum_dn = summed_partial(cell_partials_ptr, rows, row_ok, 0, SPLITS, SPLITS_P2, CELL_SLOTS)
        sum_dnn = summed_partial(cell_partials_ptr, rows, row_ok, 1, SPLITS, SPLITS_P2, CELL_SLOTS)
        rstd_c = _row_stat(stats_ptr, t, rows, ok, 2 * GROUPS + 1, B, S)
    new_dh = dh
    new_dc = dc
    if PERSISTENT or PHASE >= PHASE_GATE_GRADS:
        da_i, da_f, da_g, da_o, dc_prev = _backward_gates(
            dc, d_normalized, normalized, rstd_c, sum_dn, sum_dnn, keep_c, i, f, tanh_g, o,
            c_prev, scale, d_o, H, LAYER_NORM)
        new_dc = tl.where(active[:, None], dc_prev, dc)
        if PERSISTENT or PHASE == PHASE_GATE_GRADS:
            _store_gate_grads(da_i, da_f, da_g, da_o, dy, normalized, d_gx_ptr, d_bias_ptr,
                              d_ln_cell_w_ptr, d_ln_cell_b_ptr, t, pb, rows, row_ok, active,
                              units, unit_ok, B, H, HAS_BIAS, LAYER_NORM)
            store_rows(d_c0_ptr, rows, first, units, unit_ok, H, dc_prev)
        if LAYER_NORM:
            n_i, dn_i, rstd_i = _hh_norm_local(da_i, 0, hh_ptr, ln_hh_ptr, stats_ptr, t, rows, ok,
                                               units, unit_ok, B, H, GROUPS, S)
            n_f, dn_f, rstd_f = _hh_norm_local(da_f, 1, hh_ptr, ln_hh_ptr, stats_ptr, t, rows, ok,
                                               units, unit_ok, B, H, GROUPS, S)
            n_g, dn_g, rstd_g = _hh_norm_local(da_g, 2, hh_ptr, ln_hh_ptr, stats_ptr, t, rows, ok,
                                               units, unit_ok, B, H, GROUPS, S)
            n_o, dn_o, rstd_o = _hh_norm_local(da_o, 3, hh_ptr, ln_hh_ptr, stats_ptr, t, rows, ok,
                                               units, unit_ok, B, H, GROUPS, S)
            if PERSISTENT or PHASE == PHASE_GATE_GRADS:
                row = d_ln_hh_ptr + pb * 4 * H
                accumulate_columns(row, units, unit_ok, da_i * n_i, ok)
                accumulate_columns(row + H, units, unit_ok, da_f * n_f, ok)
                accumulate_columns(row + 2 * H, units, unit_ok, da_g * n_g, ok)
                accumulate_columns(row + 3 * H, units, unit_ok, da_o * n_o, ok)
                store_norm_sums(dn_i, n_i, hh_partials_ptr, rows, row_ok, units, unit_ok, pc, 0,
                                 SPLITS, HH_SLOTS)
                store_norm_sums(dn_f, n_f, hh_partials_ptr, rows, row_ok, units, unit_ok, pc, 2,
                                 SPLITS, HH_SLOTS)
                store_norm_sums(dn_g, n_g, hh_partials_ptr, rows, row_ok, units, unit_ok, pc, 4,
                                 SPLITS, HH_SLOTS)
                store_norm_sums(dn_o, n_o, hh_partials_ptr, rows, row_ok, units, unit_ok, pc, 6,
                                 SPLITS, HH_SLOTS)
            if PERSISTENT:
                syncs += 1
                sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
            if PERSISTENT or PHASE == PHASE_HH_GRADS:
                _store_gates(
                    dhh_ptr, t, rows, row_ok, active, units, unit_ok, B, H,
                    norm_input_grad(dn_i, n_i, rstd_i, 0, hh_partials_ptr, rows, row_ok, H, G,
                                   GROUPS, SPLITS, SPLITS_P2, HH_SLOTS),
                    norm_input_grad(dn_f, n_f, rstd_f, 1, hh_partials_ptr, rows, row_ok, H, G,
                                   GROUPS, SPLITS, SPLITS_P2, HH_SLOTS),
                    norm_input_grad(dn_g, n_g, rstd_g, 2, hh_partials_ptr, rows, row_ok, H, G,
                                   GROUPS, SPLITS, SPLITS_P2, HH_SLOTS),
                    norm_input_grad(dn_o, n_o, rstd_o, 3, hh_partials_ptr, rows, row_ok, H, G,
                                   GROUPS, SPLITS, SPLITS_P2, HH_SLOTS))
        elif PERSISTENT or PHASE == PHASE_GATE_GRADS:
            # Without layer norm the gradient of W_hh h is d preact itself.
            _store_gates(dhh_ptr, t, rows, row_ok, active, units, unit_ok, B, H, da_i, da_f, da_g,
                         da_o)
    if PERSISTENT:
        syncs += 1
        sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
    if PERSISTENT or PHASE == PHASE_HIDDEN_GRAD:
        d_input = _backward_product(dhh_ptr, w_ptr, w_i, w_f, w_g, w_o, t, rows, row_ok, units,
                                    unit_ok, B, H, HOIST, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE,
                                    PRECISION)
        if HAS_RMASK:
            d_input = d_input * load_rows(rmask_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
        dh_prev = keep_h * d_h + d_input
        store_rows(d_h0_ptr, rows, first, units, unit_ok, H, dh_prev)
        new_dh = tl.where(active[:, None], dh_prev, dh)
    return new_dh, new_dc, syncs


@triton.jit
def _lstm_backward_persistent(
        grad_out_ptr, grad_h_n_ptr, grad_c_n_ptr, preact_ptr, cell_ptr, stats_ptr, hh_ptr, w_ptr,
        ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, c0_ptr, lengths_ptr, rmask_ptr, seed_ptr,
        d_gx_ptr, dhh_ptr, d_h0_ptr, d_c0_ptr, d_bias_ptr, d_ln_hh_ptr, d_ln_cell_w_ptr,
        d_ln_cell_b_ptr, hh_partials_ptr, cell_partials_ptr, counters_ptr, carry_h_ptr,
        carry_c_ptr, T, B, H, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold,
        candidate_p, GROUPS: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr, ZONE_C: tl.constexpr,
        ZONE_H: tl.constexpr, CANDIDATE: tl.constexpr, TRAINING: tl.constexpr,
        REVERSE: tl.constexpr, HOIST: tl.constexpr, SPLITS: tl.constexpr,
        SPLITS_P2: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    w_i, w_f, w_g, w_o = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, False, BLOCK_K,
                                          DOT_DTYPE)
    steps = tile_steps(lengths_ptr, rows, row_ok)
    dh = load_rows(grad_h_n_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
    dc = load_rows(grad_c_n_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
    syncs = 0
    for s in range(0, steps):
        # Backward visits the steps in the opposite order to the forward direction.
        dh, dc, syncs = _backward_step(
            time_of_step(s, steps, not REVERSE), pb, pc, rows, row_ok, units, unit_ok,
            w_i, w_f, w_g, w_o, dh, dc, syncs, counters_ptr + pb, grad_out_ptr, preact_ptr,
            cell_ptr, stats_ptr, hh_ptr, w_ptr, ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, c0_ptr,
            lengths_ptr, rmask_ptr, seed_ptr, d_gx_ptr, dhh_ptr, d_h0_ptr, d_c0_ptr, d_bias_ptr,
            d_ln_hh_ptr, d_ln_cell_w_ptr, d_ln_cell_b_ptr, hh_partials_ptr, cell_partials_ptr,
            B, H, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold, candidate_p, 0, True,
            GROUPS, S, HAS_BIAS, HAS_RMASK, LAYER_NORM, ZONE_C, ZONE_H, CANDIDATE, TRAINING,
            REVERSE, HOIST, SPLITS, SPLITS_P2, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)
    for gate in tl.static_range(4):
        _zero_finished_steps(d_gx_ptr, steps, T, rows, row_ok, gate * H + units, unit_ok, B,
                             4 * H, BLOCK_B, BLOCK_H)


@triton.jit(do_not_specialize=["t", "carry_in"])  # 0 / 1 alternate: one compile
def _lstm_backward_phase(
        grad_out_ptr, grad_h_n_ptr, grad_c_n_ptr, preact_ptr, cell_ptr, stats_ptr, hh_ptr, w_ptr,
        ln_hh_ptr, ln_cell_w_ptr, ln_cell_b_ptr, c0_ptr, lengths_ptr, rmask_ptr, seed_ptr,
        d_gx_ptr, dhh_ptr, d_h0_ptr, d_c0_ptr, d_bias_ptr, d_ln_hh_ptr, d_ln_cell_w_ptr,
        d_ln_cell_b_ptr, hh_partials_ptr, cell_partials_ptr, counters_ptr, carry_h_ptr,
        carry_c_ptr, T, B, H, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold,
        candidate_p, t, carry_in, GROUPS: tl.constexpr, S: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr,
        ZONE_C: tl.constexpr, ZONE_H: tl.constexpr, CANDIDATE: tl.constexpr,
        TRAINING: tl.constexpr, REVERSE: tl.constexpr, HOIST: tl.constexpr,
        SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr, BLOCK_B: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr, PHASE: tl.constexpr):
    """One phase of one step.  The carries live in [2, B, H] float32 buffers: read from slot
    ``carry_in``, written to the other, so that later phases of the step still read dh_t, dc_t."""
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    w_i, w_f, w_g, w_o = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, False, BLOCK_K,
                                          DOT_DTYPE)
    slot_in = carry_in * B * H
    slot_out = (1 - carry_in) * B * H
    dh = load_rows(carry_h_ptr + slot_in, rows, row_ok, units, unit_ok, H, 0.0, False)
    dc = load_rows(carry_c_ptr + slot_in, rows, row_ok, units, unit_ok, H, 0.0, False)
    dh, dc, syncs = _backward_step(
        t, pb, pc, rows, row_ok, units, unit_ok, w_i, w_f, w_g, w_o, dh, dc, 0, counters_ptr + pb,
        grad_out_ptr, preact_ptr, cell_ptr, stats_ptr, hh_ptr, w_ptr, ln_hh_ptr, ln_cell_w_ptr,
        ln_cell_b_ptr, c0_ptr, lengths_ptr, rmask_ptr, seed_ptr, d_gx_ptr, dhh_ptr, d_h0_ptr,
        d_c0_ptr, d_bias_ptr, d_ln_hh_ptr, d_ln_cell_w_ptr, d_ln_cell_b_ptr, hh_partials_ptr,
        cell_partials_ptr, B, H, zc_threshold, zc_p, zh_threshold, zh_p, cand_threshold,
        candidate_p, PHASE, False, GROUPS, S, HAS_BIAS, HAS_RMASK, LAYER_NORM, ZONE_C, ZONE_H,
        CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS, SPLITS_P2, BLOCK_B, BLOCK_H, BLOCK_K,
        DOT_DTYPE, PRECISION)
    if PHASE == PHASE_GATE_GRADS:
        store_rows(carry_c_ptr + slot_out, rows, row_ok, units, unit_ok, H, dc)
    if PHASE == PHASE_HIDDEN_GRAD:
        store_rows(carry_h_ptr + slot_out, rows, row_ok, units, unit_ok, H, dh)


# ------------------------------------------------------------------------------------- host

def _contiguous(*tensors):
    return [None if x is None else x.contiguous() for x in tensors]


def _options(w_hh, b_hh, ln_hh_weight, recurrent_mask, lengths, steps, batch, ln_groups,
             zoneout_cell, zoneout_hidden, candidate_dropout, training, reverse, tiling):
    """Launch arguments common to every LSTM kernel of a call: the optional inputs' pointers,
    the workspaces, the mask scalars and the constexpr options."""
    hidden, device = w_hh.shape[1], w_hh.device
    splits = tiling.splits(hidden)
    layer_norm = ln_hh_weight is not None
    return dict(
        w_ptr=w_hh, ln_hh_ptr=present_or(ln_hh_weight, w_hh),
        lengths_ptr=lengths_or_full(lengths, steps, batch, device),
        rmask_ptr=present_or(recurrent_mask, w_hh),
        hh_partials_ptr=exchange_buffer(batch, splits, 8, device),
        cell_partials_ptr=exchange_buffer(batch, splits, 2, device),
        counters_ptr=barrier_counters(tiling, batch, device), T=steps, B=batch, H=hidden,
        zc_threshold=M.threshold(zoneout_cell), zc_p=float(zoneout_cell),
        zh_threshold=M.threshold(zoneout_hidden), zh_p=float(zoneout_hidden),
        cand_threshold=M.threshold(candidate_dropout), candidate_p=float(candidate_dropout),
        S=lstm_stats_width(layer_norm, ln_groups), HAS_BIAS=b_hh is not None,
        ZONE_C=zoneout_cell > 0, ZONE_H=zoneout_hidden > 0,
        **launch_options(tiling, hidden, w_hh.dtype, device, ln_groups, layer_norm,
                         recurrent_mask, candidate_dropout, training, reverse))


def lstm_forward(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
                 recurrent_mask, seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout,
                 training, reverse):
    """-> (out, h_n, c_n, preact, cell, stats) of ``fastrnn::lstm_forward``."""
    (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0,
     recurrent_mask) = _contiguous(gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0,
                                   c0, recurrent_mask)
    steps, batch = gx.shape[0], gx.shape[1]
    hidden = w_hh.shape[1]
    dtype, device = gx.dtype, gx.device
    layer_norm = ln_hh_weight is not None
    width = lstm_stats_width(layer_norm, ln_groups)
    out = new_output(steps, batch, hidden, dtype=dtype, device=device)
    h_n = new_output(batch, hidden, dtype=dtype, device=device)
    c_n = new_output(batch, hidden, dtype=dtype, device=device)
    preact = new_output(steps, batch, GATES * hidden, dtype=dtype, device=device)
    cell = new_output(steps, batch, hidden, dtype=torch.float32, device=device)
    stats = new_output(steps, batch, width, dtype=torch.float32, device=device)
    if batch == 0:
        return out, h_n, c_n, preact, cell, stats
    tiling = tiling_for(batch, hidden, GATES, dtype, device)
    args = dict(
        gx_ptr=gx, b_ptr=present_or(b_hh, w_hh), ln_cell_w_ptr=present_or(ln_cell_weight, w_hh),
        ln_cell_b_ptr=present_or(ln_cell_bias, w_hh), h0_ptr=h0, c0_ptr=c0, seed_ptr=seed,
        out_ptr=out, h_n_ptr=h_n, c_n_ptr=c_n, preact_ptr=preact, cell_ptr=cell,
        stats_ptr=stats if layer_norm else w_hh,
        **_options(w_hh, b_hh, ln_hh_weight, recurrent_mask, lengths, steps, batch, ln_groups,
                   zoneout_cell, zoneout_hidden, candidate_dropout, training, reverse, tiling))
    grid = (tiling.batch_tiles(batch), tiling.splits(hidden))
    if tiling.persistent:
        _lstm_forward_persistent[grid](**args, **cooperative_launch(grid[1]))
    else:
        phases = ((PHASE_HH_MOMENTS, PHASE_CELL_MOMENTS, PHASE_OUTPUT) if layer_norm
                  else (PHASE_OUTPUT,))
        for t in step_order(steps, reverse):
            for phase in phases:
                _lstm_forward_phase[grid](t=t, PHASE=phase, **args)
    return out, h_n, c_n, preact, cell, stats


def lstm_backward(grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh,
                  ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths, recurrent_mask,
                  seed, ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout, training,
                  reverse):
    """-> gradients of (gx, w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0)."""
    (grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh, ln_hh_weight,
     ln_cell_weight, ln_cell_bias, h0, c0, recurrent_mask) = _contiguous(
        grad_out, grad_h_n, grad_c_n, out, preact, cell, stats, w_hh, b_hh, ln_hh_weight,
        ln_cell_weight, ln_cell_bias, h0, c0, recurrent_mask)
    steps, batch, hidden = out.shape
    dtype, device = out.dtype, out.device
    layer_norm = ln_hh_weight is not None
    d_gx = new_output(steps, batch, GATES * hidden, dtype=dtype, device=device)
    d_h0 = new_output(batch, hidden, dtype=dtype, device=device)
    d_c0 = new_output(batch, hidden, dtype=dtype, device=device)
    tiling = tiling_for(max(batch, 1), hidden, GATES, dtype, device)
    batch_tiles = tiling.batch_tiles(batch)
    scratch = dict(dtype=torch.float32, device=device)
    d_bias = torch.zeros(batch_tiles, GATES * hidden, **scratch)
    d_ln_hh = torch.zeros(batch_tiles, GATES * hidden, **scratch)
    d_ln_cell_w = torch.zeros(batch_tiles, hidden, **scratch)
    d_ln_cell_b = torch.zeros(batch_tiles, hidden, **scratch)
    # W_hh's input at every step; the last dimension of d_hh [T, B, 4H] pairs with it in d_w_hh.
    h_in = recurrent_inputs(out, h0, lengths, recurrent_mask, reverse)
    dhh = torch.zeros(steps, batch, GATES * hidden, **scratch)
    if batch > 0:
        hh = torch.matmul(h_in.float(), w_hh.float().t()) if layer_norm else None
        carry_h = torch.stack([grad_h_n.float(), torch.zeros_like(grad_h_n, dtype=torch.float32)])
        carry_c = torch.stack([grad_c_n.float(), torch.zeros_like(grad_c_n, dtype=torch.float32)])
        args = dict(
            grad_out_ptr=grad_out, grad_h_n_ptr=grad_h_n, grad_c_n_ptr=grad_c_n,
            preact_ptr=preact, cell_ptr=cell, stats_ptr=stats if layer_norm else w_hh,
            hh_ptr=present_or(hh, w_hh), ln_cell_w_ptr=present_or(ln_cell_weight, w_hh),
            ln_cell_b_ptr=present_or(ln_cell_bias, w_hh), c0_ptr=c0, seed_ptr=seed,
            d_gx_ptr=d_gx, dhh_ptr=dhh, d_h0_ptr=d_h0, d_c0_ptr=d_c0, d_bias_ptr=d_bias,
            d_ln_hh_ptr=d_ln_hh, d_ln_cell_w_ptr=d_ln_cell_w, d_ln_cell_b_ptr=d_ln_cell_b,
            carry_h_ptr=carry_h, carry_c_ptr=carry_c,
            **_options(w_hh, b_hh, ln_hh_weight, recurrent_mask, lengths, steps, batch,
                       ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout, training,
                       reverse, tiling))
        grid = (batch_tiles, tiling.splits(hidden))
        if tiling.persistent:
            _lstm_backward_persistent[grid](**args, **cooperative_launch(grid[1]))
        else:
            phases = ((PHASE_CELL_SUMS, PHASE_GATE_GRADS, PHASE_HH_GRADS, PHASE_HIDDEN_GRAD)
                      if layer_norm else (PHASE_GATE_GRADS, PHASE_HIDDEN_GRAD))
            for position, t in enumerate(step_order(steps, not reverse)):
                for phase in phases:
                    _lstm_backward_phase[grid](t=t, carry_in=position % 2, PHASE=phase, **args)
    d_w_hh = recurrent_weight_grad(dhh, h_in, w_hh)

    def summed(partials, present):
        return partials.sum(0).to(w_hh.dtype) if present else absent_gradient(w_hh)

    return (d_gx, d_w_hh, summed(d_bias, b_hh is not None), summed(d_ln_hh, layer_norm),
            summed(d_ln_cell_w, layer_norm), summed(d_ln_cell_b, layer_norm), d_h0, d_c0)
