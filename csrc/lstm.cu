// The LSTM cell policy of the persistent kernels (docs/cells.md: gates i, f, g, o; layer norm on
// the recurrent term and on the cell; zoneout of c and h, candidate dropout).
#include "team_kernels.cuh"

namespace fastrnn {
namespace {

enum LstmGate { kGateI = 0, kGateF = 1, kGateG = 2, kGateO = 3 };

// What the backward recomputes of one (t, b, j) from the saved tensors.
struct LstmSaved {
  LstmGates a;
  float c_prev;
  float s;  // candidate-dropout scale
};

struct Lstm {
  template <typename T>
  __device__ static void forward_init(const StepContext<T>& s) {
    load_block_cells(s, s.args.c0, s.arrays.cell(kCellState));
  }

  template <typename T, class Team>
  __device__ static void forward_step(const StepContext<T>& s, const T* h, T* h_next) {
    const RecurrenceArgs& args = s.args;
    const int64_t hidden = args.hidden;
    const bool cell_norm = args.ln_cell_weight != 0;
    float* c = s.arrays.cell(kCellState);
    float* c_candidate = s.arrays.cell(kCellCandidate);
    float* rows = s.arrays.rows;
    T* preact = as<T>(args.preact);
    for_each_cell(s.team, [&](int unit, int b, int i) {
      const int64_t base = s.step_row(b) * 4 * hidden + s.hidden_index(unit);
      if (!s.active(b)) {
        if (s.saves()) {
          for (int gate = 0; gate < 4; ++gate) preact[base + gate * hidden] = from_float<T>(0.0f);
        }
        c_candidate[i] = 0.0f;
        return;
      }
      // An episode start reads c_reset (the zoneout of c below blends with it too).
      if (s.starts(b)) {
        c[i] = to_float(as<const T>(args.c_reset)[s.batch_index(b) * hidden + s.hidden_index(unit)]);
      }
      float a[4];
      for (int gate = 0; gate < 4; ++gate) {
        a[gate] = (to_float(as<const T>(args.gx)[base + gate * hidden]) +
                   s.recurrent_term(gate, unit, b)) + s.bias(gate, unit);
        rows[s.row(gate, unit, b)] = a[gate];  // a_o is read again after the cell norm
        if (s.saves()) preact[base + gate * hidden] = from_float<T>(a[gate]);
      }
      c_candidate[i] = lstm_candidate_cell({a[kGateI], a[kGateF], a[kGateG], a[kGateO]}, c[i],
                                           s.candidate_scale(b, unit));
    });
    if (cell_norm) {
      team_moments<Team>(s.team, c_candidate, 1, 1, s.region(1), s.arrays.stats, kCellMean, kCellRstd);
    }
    for_each_cell(s.team, [&](int unit, int b, int i) {
      const int64_t j = s.hidden_index(unit);
      const int64_t at = s.batch_index(b) * hidden + j, saved_at = s.step_row(b) * hidden + j;
      if (!s.active(b)) {
        as<T>(args.out)[saved_at] = from_float<T>(0.0f);
        if (s.saves()) as<float>(args.cell)[saved_at] = 0.0f;
        h_next[at] = h[at];
        return;
      }
      float y = c_candidate[i];
      if (cell_norm) {
        const float* stat = s.arrays.stats + b * kStatsPerRow;
        y = to_float(as<const T>(args.ln_cell_weight)[j]) * ((y - stat[kCellMean]) * stat[kCellRstd]) +
            to_float(as<const T>(args.ln_cell_bias)[j]);
      }
      const float h_candidate = lstm_hidden(rows[s.row(kGateO, unit, b)], y);
      c[i] = zoneout_blend(c[i], c_candidate[i], s.zoneout_cell_weight(b, unit));
      const T h_new = from_float<T>(zoneout_blend(s.previous_hidden(h, at, b), h_candidate,
                                                  s.zoneout_hidden_weight(b, unit)));
      as<T>(args.out)[saved_at] = h_new;
      if (s.saves()) as<float>(args.cell)[saved_at] = c[i];
      h_next[at] = h_new;
    });
  }

  template <typename T>
  __device__ static void forward_finish(const StepContext<T>& s) {
    store_block_cells(s, s.arrays.cell(kCellState), s.args.c_n);
  }

  template <typename T>
  __device__ static LstmSaved load_saved(const StepContext<T>& s, int unit, int b) {
    const RecurrenceArgs& args = s.args;
    const int64_t hidden = args.hidden, j = s.hidden_index(unit), batch_index = s.batch_index(b);
    const T* preact = as<const T>(args.preact) + s.step_row(b) * 4 * hidden + j;
    const int64_t previous = state_read(s.t, s.length(b), args.reverse, s.starts(b));
    const float c_prev =
        previous == kResetState     ? to_float(as<const T>(args.c_reset)[batch_index * hidden + j])
        : previous == kInitialState ? to_float(as<const T>(args.c0)[batch_index * hidden + j])
                                    : as<const float>(args.cell)[(previous * args.batch + batch_index) * hidden + j];
    return {{to_float(preact[0]), to_float(preact[hidden]), to_float(preact[2 * hidden]),
             to_float(preact[3 * hidden])},
            c_prev, s.candidate_scale(b, unit)};
  }

  template <typename T>
  __device__ static void backward_init(const StepContext<T>& s) {
    load_block_cells(s, s.args.grad_c_n, s.arrays.cell(kDcCarry));
    if (s.args.d_c_reset != 0) zero_block_cells(s, s.args.d_c_reset);
  }

  // At an episode start of row b (after the step's backward): d c of the state read goes to
  // d c_reset (at = batch row · H + unit), and none is carried to the previous step.
  template <typename T>
  __device__ static void backward_episode_start(const StepContext<T>& s, int64_t at, int i) {
    float* dc = s.arrays.cell(kDcCarry);
    dc[i] = route_episode_start(true, dc[i], as<float>(s.args.d_c_reset) + at);
  }

  template <typename T, class Team>
  __device__ static void backward_step(const StepContext<T>& s) {
    const RecurrenceArgs& args = s.args;
    const int64_t hidden = args.hidden;
    const int groups = static_cast<int>(args.ln_groups);
    const bool cell_norm = args.ln_cell_weight != 0;
    float* rows = s.arrays.rows;
    float* dh = s.arrays.cell(kDhCarry);
    float* dc = s.arrays.cell(kDcCarry);
    float* dc_zoneout = s.arrays.cell(kDcZoneout);
    float* d_c_hat = s.arrays.cell(kDcHat);
    float* c_hat = s.arrays.cell(kCHat);
    float* d_y = s.arrays.cell(kDyCell);
    // Pass 1: from d h through the output gate, tanh and the zoneouts, up to the cell norm.
    for_each_cell(s.team, [&](int unit, int b, int i) {
      if (!s.active(b)) {
        for (int gate = 0; gate < 4; ++gate) rows[s.row(gate, unit, b)] = 0.0f;
        d_c_hat[i] = c_hat[i] = d_y[i] = 0.0f;
        return;
      }
      const int64_t j = s.hidden_index(unit);
      const LstmSaved saved = load_saved(s, unit, b);
      const float c_candidate = lstm_candidate_cell(saved.a, saved.c_prev, saved.s);
      float y = c_candidate, normalized = 0.0f, gamma = 1.0f;
      if (cell_norm) {
        const float* stat = s.saved_stats(b);
        gamma = to_float(as<const T>(args.ln_cell_weight)[j]);
        normalized = (c_candidate - stat[2 * groups]) * stat[2 * groups + 1];
        y = gamma * normalized + to_float(as<const T>(args.ln_cell_bias)[j]);
      }
      const float d_h = dh[i] + to_float(as<const T>(args.grad_out)[s.step_row(b) * hidden + j]);
      const float w_h = s.zoneout_hidden_weight(b, unit);
      const LstmHiddenGrads grads = lstm_hidden_backward(saved.a.o, y, (1.0f - w_h) * d_h);
      dh[i] = w_h * d_h;  // W_hh^T d_hh is added once the team has d_hh
      const float w_c = s.zoneout_cell_weight(b, unit);
      dc_zoneout[i] = (1.0f - w_c) * dc[i];
      dc[i] = w_c * dc[i];
      rows[s.row(kGateO, unit, b)] = grads.d_o;
      d_y[i] = grads.d_y;
      c_hat[i] = normalized;
      d_c_hat[i] = gamma * grads.d_y;
    });
    if (cell_norm) {
      team_grad_means<Team>(s.team, d_c_hat, c_hat, 1, 1, s.region(1), s.arrays.stats, kCellMean, kCellRstd);
      float* cell_params = s.arrays.params + 2 * args.gates * s.team.units_cap;
      for (int unit = threadIdx.x; unit < s.team.units; unit += blockDim.x) {
        float d_gamma = 0.0f, d_beta = 0.0f;
        for (int b = 0; b < s.team.bt; ++b) {
          d_gamma += d_y[s.cell_index(unit, b)] * c_hat[s.cell_index(unit, b)];
          d_beta += d_y[s.cell_index(unit, b)];
        }
        cell_params[unit] += d_gamma;
        cell_params[s.team.units_cap + unit] += d_beta;
      }
    }
    // Pass 2: through the cell update to the gates i, f, g and the carried d c.
    T* d_gx = as<T>(args.d_gx);
    for_each_cell(s.team, [&](int unit, int b, int i) {
      const int64_t base = s.step_row(b) * 4 * hidden + s.hidden_index(unit);
      if (!s.active(b)) {
        for (int gate = 0; gate < 4; ++gate) d_gx[base + gate * hidden] = from_float<T>(0.0f);
        return;
      }
      const LstmSaved saved = load_saved(s, unit, b);
      const float* means = s.arrays.stats + b * kStatsPerRow;
      const float d_c_candidate = dc_zoneout[i] +
          (cell_norm ? layer_norm_input_grad(s.saved_stats(b)[2 * groups + 1], d_c_hat[i], c_hat[i],
                                             means[kCellMean], means[kCellRstd])
                     : d_c_hat[i]);  // without the cell norm d ĉ is d y
      const LstmCellGrads grads = lstm_candidate_cell_backward(saved.a, saved.c_prev, saved.s, d_c_candidate);
      dc[i] += grads.d_c_prev;
      rows[s.row(kGateI, unit, b)] = grads.d_i;
      rows[s.row(kGateF, unit, b)] = grads.d_f;
      rows[s.row(kGateG, unit, b)] = grads.d_g;
      for (int gate = 0; gate < 4; ++gate) d_gx[base + gate * hidden] = from_float<T>(rows[s.row(gate, unit, b)]);
    });
  }

  template <typename T>
  __device__ static void backward_finish(const StepContext<T>& s) {
    store_block_cells(s, s.arrays.cell(kDcCarry), s.args.d_c0);
  }
};

}  // namespace

TeamKernels lstm_team_kernels(bool backward, int64_t dtype) {
  return team_kernels_for<Lstm>(backward, dtype);
}

}  // namespace fastrnn
