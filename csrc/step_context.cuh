// What the cell-specific code of a kernel sees: the call's arguments, the block's slice of the team,
// its shared-memory arrays, and the time step being computed.
#pragma once

#include <cstdint>

#include "episodes.cuh"
#include "philox.cuh"
#include "sequence.cuh"
#include "shared_layout.cuh"
#include "team.cuh"

namespace fastrnn {

template <typename P>
__device__ __forceinline__ P* as(uintptr_t address) {
  return reinterpret_cast<P*>(address);
}

template <typename T>
struct BlockArrays {
  T* weights;
  float* stage;
  float* rows;     // [gate][unit][b]
  float* row_aux;  // same shape (backward with layer norm)
  float* cells;    // arrays of [unit][b], see ForwardCellArray / BackwardCellArray
  float* stats;    // [b][kStatsPerRow]
  float* params;   // backward accumulators
  int64_t cell_floats;

  __device__ BlockArrays(unsigned char* base, const SharedLayout& layout)
      : weights(reinterpret_cast<T*>(base + layout.weights)),
        stage(reinterpret_cast<float*>(base + layout.stage)),
        rows(reinterpret_cast<float*>(base + layout.rows)),
        row_aux(reinterpret_cast<float*>(base + layout.row_aux)),
        cells(reinterpret_cast<float*>(base + layout.cells)),
        stats(reinterpret_cast<float*>(base + layout.stats)),
        params(reinterpret_cast<float*>(base + layout.params)),
        cell_floats(layout.cell_floats) {}

  __device__ float* cell(int which) const { return cells + which * cell_floats; }
};

template <typename T>
struct StepContext {
  const RecurrenceArgs& args;
  const TeamSlice& team;
  const BlockArrays<T>& arrays;
  float* scratch;
  int64_t region_floats;
  uint64_t seed;
  int64_t t;

  __device__ int64_t hidden_index(int unit) const { return team.j0 + unit; }
  __device__ int64_t batch_index(int b) const { return team.b0 + b; }
  // Row of the [T, B, ...] tensors for tile row b at this step.
  __device__ int64_t step_row(int b) const { return t * args.batch + team.b0 + b; }
  __device__ int64_t length(int b) const {
    return sequence_length(as<const int64_t>(args.lengths), team.b0 + b, args.steps);
  }
  __device__ bool active(int b) const { return t < length(b); }
  // Whether row b starts an episode at this step: it reads (h_reset, c_reset), not the state its
  // previous step (or h0 / c0) left.  False at inactive steps and for calls without resets.
  __device__ bool starts(int b) const {
    return args.resets != 0 &&  // first: without resets, nothing else is loaded
           episode_start(as<const uint8_t>(args.resets), t, batch_index(b), args.batch, length(b));
  }
  // Forward: element `at` (= batch row · H + unit) of the h the step reads, from the state buffer
  // `h` the previous step wrote, or from h_reset at an episode start of row b.
  __device__ float previous_hidden(const T* h, int64_t at, int b) const {
    return starts(b) ? to_float(as<const T>(args.h_reset)[at]) : to_float(h[at]);
  }
  __device__ int row(int gate, int unit, int b) const {
    return (gate * team.units_cap + unit) * team.batch_tile + b;
  }
  __device__ int cell_index(int unit, int b) const { return unit * team.batch_tile + b; }
  __device__ float* region(int which) const { return scratch + which * region_floats; }
  __device__ int group_of(int gate) const { return args.ln_groups == 1 ? 0 : gate; }
  // Columns of the saved `stats` (docs/ops.md): group means, group rstds, then the cell's pair.
  // The width is the one the op allocates (fastrnn.ops.lstm_stats_width): the LSTM's cell pair is
  // always there under layer norm, whether or not the cell norm is on.
  __device__ int stats_width() const {
    if (args.ln_hh_weight == 0) return 0;
    return 2 * static_cast<int>(args.ln_groups) + (args.gates == 4 ? 2 : 0);
  }
  // Whether the forward writes what the backward reads (preact, cell or hidden_n, stats): not
  // when no backward will follow, where the op's inference passes null pointers for them all.
  __device__ bool saves() const { return args.preact != 0; }
  // Row b of `stats` at this step: written by the forward, read by the backward.
  __device__ float* saved_stats(int b) const {
    return as<float>(args.stats) + step_row(b) * stats_width();
  }

  // Whether the per-step mask `kind` hits element (b, unit) at this step (training only).
  __device__ bool hit(uint32_t kind, int64_t threshold, double p, int b, int unit) const {
    return args.training && p > 0.0 &&
           mask_hit(seed, kind, step_mask_index(t, batch_index(b), hidden_index(unit), args.batch,
                                                args.hidden),
                    static_cast<uint32_t>(threshold));
  }
  __device__ float candidate_scale(int b, int unit) const {
    const double p = args.candidate_dropout;
    return dropout_scale(static_cast<float>(p), args.training,
                         hit(kCandidateDropout, args.candidate_threshold, p, b, unit));
  }
  __device__ float zoneout_cell_weight(int b, int unit) const {
    const double p = args.zoneout_cell;
    return zoneout_weight(static_cast<float>(p), args.training,
                          hit(kZoneoutCell, args.zoneout_cell_threshold, p, b, unit));
  }
  __device__ float zoneout_hidden_weight(int b, int unit) const {
    const double p = args.zoneout_hidden;
    return zoneout_weight(static_cast<float>(p), args.training,
                          hit(kZoneoutHidden, args.zoneout_hidden_threshold, p, b, unit));
  }

  // Forward: the recurrent term of gate row (gate, unit) for row b: W_hh (d ⊙ h), or
  // γ_hh ⊙ N(W_hh (d ⊙ h)) once team_moments has filled the statistics.  Bias not included.
  __device__ float recurrent_term(int gate, int unit, int b) const {
    const float product = arrays.rows[row(gate, unit, b)];
    if (args.ln_hh_weight == 0) return product;
    const float* stat = arrays.stats + b * kStatsPerRow;
    const int group = group_of(gate);
    const float gamma = to_float(as<const T>(args.ln_hh_weight)[gate * args.hidden + hidden_index(unit)]);
    return gamma * ((product - stat[kHhMean + group]) * stat[kHhRstd + group]);
  }

  __device__ float bias(int gate, int unit) const {
    return args.b_hh == 0 ? 0.0f : to_float(as<const T>(args.b_hh)[gate * args.hidden + hidden_index(unit)]);
  }
};

// Runs f(unit, b, cell_index) for every (unit, batch row) the block owns.  Every phase of a step
// uses this same thread-to-cell mapping, so a thread only ever rereads its own cells' values.
template <class F>
__device__ void for_each_cell(const TeamSlice& team, F f) {
  for (int idx = threadIdx.x; idx < team.units * team.bt; idx += blockDim.x) {
    const int unit = idx / team.bt, b = idx % team.bt;
    f(unit, b, unit * team.batch_tile + b);
  }
}

// dest[cell] = source[b, j] for the block's cells of a [B, H] tensor in the element type.
template <typename T>
__device__ void load_block_cells(const StepContext<T>& s, uintptr_t source, float* dest) {
  for_each_cell(s.team, [&](int unit, int b, int i) {
    dest[i] = to_float(as<const T>(source)[s.batch_index(b) * s.args.hidden + s.hidden_index(unit)]);
  });
}

// dest[b, j] = source[cell], rounded to the element type.
template <typename T>
__device__ void store_block_cells(const StepContext<T>& s, const float* source, uintptr_t dest) {
  for_each_cell(s.team, [&](int unit, int b, int i) {
    as<T>(dest)[s.batch_index(b) * s.args.hidden + s.hidden_index(unit)] = from_float<T>(source[i]);
  });
}

// dest[b, j] = 0 for the block's cells of a [B, H] float32 tensor (an accumulator the block owns).
template <typename T>
__device__ void zero_block_cells(const StepContext<T>& s, uintptr_t dest) {
  for_each_cell(s.team, [&](int unit, int b, int) {
    as<float>(dest)[s.batch_index(b) * s.args.hidden + s.hidden_index(unit)] = 0.0f;
  });
}

}  // namespace fastrnn
