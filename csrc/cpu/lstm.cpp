// The LSTM on the CPU (gates i, f, g, o): the per-row work of recurrence.h's time loop.
#include "cells.h"

namespace fastrnn {
namespace cpu {
namespace {

struct Lstm {
  static constexpr int64_t kGates = 4;
  static constexpr bool kCell = true;

  template <typename S>
  static int64_t scratch(const Call<S>& call) {
    return 6 * call.hidden;  // the forward's five arrays and its unsaved cell; the backward's six
  }
  template <typename S>
  static int64_t param_width(const Call<S>& call) {
    return call.ln_cell_weight == nullptr ? 0 : 2 * call.hidden;  // d γ_c, d β_c
  }

  template <typename S>
  static FASTRNN_INLINE LstmGatesOf<acc_t<S>> gates(const acc_t<S>* a, int64_t hidden, int64_t j) {
    return {a[j], a[hidden + j], a[2 * hidden + j], a[3 * hidden + j]};
  }

  template <typename S>
  static FASTRNN_INLINE void forward_row(const Call<S>& call, ForwardRow<S>& r) {
    using A = acc_t<S>;
    const int64_t hidden = call.hidden, rows = call.rows();
    // Local restrict pointers: the loops below are vectorized only when the compiler knows that
    // no store of one can change another's data (or the pointers themselves).
    A* FASTRNN_RESTRICT a = r.hh;  // becomes the pre-activations (gx + γ_hh ⊙ N(W_hh h)) + b_hh
    const S* FASTRNN_RESTRICT gx = r.gx;
    const A* FASTRNN_RESTRICT bias = call.b_hh;
    if (bias != nullptr) {
      for (int64_t k = 0; k < rows; ++k) a[k] = (static_cast<A>(gx[k]) + a[k]) + bias[k];
    } else {
      for (int64_t k = 0; k < rows; ++k) a[k] = static_cast<A>(gx[k]) + a[k];
    }
    if (r.preact != nullptr) {
      S* FASTRNN_RESTRICT preact = r.preact;
      for (int64_t k = 0; k < rows; ++k) preact[k] = static_cast<S>(a[k]);
    }
    A* FASTRNN_RESTRICT scale = r.scratch;
    A* FASTRNN_RESTRICT candidate = scale + hidden;   // c~_t
    A* FASTRNN_RESTRICT y = candidate + hidden;       // what tanh reads: c~_t or its cell norm
    A* FASTRNN_RESTRICT w_c = y + hidden;
    A* FASTRNN_RESTRICT w_h = w_c + hidden;
    A* FASTRNN_RESTRICT c = r.c;
    // Without a saved cell the values go to scratch: one loop with no branch in it.
    A* FASTRNN_RESTRICT cell = r.cell != nullptr ? r.cell : w_h + hidden;
    call.candidate_scales(scale, hidden, r.t, r.b);
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      candidate[j] = lstm_candidate_cell(gates<S>(a, hidden, j), c[j], scale[j]);
    }
    if (call.ln_cell_weight != nullptr) {
      const auto norm = group_norm(candidate, hidden);
      const A* FASTRNN_RESTRICT gamma = call.ln_cell_weight;
      const A* FASTRNN_RESTRICT beta = call.ln_cell_bias;
      for (int64_t j = 0; j < hidden; ++j) y[j] = gamma[j] * norm.normalized(candidate[j]) + beta[j];
      if (r.stats != nullptr) {
        r.stats[2 * call.groups()] = norm.saved_mean();
        r.stats[2 * call.groups() + 1] = norm.saved_rstd();
      }
    } else {
      std::copy_n(candidate, hidden, y);
    }
    call.zoneout_weights(w_c, hidden, call.options.zoneout_cell,
                         call.options.zoneout_cell_threshold, kZoneoutCell, r.t, r.b);
    call.zoneout_weights(w_h, call.width, call.options.zoneout_hidden,
                         call.options.zoneout_hidden_threshold, kZoneoutHidden, r.t, r.b);
    S* FASTRNN_RESTRICT h = r.h;
    S* FASTRNN_RESTRICT out = r.out;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      const A h_new = lstm_hidden(a[3 * hidden + j], y[j]);
      const A c_t = zoneout_blend(c[j], candidate[j], w_c[j]);
      const S h_t = static_cast<S>(zoneout_blend(static_cast<A>(h[j]), h_new, w_h[j]));
      c[j] = c_t;
      cell[j] = c_t;
      h[j] = h_t;
      out[j] = h_t;
    }
  }

  template <typename S>
  static FASTRNN_INLINE void backward_row(const Call<S>& call, BackwardRow<S>& r) {
    using A = acc_t<S>;
    const int64_t hidden = call.hidden, rows = call.rows();
    A* FASTRNN_RESTRICT scale = r.scratch;
    A* FASTRNN_RESTRICT c_prev = scale + hidden;
    A* FASTRNN_RESTRICT candidate = c_prev + hidden;  // c~_t, then N(c~_t) under the cell norm
    A* FASTRNN_RESTRICT y = candidate + hidden;
    A* FASTRNN_RESTRICT d_y = y + hidden;             // d y, then d c~_t through y
    A* FASTRNN_RESTRICT w = d_y + hidden;             // zoneout weights of h, then of c
    A* FASTRNN_RESTRICT a = r.d_after_bias;  // the pre-activations until their gradients replace them
    const S* FASTRNN_RESTRICT preact = r.preact;
    for (int64_t k = 0; k < rows; ++k) a[k] = static_cast<A>(preact[k]);
    call.candidate_scales(scale, hidden, r.t, r.b);
    if (r.c_prev != nullptr) {
      std::copy_n(r.c_prev, hidden, c_prev);
    } else {
      for (int64_t j = 0; j < hidden; ++j) c_prev[j] = static_cast<A>(r.c0[j]);
    }
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      candidate[j] = lstm_candidate_cell(gates<S>(a, hidden, j), c_prev[j], scale[j]);
    }
    const bool cell_norm = call.ln_cell_weight != nullptr;
    const A* FASTRNN_RESTRICT gamma = call.ln_cell_weight;
    GroupNorm<A> norm{};
    if (cell_norm) {
      norm = group_norm(candidate, hidden);
      const A* FASTRNN_RESTRICT beta = call.ln_cell_bias;
      FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
        candidate[j] = norm.normalized(candidate[j]);
        y[j] = gamma[j] * candidate[j] + beta[j];
      }
    } else {
      std::copy_n(candidate, hidden, y);
    }
    call.zoneout_weights(w, call.width, call.options.zoneout_hidden,
                         call.options.zoneout_hidden_threshold, kZoneoutHidden, r.t, r.b);
    const A* FASTRNN_RESTRICT dh = r.dh;
    const S* FASTRNN_RESTRICT grad_out = r.grad_out;
    A* FASTRNN_RESTRICT d_h_direct = r.d_h_direct;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      const A d_h = dh[j] + static_cast<A>(grad_out[j]);
      const auto grads = lstm_hidden_backward(a[3 * hidden + j], y[j], (A(1) - w[j]) * d_h);
      d_h_direct[j] = w[j] * d_h;
      d_y[j] = grads.d_y;
      a[3 * hidden + j] = grads.d_o;
    }
    if (cell_norm) {
      A* FASTRNN_RESTRICT params = r.params;
      FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
        params[j] += d_y[j] * candidate[j];
        params[hidden + j] += d_y[j];
        d_y[j] *= gamma[j];
      }
      group_norm_backward(d_y, candidate, hidden, norm.rstd * norm.scale, d_y);
    }
    call.zoneout_weights(w, hidden, call.options.zoneout_cell, call.options.zoneout_cell_threshold,
                         kZoneoutCell, r.t, r.b);
    A* FASTRNN_RESTRICT dc = r.dc;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      const A d_c = dc[j];
      const auto grads = lstm_candidate_cell_backward(gates<S>(a, hidden, j), c_prev[j], scale[j],
                                                      (A(1) - w[j]) * d_c + d_y[j]);
      dc[j] = w[j] * d_c + grads.d_c_prev;
      a[j] = grads.d_i;
      a[hidden + j] = grads.d_f;
      a[2 * hidden + j] = grads.d_g;
    }
    S* FASTRNN_RESTRICT d_gx = r.d_gx;
    for (int64_t k = 0; k < rows; ++k) d_gx[k] = static_cast<S>(a[k]);
  }

  template <typename S>
  static void finish_params(const Call<S>& call, const at::Tensor& sums,
                            const BackwardOutputs& results) {
    if (call.ln_cell_weight == nullptr) return;
    results.d_ln_cell_weight.copy_(sums.narrow(0, 0, call.hidden));
    results.d_ln_cell_bias.copy_(sums.narrow(0, call.hidden, call.hidden));
  }
};

}  // namespace

void lstm_forward(const CallTensors& call, const Options& options, const at::Tensor& gx,
                  const ForwardOutputs& results) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gx.scalar_type(), "fastrnn_cpu_lstm_forward", [&] {
    forward<Lstm, scalar_t>(call, options, gx, results);
  });
}

void lstm_backward(const CallTensors& call, const Options& options, const BackwardInputs& in,
                   const BackwardOutputs& results) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.preact.scalar_type(), "fastrnn_cpu_lstm_backward",
                                 [&] { backward<Lstm, scalar_t>(call, options, in, results); });
}

}  // namespace cpu
}  // namespace fastrnn
