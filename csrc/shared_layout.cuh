// Where each array of a block lives in its dynamic shared memory, and the size of the global
// scratch of team reductions.  Computed identically by the planner (host) and the kernels.
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_device.cuh"

namespace fastrnn {

constexpr int kThreads = 256;
constexpr int kChunk = 128;      // columns of the product's input staged in shared memory at once
constexpr int kBatchChunk = 8;   // batch rows one warp accumulates per pass over a weight row
constexpr int kMaxGroups = 4;    // ln_groups is 1 or G <= 4
constexpr int kStatsPerRow = 12; // per batch row: per-group mean, per-group rstd, cell mean, rstd

// Columns of the per-batch-row statistics in shared memory.  The backward reuses them for the
// group means of d_n and d_n * n.
constexpr int kHhMean = 0;
constexpr int kHhRstd = kMaxGroups;
constexpr int kCellMean = 2 * kMaxGroups;
constexpr int kCellRstd = 2 * kMaxGroups + 1;

// Per-(unit, batch row) float arrays: the carried gradients and the product's output are common
// to both cells; the LSTM adds its cell-state arrays.
enum ForwardCellArray { kCellState = 0, kCellCandidate = 1, kForwardCellArrays = 2 };
enum BackwardCellArray {
  kDhCarry = 0,        // d loss / d h of the state the next (earlier) step produced
  kRecurrentGrad = 1,  // W_hh^T d_hh for the block's units
  kDcCarry = 2,        // LSTM: d loss / d c likewise
  kDcZoneout = 3,      // LSTM: the part of d c~ that passed the cell zoneout
  kDcHat = 4,          // LSTM cell norm: d ĉ and ĉ
  kCHat = 5,
  kDyCell = 6,         // LSTM: d y, for d γ_c and d β_c
  kBackwardCellArrays = 7
};

FASTRNN_HD size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

FASTRNN_HD int64_t staged_rows(int64_t batch_tile) {
  return (batch_tile + kBatchChunk - 1) / kBatchChunk * kBatchChunk;
}

struct SharedLayout {
  size_t weights, stage, rows, row_aux, cells, stats, params, total;  // byte offsets / size
  int64_t cell_floats;  // floats per cell array: units * batch_tile

  // Forward: weights [G·units][H]; backward: weights [units][G·H] (the columns of the block's
  // units).  rows: [G·units][batch_tile] float, the product then gate values; row_aux: the
  // normalized recurrent term in the layer-norm backward.
  FASTRNN_HD SharedLayout(int64_t gates, int64_t units, int64_t hidden, int64_t batch_tile,
                          int64_t elem_size, bool backward, bool layer_norm) {
    const size_t row_bytes = align16(sizeof(float) * gates * units * batch_tile);
    cell_floats = units * batch_tile;
    weights = 0;
    stage = align16(static_cast<size_t>(gates * units * hidden * elem_size));
    rows = stage + align16(sizeof(float) * staged_rows(batch_tile) * kChunk);
    row_aux = rows + row_bytes;
    cells = row_aux + (backward && layer_norm ? row_bytes : 0);
    const int arrays = backward ? static_cast<int>(kBackwardCellArrays) : static_cast<int>(kForwardCellArrays);
    stats = cells + align16(sizeof(float) * arrays * cell_floats);
    params = stats + align16(sizeof(float) * batch_tile * kStatsPerRow);
    total = params + (backward ? align16(sizeof(float) * param_floats(gates, units)) : 0);
  }

  // Backward accumulators over (t, b): d b_hh and d γ_hh per row, d γ_c and d β_c per unit.
  FASTRNN_HD static int64_t param_floats(int64_t gates, int64_t units) {
    return 2 * gates * units + 2 * units;
  }
};

// Global scratch of the team reductions: two regions (recurrent norm, cell norm), each holding a
// float pair per (tile, batch row, group, block).
FASTRNN_HD int64_t scratch_region_floats(int64_t tiles, int64_t batch_tile, int64_t team_blocks) {
  return tiles * batch_tile * kMaxGroups * team_blocks * 2;
}

}  // namespace fastrnn
