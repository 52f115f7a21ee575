"""Fused GRU / layer-norm GRU recurrence in Triton: ``fastrnn::gru_forward`` / ``gru_backward``.

One layer and direction over all T steps (docs/ops.md is the contract, ``fastrnn.reference
.gru_step`` the math).  The work of a step is split over a grid (batch tiles, column splits): a
program owns ``BLOCK_B`` rows and ``BLOCK_H`` hidden units with all three gates (r, z, n) of
them, so everything after the recurrent product is local to it.  The programs of a batch tile
exchange through global memory: h_{t-1} is read back from ``out`` (or h0 on a row's first
step), layer-norm partial moments go through a small workspace, and in backward the gradient
w.r.t. the recurrent product (``draw``) goes through a [T, B, 3H] buffer that also feeds the
d_w_hh GEMM afterwards.

Each step is a few ``@triton.jit`` phase functions, one per stretch between two exchanges:

    forward:  _fwd_phase_product  -> [moments] ->  _fwd_phase_finish  -> [h]
    backward: _bwd_phase_gates -> [moments] -> _bwd_phase_norm -> [draw] -> _bwd_phase_product

They are called by two drivers that compute the same thing:

* a persistent kernel: one launch, the time loop inside, ``tile_sync`` (a grid barrier when
  there are several column splits) between phases.  It needs the whole grid resident on the
  GPU; with one column split it has no cross-program barrier and runs under TRITON_INTERPRET.
* a launch-per-step driver: one launch per phase and step.  The interpreter (where programs run
  one after another, so a spin barrier never returns) and grids too large to be co-resident use
  it.

A batch tile runs only to its longest sequence; rows past their end are masked (their ``out``
is zero, their carried state and gradient pass through unchanged).  Statistics and gate math
are float32; h, the saved tensors and the recurrent-product operands are in the input dtype.
Float32 dot products use TF32 iff ``torch.backends.cuda.matmul.allow_tf32`` is set.
Zoneout and candidate-dropout masks are regenerated from the seed (``mask_hit``) in forward and
backward; nothing per (t, b, j) is stored beyond preact, hidden_n and the statistics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrnn import masks as M
from fastrnn.backends.fused import absent_gradient, recurrent_inputs, recurrent_weight_grad
from fastrnn.kernels.common import (
    add_backward_gate_product, add_gate_product, barrier_counters, cooperative_launch,
    dropout_scale, exchange_buffer, gate_tile, group_statistics, hoisted_weight_tile,
    launch_options, lengths_or_full, load_previous, load_rows, new_output, norm_input_grad,
    present_or, program_tile, recurrent_input, row_geometry, sigmoid, step_mask_index, step_order,
    store_gate_moments, store_gate_tile, store_norm_sums, store_rows, sync_tile, tanh, tile_steps,
    tiling_for, time_of_step, zoneout_weight)
from fastrnn.cells import GRU as _GRU
gru_stats_width = _GRU.stats_width

GATES = 3
G = tl.constexpr(3)
# Per split and row, two values per gate: forward (sum, centred squares) of W_hh h, backward
# (Σ dx̂, Σ dx̂ ⊙ x̂) of the layer norm's input gradient.
SLOTS = tl.constexpr(6)
ZONEOUT_KIND = tl.constexpr(M.ZONEOUT_HIDDEN)
CANDIDATE_KIND = tl.constexpr(M.CANDIDATE_DROPOUT)

# Phases of the per-step drivers (the persistent kernels run them all, with barriers between).
PHASE_MOMENTS = tl.constexpr(0)   # forward with layer norm: publish the moments of W_hh h
PHASE_OUTPUT = tl.constexpr(1)    # forward: gates and outputs (the only phase without layer norm)
PHASE_GATES = tl.constexpr(0)     # backward: d_gx, and the layer-norm sums (or d_hh without LN)
PHASE_NORM = tl.constexpr(1)      # backward with layer norm: d_hh through the norm
PHASE_PRODUCT = tl.constexpr(2)   # backward: dh_{t-1}


# ----------------------------------------------------------------------------- shared pieces

@triton.jit
def _hoisted_weights(w_ptr, units, unit_ok, H, HOIST: tl.constexpr, TRANSPOSED: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The program's r, z, n tiles of W_hh (see ``hoisted_weight_tile``)."""
    w_r = hoisted_weight_tile(w_ptr, 0, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    w_z = hoisted_weight_tile(w_ptr, 1, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    w_n = hoisted_weight_tile(w_ptr, 2, units, unit_ok, H, HOIST, TRANSPOSED, BLOCK_K, DOT_DTYPE)
    return w_r, w_z, w_n


# ----------------------------------------------------------------------------------- forward

@triton.jit
def _forward_product(out_ptr, h0_ptr, rmask_ptr, w_ptr, w_r, w_z, w_n, previous_t, rows, row_ok,
                     active, first, units, unit_ok, B, H, HAS_RMASK: tl.constexpr,
                     HOIST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """W_hh (d ⊙ h_{t-1}) for the program's rows and units, one float32 tile per gate r, z, n.
    With HOIST the caller passes the weight tiles; otherwise W_hh is streamed in BLOCK_K chunks."""
    hh_r = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    hh_z = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    hh_n = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        h = recurrent_input(out_ptr, h0_ptr, rmask_ptr, previous_t, rows, row_ok, active, first,
                            ks, k_ok, B, H, HAS_RMASK, DOT_DTYPE)
        hh_r = add_gate_product(hh_r, h, w_r, w_ptr, 0, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
        hh_z = add_gate_product(hh_z, h, w_z, w_ptr, 1, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
        hh_n = add_gate_product(hh_n, h, w_n, w_ptr, 2, ks, k_ok, units, unit_ok, H, HOIST, True,
                                DOT_DTYPE, PRECISION)
    return hh_r, hh_z, hh_n


@triton.jit
def _store_hh_moments(hh_r, hh_z, hh_n, partials_ptr, rows, row_ok, units, unit_ok, pc,
                      SPLITS: tl.constexpr):
    valid = row_ok[:, None] & unit_ok[None, :]
    store_gate_moments(hh_r, valid, partials_ptr, rows, row_ok, pc, 0, SPLITS, SLOTS)
    store_gate_moments(hh_z, valid, partials_ptr, rows, row_ok, pc, 1, SPLITS, SLOTS)
    store_gate_moments(hh_n, valid, partials_ptr, rows, row_ok, pc, 2, SPLITS, SLOTS)


@triton.jit
def _hh_statistics(partials_ptr, rows, row_ok, H, GROUPS: tl.constexpr, SPLITS: tl.constexpr,
                   SPLITS_P2: tl.constexpr, BLOCK_H: tl.constexpr):
    """(mean_r, mean_z, mean_n, rstd_r, rstd_z, rstd_n) of the gates' layer-norm groups."""
    mean_r, rstd_r = group_statistics(partials_ptr, rows, row_ok, 0, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, SLOTS)
    mean_z, rstd_z = group_statistics(partials_ptr, rows, row_ok, 1, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, SLOTS)
    mean_n, rstd_n = group_statistics(partials_ptr, rows, row_ok, 2, H, G, GROUPS, SPLITS,
                                      SPLITS_P2, BLOCK_H, SLOTS)
    return mean_r, mean_z, mean_n, rstd_r, rstd_z, rstd_n


@triton.jit
def _store_hh_stats(stats_ptr, mean_r, mean_z, mean_n, rstd_r, rstd_z, rstd_n, t, rows, ok, B,
                    GROUPS: tl.constexpr):
    """stats[t, b] = (mean per group, then rstd per group)."""
    row = stats_ptr + (rows.to(tl.int64) + t * B) * (2 * GROUPS)
    tl.store(row, mean_r, mask=ok)
    tl.store(row + GROUPS, rstd_r, mask=ok)
    if GROUPS == 3:
        tl.store(row + 1, mean_z, mask=ok)
        tl.store(row + 2, mean_n, mask=ok)
        tl.store(row + 4, rstd_z, mask=ok)
        tl.store(row + 5, rstd_n, mask=ok)


@triton.jit
def _recurrent_term(hh, mean, rstd, gate, b_ptr, ln_hh_ptr, units, unit_ok, H,
                    HAS_BIAS: tl.constexpr, LAYER_NORM: tl.constexpr):
    """γ_hh ⊙ N(W_hh h) + b_hh (or W_hh h + b_hh) for one gate."""
    if LAYER_NORM:
        gamma = tl.load(ln_hh_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)
        hh = (hh - mean[:, None]) * rstd[:, None] * gamma[None, :]
    if HAS_BIAS:
        hh += tl.load(b_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)[None, :]
    return hh


@triton.jit
def _forward_output(hh_r, hh_z, hh_n, gx_ptr, b_ptr, ln_hh_ptr, h0_ptr, out_ptr, h_n_ptr,
                    preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, seed, z_threshold, z_p,
                    cand_threshold, cand_p, t, previous_t, rows, row_ok, active, first, last,
                    units, unit_ok, pc, B, H, GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    LAYER_NORM: tl.constexpr, ZONEOUT: tl.constexpr, CANDIDATE: tl.constexpr,
                    TRAINING: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    """Layer norm, biases, gates and zoneout of step t; writes out, h_n, preact, hidden_n, stats."""
    mean_r = tl.zeros(rows.shape, tl.float32)
    mean_z, mean_n, rstd_r, rstd_z, rstd_n = mean_r, mean_r, mean_r, mean_r, mean_r
    if LAYER_NORM:
        mean_r, mean_z, mean_n, rstd_r, rstd_z, rstd_n = _hh_statistics(
            partials_ptr, rows, row_ok, H, GROUPS, SPLITS, SPLITS_P2, BLOCK_H)
        # One split writes the shared statistics.  (The comparison is made on a tensor: the
        # interpreter cannot combine a scalar boolean into a store mask.)
        first_split = (tl.zeros_like(rows) + pc) == 0
        _store_hh_stats(stats_ptr, mean_r, mean_z, mean_n, rstd_r, rstd_z, rstd_n, t, rows,
                        row_ok & active & first_split, B, GROUPS)
    hh_r = _recurrent_term(hh_r, mean_r, rstd_r, 0, b_ptr, ln_hh_ptr, units, unit_ok, H, HAS_BIAS,
                           LAYER_NORM)
    hh_z = _recurrent_term(hh_z, mean_z, rstd_z, 1, b_ptr, ln_hh_ptr, units, unit_ok, H, HAS_BIAS,
                           LAYER_NORM)
    hh_n = _recurrent_term(hh_n, mean_n, rstd_n, 2, b_ptr, ln_hh_ptr, units, unit_ok, H, HAS_BIAS,
                           LAYER_NORM)
    a_r = gate_tile(gx_ptr, t, 0, rows, row_ok, units, unit_ok, B, H, G, False) + hh_r
    a_z = gate_tile(gx_ptr, t, 1, rows, row_ok, units, unit_ok, B, H, G, False) + hh_z
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    a_n = gate_tile(gx_ptr, t, 2, rows, row_ok, units, unit_ok, B, H, G, False) + r * hh_n
    index = step_mask_index(t, rows, units, B, H)
    n = tanh(a_n) * dropout_scale(seed, CANDIDATE_KIND, index, cand_threshold, cand_p, CANDIDATE)
    h_prev = load_previous(out_ptr, h0_ptr, previous_t, rows, row_ok, active, first, units,
                           unit_ok, B, H, True)
    keep = zoneout_weight(seed, ZONEOUT_KIND, index, z_threshold, z_p, ZONEOUT, TRAINING)
    h = keep * h_prev + (1.0 - keep) * ((1.0 - z) * n + z * h_prev)
    live = active[:, None]
    step = (t * B).to(tl.int64)
    store_rows(out_ptr + step * H, rows, row_ok, units, unit_ok, H, tl.where(live, h, 0.0))
    store_rows(h_n_ptr, rows, row_ok & last, units, unit_ok, H, h)
    store_gate_tile(preact_ptr, t, 0, rows, row_ok, units, unit_ok, B, H, tl.where(live, a_r, 0.0),
                    G)
    store_gate_tile(preact_ptr, t, 1, rows, row_ok, units, unit_ok, B, H, tl.where(live, a_z, 0.0),
                    G)
    store_gate_tile(preact_ptr, t, 2, rows, row_ok, units, unit_ok, B, H, tl.where(live, a_n, 0.0),
                    G)
    store_rows(hidden_n_ptr + step * H, rows, row_ok, units, unit_ok, H, tl.where(live, hh_n, 0.0))


@triton.jit
def _forward_step(t, pc, rows, row_ok, units, unit_ok, w_r, w_z, w_n, syncs, counter_ptr,
                  gx_ptr, w_ptr, b_ptr, ln_hh_ptr, h0_ptr, lengths_ptr, rmask_ptr, seed_ptr,
                  out_ptr, h_n_ptr, preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, B, H,
                  z_threshold, z_p, cand_threshold, cand_p, PHASE: tl.constexpr,
                  PERSISTENT: tl.constexpr, GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr, ZONEOUT: tl.constexpr,
                  CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
                  HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                  DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One step: all phases with barriers (PERSISTENT), or phase PHASE alone.  A later phase
    recomputes the product instead of keeping it in memory between launches."""
    active, first, last, previous_t = row_geometry(lengths_ptr, t, rows, row_ok, REVERSE)
    hh_r, hh_z, hh_n = _forward_product(
        out_ptr, h0_ptr, rmask_ptr, w_ptr, w_r, w_z, w_n, previous_t, rows, row_ok, active, first,
        units, unit_ok, B, H, HAS_RMASK, HOIST, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)
    if LAYER_NORM:
        if PERSISTENT or PHASE == PHASE_MOMENTS:
            _store_hh_moments(hh_r, hh_z, hh_n, partials_ptr, rows, row_ok, units, unit_ok, pc,
                              SPLITS)
        if PERSISTENT:
            syncs += 1
            sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
    if PERSISTENT or PHASE == PHASE_OUTPUT:
        _forward_output(hh_r, hh_z, hh_n, gx_ptr, b_ptr, ln_hh_ptr, h0_ptr, out_ptr, h_n_ptr,
                        preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, tl.load(seed_ptr),
                        z_threshold, z_p, cand_threshold, cand_p, t, previous_t, rows, row_ok,
                        active, first, last, units, unit_ok, pc, B, H, GROUPS, HAS_BIAS,
                        LAYER_NORM, ZONEOUT, CANDIDATE, TRAINING, SPLITS, SPLITS_P2, BLOCK_H)
    if PERSISTENT:
        syncs += 1
        sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
    return syncs


@triton.jit
def _gru_forward_persistent(
        gx_ptr, w_ptr, b_ptr, ln_hh_ptr, h0_ptr, lengths_ptr, rmask_ptr, seed_ptr, out_ptr,
        h_n_ptr, preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, counters_ptr, B, H,
        z_threshold, z_p, cand_threshold, cand_p, GROUPS: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr,
        ZONEOUT: tl.constexpr, CANDIDATE: tl.constexpr, TRAINING: tl.constexpr,
        REVERSE: tl.constexpr, HOIST: tl.constexpr, SPLITS: tl.constexpr,
        SPLITS_P2: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    w_r, w_z, w_n = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, True, BLOCK_K, DOT_DTYPE)
    steps = tile_steps(lengths_ptr, rows, row_ok)
    syncs = 0
    for s in range(0, steps):
        syncs = _forward_step(
            time_of_step(s, steps, REVERSE), pc, rows, row_ok, units, unit_ok, w_r, w_z, w_n,
            syncs, counters_ptr + pb, gx_ptr, w_ptr, b_ptr, ln_hh_ptr, h0_ptr, lengths_ptr,
            rmask_ptr, seed_ptr, out_ptr, h_n_ptr, preact_ptr, hidden_n_ptr, stats_ptr,
            partials_ptr, B, H, z_threshold, z_p, cand_threshold, cand_p, 0, True, GROUPS,
            HAS_BIAS, HAS_RMASK, LAYER_NORM, ZONEOUT, CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS,
            SPLITS_P2, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)


@triton.jit(do_not_specialize=["t"])
def _gru_forward_phase(
        gx_ptr, w_ptr, b_ptr, ln_hh_ptr, h0_ptr, lengths_ptr, rmask_ptr, seed_ptr, out_ptr,
        h_n_ptr, preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, counters_ptr, B, H,
        z_threshold, z_p, cand_threshold, cand_p, t, GROUPS: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr,
        ZONEOUT: tl.constexpr, CANDIDATE: tl.constexpr, TRAINING: tl.constexpr,
        REVERSE: tl.constexpr, HOIST: tl.constexpr, SPLITS: tl.constexpr,
        SPLITS_P2: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
        PHASE: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    if t < tile_steps(lengths_ptr, rows, row_ok):
        w_r, w_z, w_n = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, True, BLOCK_K, DOT_DTYPE)
        _forward_step(
            t, pc, rows, row_ok, units, unit_ok, w_r, w_z, w_n, 0, counters_ptr + pb, gx_ptr,
            w_ptr, b_ptr, ln_hh_ptr, h0_ptr, lengths_ptr, rmask_ptr, seed_ptr, out_ptr, h_n_ptr,
            preact_ptr, hidden_n_ptr, stats_ptr, partials_ptr, B, H, z_threshold, z_p,
            cand_threshold, cand_p, PHASE, False, GROUPS, HAS_BIAS, HAS_RMASK, LAYER_NORM,
            ZONEOUT, CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS, SPLITS_P2, BLOCK_B, BLOCK_H,
            BLOCK_K, DOT_DTYPE, PRECISION)


# ---------------------------------------------------------------------------------- backward

@triton.jit
def _gate_grads(carry, grad_out_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr, d_gx_ptr, seed,
                z_threshold, z_p, cand_threshold, cand_p, t, previous_t, rows, row_ok, active,
                first, units, unit_ok, B, H, ZONEOUT: tl.constexpr, CANDIDATE: tl.constexpr,
                TRAINING: tl.constexpr, STORE: tl.constexpr):
    """Back through the gates of step t.  ``carry`` is dL/dh_t from the later steps; rows that do
    not run at t pass it through.  Returns (the part of dL/dh_{t-1} that bypasses W_hh, and
    d_hh = dL/d(γ_hh ⊙ N(W_hh h) + b_hh) of r, z, n); writes d_gx[t] if STORE."""
    live = active[:, None]
    step = (t * B).to(tl.int64)
    dh = carry + load_rows(grad_out_ptr + step * H, rows, row_ok & active, units, unit_ok, H, 0.0,
                           False)
    r = sigmoid(gate_tile(preact_ptr, t, 0, rows, row_ok, units, unit_ok, B, H, G, False))
    z = sigmoid(gate_tile(preact_ptr, t, 1, rows, row_ok, units, unit_ok, B, H, G, False))
    n = tanh(gate_tile(preact_ptr, t, 2, rows, row_ok, units, unit_ok, B, H, G, False))
    hidden_n = load_rows(hidden_n_ptr + step * H, rows, row_ok, units, unit_ok, H, 0.0, False)
    h_prev = load_previous(out_ptr, h0_ptr, previous_t, rows, row_ok, active, first, units,
                           unit_ok, B, H, False)
    index = step_mask_index(t, rows, units, B, H)
    scale = dropout_scale(seed, CANDIDATE_KIND, index, cand_threshold, cand_p, CANDIDATE)
    keep = zoneout_weight(seed, ZONEOUT_KIND, index, z_threshold, z_p, ZONEOUT, TRAINING)
    d_candidate = (1.0 - keep) * dh
    da_z = tl.where(live, d_candidate * (h_prev - n * scale) * z * (1.0 - z), 0.0)
    da_n = tl.where(live, d_candidate * (1.0 - z) * scale * (1.0 - n * n), 0.0)
    da_r = da_n * hidden_n * r * (1.0 - r)
    if STORE:
        store_gate_tile(d_gx_ptr, t, 0, rows, row_ok, units, unit_ok, B, H, da_r, G)
        store_gate_tile(d_gx_ptr, t, 1, rows, row_ok, units, unit_ok, B, H, da_z, G)
        store_gate_tile(d_gx_ptr, t, 2, rows, row_ok, units, unit_ok, B, H, da_n, G)
    direct = tl.where(live, keep * dh + d_candidate * z, carry)
    return direct, da_r, da_z, da_n * r


@triton.jit
def _norm_terms(d_hh, gate, hh_ptr, stats_ptr, ln_hh_ptr, t, rows, row_ok, active, units,
                unit_ok, B, H, GROUPS: tl.constexpr):
    """(dL/dx̂, x̂, rstd) of one gate: x̂ from the recomputed W_hh h and the saved statistics."""
    group = gate * GROUPS // 3
    stats_row = stats_ptr + (rows.to(tl.int64) + t * B) * (2 * GROUPS)
    ok = row_ok & active
    mean = tl.load(stats_row + group, mask=ok, other=0.0)
    rstd = tl.load(stats_row + GROUPS + group, mask=ok, other=0.0)
    raw = gate_tile(hh_ptr, t, gate, rows, row_ok, units, unit_ok, B, H, G, False)
    xhat = tl.where(ok[:, None] & unit_ok[None, :], (raw - mean[:, None]) * rstd[:, None], 0.0)
    gamma = tl.load(ln_hh_ptr + gate * H + units, mask=unit_ok, other=0.0).to(tl.float32)
    return d_hh * gamma[None, :], xhat, rstd


@triton.jit
def _store_norm_sums(d_r, d_z, d_n, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows, row_ok,
                     active, units, unit_ok, pc, B, H, GROUPS: tl.constexpr, SPLITS: tl.constexpr):
    """Publishes this split's Σ dx̂ and Σ dx̂ ⊙ x̂ of each gate."""
    dx, xhat, _ = _norm_terms(d_r, 0, hh_ptr, stats_ptr, ln_hh_ptr, t, rows, row_ok, active,
                              units, unit_ok, B, H, GROUPS)
    store_norm_sums(dx, xhat, partials_ptr, rows, row_ok, units, unit_ok, pc, 0, SPLITS, SLOTS)
    dx, xhat, _ = _norm_terms(d_z, 1, hh_ptr, stats_ptr, ln_hh_ptr, t, rows, row_ok, active,
                              units, unit_ok, B, H, GROUPS)
    store_norm_sums(dx, xhat, partials_ptr, rows, row_ok, units, unit_ok, pc, 2, SPLITS, SLOTS)
    dx, xhat, _ = _norm_terms(d_n, 2, hh_ptr, stats_ptr, ln_hh_ptr, t, rows, row_ok, active,
                              units, unit_ok, B, H, GROUPS)
    store_norm_sums(dx, xhat, partials_ptr, rows, row_ok, units, unit_ok, pc, 4, SPLITS, SLOTS)


@triton.jit
def _norm_input_grad(d_hh, gate, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows, row_ok,
                     active, units, unit_ok, B, H, GROUPS: tl.constexpr, SPLITS: tl.constexpr,
                     SPLITS_P2: tl.constexpr):
    """dL/d(W_hh h) of one gate (zero on rows that do not run at t)."""
    dx, xhat, rstd = _norm_terms(d_hh, gate, hh_ptr, stats_ptr, ln_hh_ptr, t, rows, row_ok,
                                 active, units, unit_ok, B, H, GROUPS)
    grad = norm_input_grad(dx, xhat, rstd, gate, partials_ptr, rows, row_ok, H, G, GROUPS, SPLITS,
                           SPLITS_P2, SLOTS)
    return tl.where(active[:, None] & unit_ok[None, :], grad, 0.0)


@triton.jit
def _backward_product(d_hh_ptr, w_ptr, wt_r, wt_z, wt_n, rmask_ptr, t, rows, row_ok, units,
                      unit_ok, B, H, HAS_RMASK: tl.constexpr, HOIST: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """d ⊙ (W_hhᵀ d_hh_t) for the program's units: the part of dL/dh_{t-1} through W_hh."""
    acc = tl.zeros([BLOCK_B, BLOCK_H], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        acc = add_backward_gate_product(acc, d_hh_ptr, wt_r, w_ptr, 0, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
        acc = add_backward_gate_product(acc, d_hh_ptr, wt_z, w_ptr, 1, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
        acc = add_backward_gate_product(acc, d_hh_ptr, wt_n, w_ptr, 2, t, rows, row_ok, ks, k_ok,
                                        units, unit_ok, B, H, G, HOIST, DOT_DTYPE, PRECISION)
    if HAS_RMASK:
        acc *= load_rows(rmask_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
    return acc


@triton.jit
def _backward_step(t, pc, rows, row_ok, units, unit_ok, wt_r, wt_z, wt_n, carry, syncs,
                   counter_ptr, grad_out_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr,
                   stats_ptr, hh_ptr, w_ptr, ln_hh_ptr, lengths_ptr, rmask_ptr, seed_ptr,
                   d_gx_ptr, d_hh_ptr, partials_ptr, B, H, z_threshold, z_p, cand_threshold,
                   cand_p, PHASE: tl.constexpr, PERSISTENT: tl.constexpr, GROUPS: tl.constexpr,
                   HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr, ZONEOUT: tl.constexpr,
                   CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
                   HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """One step back: (dL/dh_{t-1} of the program's units, syncs).  A per-step phase recomputes
    the local gate gradients rather than storing them; d_hh [T, B, 3H] is the exchange."""
    active, first, last, previous_t = row_geometry(lengths_ptr, t, rows, row_ok, REVERSE)
    direct, d_r, d_z, d_n = _gate_grads(
        carry, grad_out_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr, d_gx_ptr,
        tl.load(seed_ptr), z_threshold, z_p, cand_threshold, cand_p, t, previous_t, rows, row_ok,
        active, first, units, unit_ok, B, H, ZONEOUT, CANDIDATE, TRAINING,
        PERSISTENT or PHASE == PHASE_GATES)
    if LAYER_NORM:
        if PERSISTENT or PHASE == PHASE_GATES:
            _store_norm_sums(d_r, d_z, d_n, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows,
                             row_ok, active, units, unit_ok, pc, B, H, GROUPS, SPLITS)
        if PERSISTENT:
            syncs += 1
            sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
        if PERSISTENT or PHASE == PHASE_NORM:
            d_r = _norm_input_grad(d_r, 0, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows,
                                   row_ok, active, units, unit_ok, B, H, GROUPS, SPLITS, SPLITS_P2)
            d_z = _norm_input_grad(d_z, 1, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows,
                                   row_ok, active, units, unit_ok, B, H, GROUPS, SPLITS, SPLITS_P2)
            d_n = _norm_input_grad(d_n, 2, hh_ptr, stats_ptr, ln_hh_ptr, partials_ptr, t, rows,
                                   row_ok, active, units, unit_ok, B, H, GROUPS, SPLITS, SPLITS_P2)
    if PERSISTENT or PHASE == (PHASE_NORM if LAYER_NORM else PHASE_GATES):
        store_gate_tile(d_hh_ptr, t, 0, rows, row_ok, units, unit_ok, B, H, d_r, G)
        store_gate_tile(d_hh_ptr, t, 1, rows, row_ok, units, unit_ok, B, H, d_z, G)
        store_gate_tile(d_hh_ptr, t, 2, rows, row_ok, units, unit_ok, B, H, d_n, G)
    if PERSISTENT:
        syncs += 1
        sync_tile(counter_ptr, syncs * SPLITS, SPLITS)
    if PERSISTENT or PHASE == PHASE_PRODUCT:
        direct += _backward_product(d_hh_ptr, w_ptr, wt_r, wt_z, wt_n, rmask_ptr, t, rows,
                                    row_ok, units, unit_ok, B, H, HAS_RMASK, HOIST, BLOCK_B,
                                    BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)
    return direct, syncs


@triton.jit
def _gru_backward_persistent(
        grad_out_ptr, grad_h_n_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr, stats_ptr, hh_ptr,
        w_ptr, ln_hh_ptr, lengths_ptr, rmask_ptr, seed_ptr, d_gx_ptr, d_hh_ptr, d_h0_ptr,
        partials_ptr, counters_ptr, B, H, z_threshold, z_p, cand_threshold, cand_p,
        GROUPS: tl.constexpr, HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr,
        ZONEOUT: tl.constexpr, CANDIDATE: tl.constexpr, TRAINING: tl.constexpr,
        REVERSE: tl.constexpr, HOIST: tl.constexpr, SPLITS: tl.constexpr,
        SPLITS_P2: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    wt_r, wt_z, wt_n = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, False, BLOCK_K, DOT_DTYPE)
    steps = tile_steps(lengths_ptr, rows, row_ok)
    carry = load_rows(grad_h_n_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
    syncs = 0
    for s in range(0, steps):
        carry, syncs = _backward_step(
            time_of_step(s, steps, not REVERSE), pc, rows, row_ok, units, unit_ok, wt_r, wt_z,
            wt_n, carry, syncs, counters_ptr + pb, grad_out_ptr, out_ptr, h0_ptr, preact_ptr,
            hidden_n_ptr, stats_ptr, hh_ptr, w_ptr, ln_hh_ptr, lengths_ptr, rmask_ptr, seed_ptr,
            d_gx_ptr, d_hh_ptr, partials_ptr, B, H, z_threshold, z_p, cand_threshold, cand_p, 0,
            True, GROUPS, HAS_RMASK, LAYER_NORM, ZONEOUT, CANDIDATE, TRAINING, REVERSE, HOIST,
            SPLITS, SPLITS_P2, BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)
    store_rows(d_h0_ptr, rows, row_ok, units, unit_ok, H, carry)


@triton.jit(do_not_specialize=["t"])
def _gru_backward_phase(
        grad_out_ptr, carry_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr, stats_ptr, hh_ptr,
        w_ptr, ln_hh_ptr, lengths_ptr, rmask_ptr, seed_ptr, d_gx_ptr, d_hh_ptr, partials_ptr,
        counters_ptr, B, H, z_threshold, z_p, cand_threshold, cand_p, t, GROUPS: tl.constexpr,
        HAS_RMASK: tl.constexpr, LAYER_NORM: tl.constexpr, ZONEOUT: tl.constexpr,
        CANDIDATE: tl.constexpr, TRAINING: tl.constexpr, REVERSE: tl.constexpr,
        HOIST: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, PHASE: tl.constexpr):
    """carry_ptr [B, H] float32 holds dL/dh_t between launches; only the last phase updates it."""
    pb, pc, rows, row_ok, units, unit_ok = program_tile(B, H, BLOCK_B, BLOCK_H)
    if t < tile_steps(lengths_ptr, rows, row_ok):
        wt_r, wt_z, wt_n = _hoisted_weights(w_ptr, units, unit_ok, H, HOIST, False, BLOCK_K,
                                            DOT_DTYPE)
        carry = load_rows(carry_ptr, rows, row_ok, units, unit_ok, H, 0.0, False)
        carry, _ = _backward_step(
            t, pc, rows, row_ok, units, unit_ok, wt_r, wt_z, wt_n, carry, 0, counters_ptr + pb,
            grad_out_ptr, out_ptr, h0_ptr, preact_ptr, hidden_n_ptr, stats_ptr, hh_ptr, w_ptr,
            ln_hh_ptr, lengths_ptr, rmask_ptr, seed_ptr, d_gx_ptr, d_hh_ptr, partials_ptr, B, H,
            z_threshold, z_p, cand_threshold, cand_p, PHASE, False, GROUPS, HAS_RMASK,
            LAYER_NORM, ZONEOUT, CANDIDATE, TRAINING, REVERSE, HOIST, SPLITS, SPLITS_P2,
            BLOCK_B, BLOCK_H, BLOCK_K, DOT_DTYPE, PRECISION)
        if PHASE == PHASE_PRODUCT:
            store_rows(carry_ptr, rows, row_ok, units, unit_ok, H, carry)


# -------------------------------------------------------------------------------- host side

def _launch_settings(batch, hidden, dtype, device, layer_norm, ln_groups, recurrent_mask,
                     zoneout, candidate_dropout, training, reverse):
    """(grid, persistent, workspaces, scalar mask arguments, constexpr options) shared by both
    directions; the workspaces are the layer-norm partials and the barrier counters."""
    tiling = tiling_for(batch, hidden, GATES, dtype, device)
    splits = tiling.splits(hidden)
    workspaces = (exchange_buffer(batch, splits, 6, device),
                  barrier_counters(tiling, batch, device))
    scalars = (M.threshold(zoneout), float(zoneout), M.threshold(candidate_dropout),
               float(candidate_dropout))
    options = launch_options(tiling, hidden, dtype, device, ln_groups, layer_norm,
                             recurrent_mask, candidate_dropout, training, reverse)
    options["ZONEOUT"] = zoneout > 0
    return (tiling.batch_tiles(batch), splits), tiling.persistent, workspaces, scalars, options


def _new_per_step(shape, dtype, device, lengths):
    """A [T, B, ...] result: steps after a batch tile's longest sequence are never visited, so
    with lengths it starts at zero; otherwise the kernels write all of it."""
    if lengths is None:
        return new_output(*shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)


def gru_forward(gx, w_hh, b_hh, ln_hh_weight, h0, lengths, recurrent_mask, seed, ln_groups,
                zoneout, candidate_dropout, training, reverse):
    """``fastrnn::gru_forward`` (docs/ops.md) -> (out, h_n, preact, hidden_n, stats)."""
    steps, batch, hidden = gx.shape[0], gx.shape[1], w_hh.shape[1]
    dtype, device = gx.dtype, gx.device
    layer_norm = ln_hh_weight is not None
    out = _new_per_step((steps, batch, hidden), dtype, device, lengths)
    h_n = new_output(batch, hidden, dtype=dtype, device=device)
    preact = new_output(steps, batch, 3 * hidden, dtype=dtype, device=device)
    hidden_n = new_output(steps, batch, hidden, dtype=dtype, device=device)
    stats = new_output(steps, batch, gru_stats_width(layer_norm, ln_groups), dtype=torch.float32,
                       device=device)
    if steps == 0 or batch == 0:
        return out, h_n.copy_(h0), preact, hidden_n, stats
    grid, persistent, workspaces, scalars, options = _launch_settings(
        batch, hidden, dtype, device, layer_norm, ln_groups, recurrent_mask, zoneout,
        candidate_dropout, training, reverse)
    w_hh = w_hh.contiguous()
    args = (gx.contiguous(), w_hh, present_or(b_hh, w_hh), present_or(ln_hh_weight, w_hh),
            h0.contiguous(), lengths_or_full(lengths, steps, batch, device),
            present_or(recurrent_mask, w_hh), seed, out, h_n, preact, hidden_n, stats,
            *workspaces, batch, hidden, *scalars)
    options["HAS_BIAS"] = b_hh is not None
    if persistent:
        _gru_forward_persistent[grid](*args, **options, **cooperative_launch(grid[1]))
    else:
        phases = (PHASE_MOMENTS, PHASE_OUTPUT) if layer_norm else (PHASE_OUTPUT,)
        for t in step_order(steps, reverse):
            for phase in phases:
                _gru_forward_phase[grid](*args, t, PHASE=phase, **options)
    return out, h_n, preact, hidden_n, stats


def gru_backward(grad_out, grad_h_n, out, preact, hidden_n, stats, w_hh, b_hh, ln_hh_weight, h0,
                 lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout, training,
                 reverse):
    """``fastrnn::gru_backward`` -> gradients of (gx, w_hh, b_hh, ln_hh_weight, h0).

    The kernel runs time backwards and writes d_gx and d_hh = dL/d(W_hh (d ⊙ h_{t-1})) per step;
    the parameter gradients are then one GEMM and reductions over (t, b) in torch."""
    steps, batch, hidden = out.shape[0], out.shape[1], w_hh.shape[1]
    dtype, device = out.dtype, out.device
    layer_norm = ln_hh_weight is not None
    d_gx = _new_per_step((steps, batch, 3 * hidden), dtype, device, lengths)
    d_hh = _new_per_step((steps, batch, 3 * hidden), dtype, device, lengths)
    d_h0 = new_output(batch, hidden, dtype=dtype, device=device)
    h_in = recurrent_inputs(out, h0, lengths, recurrent_mask, reverse)
    # The layer-norm backward needs x̂, so W_hh (d ⊙ h_{t-1}) of every step is recomputed here
    # in one GEMM rather than saved by the forward.
    hh = h_in @ w_hh.t() if layer_norm else None
    if steps == 0 or batch == 0:
        d_h0.copy_(grad_h_n)
    else:
        _run_backward(grad_out, grad_h_n, out, preact, hidden_n, stats, hh, w_hh, ln_hh_weight,
                      h0, lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout,
                      training, reverse, d_gx, d_hh, d_h0)
    return (d_gx, *_parameter_gradients(d_gx, d_hh, h_in, hh, preact, stats, w_hh, b_hh,
                                        ln_hh_weight, ln_groups, lengths), d_h0)


def _run_backward(grad_out, grad_h_n, out, preact, hidden_n, stats, hh, w_hh, ln_hh_weight, h0,
                  lengths, recurrent_mask, seed, ln_groups, zoneout, candidate_dropout, training,
                  reverse, d_gx, d_hh, d_h0):
    steps, batch, hidden = out.shape[0], out.shape[1], w_hh.shape[1]
    dtype, device = out.dtype, out.device
    layer_norm = ln_hh_weight is not None
    grid, persistent, workspaces, scalars, options = _launch_settings(
        batch, hidden, dtype, device, layer_norm, ln_groups, recurrent_mask, zoneout,
        candidate_dropout, training, reverse)
    w_hh, h0, out = w_hh.contiguous(), h0.contiguous(), out.contiguous()
    inputs = (out, h0, preact.contiguous(), hidden_n.contiguous(), stats.contiguous(),
              d_hh if hh is None else hh.contiguous(), w_hh, present_or(ln_hh_weight, w_hh),
              lengths_or_full(lengths, steps, batch, device), present_or(recurrent_mask, w_hh),
              seed, d_gx, d_hh)
    tail = (*workspaces, batch, hidden, *scalars)
    grad_out = grad_out.contiguous()
    if persistent:
        _gru_backward_persistent[grid](grad_out, grad_h_n.contiguous(), *inputs, d_h0, *tail,
                                       **options, **cooperative_launch(grid[1]))
        return
    carry = grad_h_n.float().contiguous()
    phases = ((PHASE_GATES, PHASE_NORM, PHASE_PRODUCT) if layer_norm
              else (PHASE_GATES, PHASE_PRODUCT))
    for t in step_order(steps, not reverse):
        for phase in phases:
            _gru_backward_phase[grid](grad_out, carry, *inputs, *tail, t, PHASE=phase, **options)
    d_h0.copy_(carry)


def _parameter_gradients(d_gx, d_hh, h_in, hh, preact, stats, w_hh, b_hh, ln_hh_weight,
                         ln_groups, lengths):
    """(d_w_hh, d_b_hh, d_ln_hh_weight): sums over every (t, b) in a fixed order."""
    steps, hidden = d_gx.shape[0], w_hh.shape[1]
    d_w_hh = recurrent_weight_grad(d_hh, h_in, w_hh)
    if b_hh is None and ln_hh_weight is None:
        return d_w_hh, absent_gradient(w_hh), absent_gradient(w_hh)
    active = (None if lengths is None else
              (torch.arange(steps, device=d_gx.device)[:, None] < lengths[None, :])[..., None])
    # dL/d(γ ⊙ N(W_hh h) + b_hh) is d_gx for r and z; for n it is d_gx_n scaled by r.
    reset = torch.sigmoid(preact[..., :hidden].float())
    d_term = torch.cat([d_gx[..., :2 * hidden].float(), d_gx[..., 2 * hidden:].float() * reset], -1)
    if active is not None:
        d_term = torch.where(active, d_term, 0.0)
    d_b_hh = absent_gradient(w_hh) if b_hh is None else d_term.sum((0, 1)).to(b_hh.dtype)
    if ln_hh_weight is None:
        return d_w_hh, d_b_hh, absent_gradient(w_hh)
    grouped = hh.float().unflatten(-1, (ln_groups, -1))
    xhat = ((grouped - stats[..., :ln_groups, None]) * stats[..., ln_groups:, None]).flatten(-2)
    products = d_term * xhat
    if active is not None:
        products = torch.where(active, products, 0.0)
    return d_w_hh, d_b_hh, products.sum((0, 1)).to(ln_hh_weight.dtype)

