// The persistent backward kernel of one layer and direction, running the steps in reverse order
// of the forward.  Each block keeps the columns of W_hh for its units in shared memory.  Per step:
// the cell (Lstm or Gru policy) turns the carried d h, d c into d_gx[t] and dy, the gradient of
// the recurrent term; the team takes dy through the recurrent layer norm to d_hh[t] (written to
// global memory, also the input of the host's d W_hh GEMM); after a team barrier each block
// computes its units of W_hh^T d_hh and adds d ⊙ that to the carried d h.  At an episode start
// (StepContext::starts) the carried d h (and the LSTM's d c), the gradient of the state the step
// read, then goes to d_h_reset (d_c_reset) instead of the previous step: those [B, H] float32
// accumulators are owned element by element by the thread that owns the cell (for_each_cell, the
// same block and thread at every step), so they are summed without atomics, in step order.
#pragma once

#include "block_matvec.cuh"
#include "step_context.cuh"

namespace fastrnn {

// Runs f(gate, unit, b, row index) over the block's gate rows of the tile.
template <typename T, class F>
__device__ void for_each_gate_element(const StepContext<T>& s, F f) {
  const TeamSlice& team = s.team;
  const int per_gate = team.units * team.bt;
  for (int idx = threadIdx.x; idx < static_cast<int>(s.args.gates) * per_gate; idx += blockDim.x) {
    const int gate = idx / per_gate, unit = idx % per_gate / team.bt, b = idx % team.bt;
    f(gate, unit, b, s.row(gate, unit, b));
  }
}

// rows holds dy (zero for inactive rows).  Accumulates d b_hh += Σ_b dy and d γ_hh += Σ_b dy ⊙ n,
// turns rows into d_hh = N-backward(γ_hh ⊙ dy) (or dy without layer norm) and writes d_hh[t].
template <typename T, class Team>
__device__ void recurrent_norm_backward(const StepContext<T>& s) {
  const RecurrenceArgs& args = s.args;
  const TeamSlice& team = s.team;
  const BlockArrays<T>& arrays = s.arrays;
  const bool layer_norm = args.ln_hh_weight != 0;
  const int gates = static_cast<int>(args.gates);
  const int64_t hidden = args.hidden, gate_rows = gates * hidden;
  const T* gamma = as<const T>(args.ln_hh_weight);
  __syncthreads();  // the cell wrote dy with its own thread mapping
  if (layer_norm) {
    // n = N(W_hh (d ⊙ h_{t-1})) from the product the host recomputed and the saved statistics.
    for_each_gate_element(s, [&](int gate, int unit, int b, int i) {
      const float* stat = s.saved_stats(b);
      const int group = s.group_of(gate);
      const float hh = to_float(as<const T>(args.hh)[s.step_row(b) * gate_rows + gate * hidden + s.hidden_index(unit)]);
      arrays.row_aux[i] = s.active(b) ? (hh - stat[group]) * stat[args.ln_groups + group] : 0.0f;
    });
    __syncthreads();
  }
  float* d_bias = arrays.params;
  float* d_gamma = arrays.params + gates * team.units_cap;
  for (int idx = threadIdx.x; idx < gates * team.units; idx += blockDim.x) {
    const int gate = idx / team.units, unit = idx % team.units;
    const int first = s.row(gate, unit, 0), r = gate * team.units_cap + unit;
    float sum = 0.0f, sum_n = 0.0f;
    for (int b = 0; b < team.bt; ++b) {
      sum += arrays.rows[first + b];
      if (layer_norm) sum_n += arrays.rows[first + b] * arrays.row_aux[first + b];
    }
    d_bias[r] += sum;
    d_gamma[r] += sum_n;
  }
  __syncthreads();
  if (layer_norm) {
    for_each_gate_element(s, [&](int gate, int unit, int, int i) {
      arrays.rows[i] *= to_float(gamma[gate * hidden + s.hidden_index(unit)]);
    });
    team_grad_means<Team>(team, arrays.rows, arrays.row_aux, gates, static_cast<int>(args.ln_groups),
                          s.region(0), arrays.stats, kHhMean, kHhRstd);
  }
  T* d_hh = as<T>(args.d_hh);
  for_each_gate_element(s, [&](int gate, int unit, int b, int i) {
    float grad = arrays.rows[i];
    if (layer_norm) {
      const int group = s.group_of(gate);
      const float* means = arrays.stats + b * kStatsPerRow;
      const float rstd = s.saved_stats(b)[args.ln_groups + group];
      grad = s.active(b) ? layer_norm_input_grad(rstd, grad, arrays.row_aux[i], means[kHhMean + group],
                                                 means[kHhRstd + group])
                         : 0.0f;
    }
    d_hh[s.step_row(b) * gate_rows + gate * hidden + s.hidden_index(unit)] = from_float<T>(grad);
  });
}

template <typename T>
__device__ void write_param_partials(const StepContext<T>& s) {
  const TeamSlice& team = s.team;
  const int gates = static_cast<int>(s.args.gates);
  const int64_t hidden = s.args.hidden, gate_rows = gates * hidden;
  const float* params = s.arrays.params;
  float* partial = as<float>(s.args.param_partials) + team.tile * (2 * gate_rows + 2 * hidden);
  for (int idx = threadIdx.x; idx < gates * team.units; idx += blockDim.x) {
    const int gate = idx / team.units, unit = idx % team.units;
    const int r = gate * team.units_cap + unit;
    const int64_t at = gate * hidden + s.hidden_index(unit);
    partial[at] = params[r];
    partial[gate_rows + at] = params[gates * team.units_cap + r];
  }
  const float* cell_params = params + 2 * gates * team.units_cap;
  for (int unit = threadIdx.x; unit < team.units; unit += blockDim.x) {
    partial[2 * gate_rows + s.hidden_index(unit)] = cell_params[unit];
    partial[2 * gate_rows + hidden + s.hidden_index(unit)] = cell_params[team.units_cap + unit];
  }
}

template <typename T, class Team, class Cell>
__global__ void __launch_bounds__(kThreads) backward_kernel(const RecurrenceArgs args) {
  extern __shared__ __align__(16) unsigned char shared[];
  const TeamSlice team = team_slice(args);
  const int gates = static_cast<int>(args.gates);
  const SharedLayout layout(gates, team.units_cap, args.hidden, team.batch_tile, sizeof(T), true,
                            args.ln_hh_weight != 0);
  const BlockArrays<T> arrays(shared, layout);
  const int64_t hidden = args.hidden, gate_rows = gates * hidden;
  const T* mask = as<const T>(args.recurrent_mask);
  const T* d_hh = as<const T>(args.d_hh);
  StepContext<T> s{args, team, arrays, as<float>(args.scratch),
                   scratch_region_floats(args.plan.tiles, team.batch_tile, team.blocks),
                   static_cast<uint64_t>(*as<const int64_t>(args.seed)), 0};
  float* dh = arrays.cell(kDhCarry);
  const float* recurrent_grad = arrays.cell(kRecurrentGrad);

  load_gate_columns(arrays.weights, as<const T>(args.w_hh), team, gates);
  for (int idx = threadIdx.x; idx < SharedLayout::param_floats(gates, team.units_cap); idx += blockDim.x) {
    arrays.params[idx] = 0.0f;
  }
  load_block_cells(s, args.grad_h_n, dh);
  if (args.d_h_reset != 0) zero_block_cells(s, args.d_h_reset);
  Cell::backward_init(s);
  __syncthreads();

  for (int64_t step = args.steps - 1; step >= 0; --step) {
    s.t = time_of_step(step, args.steps, args.reverse);
    Cell::template backward_step<T, Team>(s);
    recurrent_norm_backward<T, Team>(s);
    Team::sync();  // d_hh[t] of every unit is complete
    block_matvec(arrays.weights, team.units_cap, gate_rows, arrays.stage, team,
                 [&](int b, int64_t k) { return load_shared_by_team(d_hh + s.step_row(b) * gate_rows + k); },
                 arrays.cell(kRecurrentGrad));
    for_each_cell(team, [&](int unit, int b, int i) {
      if (!s.active(b)) return;  // a skipped step passes d h through unchanged
      const int64_t at = s.batch_index(b) * hidden + s.hidden_index(unit);
      const float scale = mask == nullptr ? 1.0f : to_float(mask[at]);
      dh[i] += scale * recurrent_grad[i];
      if (s.starts(b)) {  // the state read here was h_reset (c_reset): its gradient goes there
        dh[i] = route_episode_start(true, dh[i], as<float>(args.d_h_reset) + at);
        Cell::backward_episode_start(s, at, i);
      }
    });
  }

  store_block_cells(s, dh, args.d_h0);
  Cell::backward_finish(s);
  __syncthreads();  // the accumulators were summed with another thread mapping
  write_param_partials(s);
}

}  // namespace fastrnn
