// The GRU cell policy of the persistent kernels (docs/cells.md: PyTorch's GRU, gates r, z, n,
// r gating W_hn h + b_hn; layer norm on the recurrent term; zoneout of h, candidate dropout on n).
#include "team_kernels.cuh"

namespace fastrnn {
namespace {

enum GruGate { kGateR = 0, kGateZ = 1, kGateN = 2 };

struct Gru {
  template <typename T>
  __device__ static void forward_init(const StepContext<T>&) {}

  template <typename T, class Team>
  __device__ static void forward_step(const StepContext<T>& s, const T* h, T* h_next) {
    const RecurrenceArgs& args = s.args;
    const int64_t hidden = args.hidden;
    const T* gx = as<const T>(args.gx);
    T* preact = as<T>(args.preact);
    for_each_cell(s.team, [&](int unit, int b, int) {
      const int64_t j = s.hidden_index(unit);
      const int64_t at = s.batch_index(b) * hidden + j, saved_at = s.step_row(b) * hidden + j;
      const int64_t base = s.step_row(b) * 3 * hidden + j;
      if (!s.active(b)) {
        if (s.saves()) {
          for (int gate = 0; gate < 3; ++gate) preact[base + gate * hidden] = from_float<T>(0.0f);
          as<T>(args.hidden_n)[saved_at] = from_float<T>(0.0f);
        }
        as<T>(args.out)[saved_at] = from_float<T>(0.0f);
        h_next[at] = h[at];
        return;
      }
      float hh[3];
      for (int gate = 0; gate < 3; ++gate) hh[gate] = s.recurrent_term(gate, unit, b) + s.bias(gate, unit);
      const float h_prev = s.previous_hidden(h, at, b);  // h_reset at an episode start
      const GruStep step = gru_cell(to_float(gx[base]), to_float(gx[base + hidden]),
                                    to_float(gx[base + 2 * hidden]), hh[kGateR], hh[kGateZ],
                                    hh[kGateN], h_prev, s.candidate_scale(b, unit));
      const T h_new = from_float<T>(zoneout_blend(h_prev, step.h, s.zoneout_hidden_weight(b, unit)));
      if (s.saves()) {
        preact[base] = from_float<T>(step.a_r);
        preact[base + hidden] = from_float<T>(step.a_z);
        preact[base + 2 * hidden] = from_float<T>(step.a_n);
        as<T>(args.hidden_n)[saved_at] = from_float<T>(hh[kGateN]);
      }
      as<T>(args.out)[saved_at] = h_new;
      h_next[at] = h_new;
    });
  }

  template <typename T>
  __device__ static void forward_finish(const StepContext<T>&) {}

  template <typename T>
  __device__ static void backward_init(const StepContext<T>&) {}

  template <typename T>
  __device__ static void backward_episode_start(const StepContext<T>&, int64_t, int) {}  // h only

  template <typename T, class Team>
  __device__ static void backward_step(const StepContext<T>& s) {
    const RecurrenceArgs& args = s.args;
    const int64_t hidden = args.hidden;
    float* rows = s.arrays.rows;
    float* dh = s.arrays.cell(kDhCarry);
    T* d_gx = as<T>(args.d_gx);
    for_each_cell(s.team, [&](int unit, int b, int i) {
      const int64_t j = s.hidden_index(unit), batch_index = s.batch_index(b);
      const int64_t base = s.step_row(b) * 3 * hidden + j;
      if (!s.active(b)) {
        for (int gate = 0; gate < 3; ++gate) {
          rows[s.row(gate, unit, b)] = 0.0f;
          d_gx[base + gate * hidden] = from_float<T>(0.0f);
        }
        return;
      }
      const T* preact = as<const T>(args.preact) + base;
      const int64_t previous = state_read(s.t, s.length(b), args.reverse, s.starts(b));
      const float h_prev =
          previous == kResetState     ? to_float(as<const T>(args.h_reset)[batch_index * hidden + j])
          : previous == kInitialState ? to_float(as<const T>(args.h0)[batch_index * hidden + j])
                                      : to_float(as<const T>(args.out)[(previous * args.batch + batch_index) * hidden + j]);
      const float d_h = dh[i] + to_float(as<const T>(args.grad_out)[s.step_row(b) * hidden + j]);
      const float w = s.zoneout_hidden_weight(b, unit);
      const GruGrads grads = gru_cell_backward(
          to_float(preact[0]), to_float(preact[hidden]), to_float(preact[2 * hidden]),
          to_float(as<const T>(args.hidden_n)[s.step_row(b) * hidden + j]), h_prev,
          s.candidate_scale(b, unit), (1.0f - w) * d_h);
      dh[i] = w * d_h + grads.d_h_prev;  // W_hh^T d_hh is added once the team has d_hh
      rows[s.row(kGateR, unit, b)] = grads.d_a_r;
      rows[s.row(kGateZ, unit, b)] = grads.d_a_z;
      rows[s.row(kGateN, unit, b)] = grads.d_hh_n;
      d_gx[base] = from_float<T>(grads.d_a_r);
      d_gx[base + hidden] = from_float<T>(grads.d_a_z);
      d_gx[base + 2 * hidden] = from_float<T>(grads.d_a_n);
    });
  }

  template <typename T>
  __device__ static void backward_finish(const StepContext<T>&) {}
};

}  // namespace

TeamKernels gru_team_kernels(bool backward, int64_t dtype) {
  return team_kernels_for<Gru>(backward, dtype);
}

}  // namespace fastrnn
