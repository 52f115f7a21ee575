// The persistent forward kernel of one layer and direction: one launch runs all T steps.  Each
// block keeps its W_hh rows in shared memory; per step it computes its slice of W_hh (d ⊙ h_{t-1}),
// the team combines layer-norm statistics, and the cell (Lstm or Gru policy) updates the block's
// units.  h is exchanged through a ping-pong buffer in global memory: step s reads state[s % 2]
// and writes state[(s + 1) % 2], and a team barrier ends every step.  A row that starts an
// episode at a step (StepContext::starts) reads h_reset there instead of state[s % 2], in the
// product and in the cell (zoneout's previous h, the GRU's h_prev); the LSTM's c likewise.
#pragma once

#include "block_matvec.cuh"
#include "step_context.cuh"

namespace fastrnn {

template <typename T>
__device__ void write_forward_stats(const StepContext<T>& s) {
  if (s.team.rank != 0 || !s.saves()) return;  // every rank holds the same combined statistics
  const int groups = static_cast<int>(s.args.ln_groups);
  const bool cell_columns = s.stats_width() > 2 * groups;
  const bool cell_norm = s.args.ln_cell_weight != 0;
  for (int b = threadIdx.x; b < s.team.bt; b += blockDim.x) {
    const float* mine = s.arrays.stats + b * kStatsPerRow;
    float* row = s.saved_stats(b);
    const bool active = s.active(b);
    for (int group = 0; group < groups; ++group) {
      row[group] = active ? mine[kHhMean + group] : 0.0f;
      row[groups + group] = active ? mine[kHhRstd + group] : 0.0f;
    }
    if (cell_columns) {  // zeros without the cell norm: the op's output is never left unwritten
      row[2 * groups] = active && cell_norm ? mine[kCellMean] : 0.0f;
      row[2 * groups + 1] = active && cell_norm ? mine[kCellRstd] : 0.0f;
    }
  }
}

template <typename T, class Team, class Cell>
__global__ void __launch_bounds__(kThreads) forward_kernel(const RecurrenceArgs args) {
  extern __shared__ __align__(16) unsigned char shared[];
  const TeamSlice team = team_slice(args);
  const bool layer_norm = args.ln_hh_weight != 0;
  const int gates = static_cast<int>(args.gates);
  const SharedLayout layout(gates, team.units_cap, args.hidden, team.batch_tile, sizeof(T), false,
                            layer_norm);
  const BlockArrays<T> arrays(shared, layout);
  const int64_t batch = args.batch, hidden = args.hidden;
  T* state = as<T>(args.state);
  const T* mask = as<const T>(args.recurrent_mask);
  const T* h_reset = as<const T>(args.h_reset);
  StepContext<T> s{args, team, arrays, as<float>(args.scratch),
                   scratch_region_floats(args.plan.tiles, team.batch_tile, team.blocks),
                   static_cast<uint64_t>(*as<const int64_t>(args.seed)), 0};

  load_gate_rows(arrays.weights, as<const T>(args.w_hh), team, gates);
  for_each_cell(team, [&](int unit, int b, int) {
    const int64_t at = s.batch_index(b) * hidden + s.hidden_index(unit);
    state[at] = as<const T>(args.h0)[at];
  });
  Cell::forward_init(s);
  Team::sync();  // every block's slice of h0 is in place before anyone reads it

  for (int64_t step = 0; step < args.steps; ++step) {
    s.t = time_of_step(step, args.steps, args.reverse);
    const T* h = state + (step & 1) * batch * hidden;
    T* h_next = state + ((step + 1) & 1) * batch * hidden;
    block_matvec(arrays.weights, gates * team.units_cap, hidden, arrays.stage, team,
                 [&](int b, int64_t k) {
                   const int64_t at = s.batch_index(b) * hidden + k;
                   // At an episode start the row reads h_reset (an input: no team exchange).
                   const float value = s.starts(b) ? to_float(h_reset[at]) : load_shared_by_team(h + at);
                   // The product reads d ⊙ h rounded to the element type (docs/ops.md).
                   return mask == nullptr ? value : round_to<T>(value * to_float(mask[at]));
                 },
                 arrays.rows);
    if (layer_norm) {
      team_moments<Team>(team, arrays.rows, gates, static_cast<int>(args.ln_groups), s.region(0),
                         arrays.stats, kHhMean, kHhRstd);
    }
    Cell::template forward_step<T, Team>(s, h, h_next);
    if (layer_norm) write_forward_stats(s);
    Team::sync();  // h_next is complete before the next step's product reads it
  }

  const T* final_state = state + (args.steps & 1) * batch * hidden;
  for_each_cell(team, [&](int unit, int b, int) {
    const int64_t at = s.batch_index(b) * hidden + s.hidden_index(unit);
    as<T>(args.h_n)[at] = final_state[at];
  });
  Cell::forward_finish(s);
}

}  // namespace fastrnn
