// The GRU on the CPU (gates r, z, n; PyTorch's convention: r multiplies W_hn h + b_hn): the
// per-row work of recurrence.h's time loop.
#include "cells.h"

namespace fastrnn {
namespace cpu {
namespace {

struct Gru {
  static constexpr int64_t kGates = 3;
  static constexpr bool kCell = false;

  template <typename S>
  static int64_t scratch(const Call<S>& call) {
    // The scales and zoneout weights, then room for an unsaved step's preact and hidden_n.
    return 2 * call.hidden + 4 * call.hidden;
  }
  template <typename S>
  static int64_t param_width(const Call<S>&) {
    return 0;
  }

  // Row r.b's candidate-dropout scales, then its hidden zoneout weights, drawn into the first
  // 2·H of its scratch (the backward draws the forward's again from the seed).
  template <typename S, class Row>
  static FASTRNN_INLINE acc_t<S>* draw_masks(const Call<S>& call, const Row& r) {
    acc_t<S>* scale = r.scratch;
    call.candidate_scales(scale, call.hidden, r.t, r.b);
    call.zoneout_weights(scale + call.hidden, call.hidden, call.options.zoneout_hidden,
                         call.options.zoneout_hidden_threshold, kZoneoutHidden, r.t, r.b);
    return scale;
  }

  template <typename S>
  static FASTRNN_INLINE void forward_row(const Call<S>& call, ForwardRow<S>& r) {
    using A = acc_t<S>;
    const int64_t hidden = call.hidden, rows = call.rows();
    A* FASTRNN_RESTRICT hh = r.hh;  // γ_hh ⊙ N(W_hh h) + b_hh
    if (call.b_hh != nullptr) {
      const A* FASTRNN_RESTRICT bias = call.b_hh;
      for (int64_t k = 0; k < rows; ++k) hh[k] += bias[k];
    }
    A* FASTRNN_RESTRICT scale = draw_masks(call, r);
    A* FASTRNN_RESTRICT w = scale + hidden;
    const S* FASTRNN_RESTRICT gx = r.gx;
    S* FASTRNN_RESTRICT h = r.h;
    S* FASTRNN_RESTRICT out = r.out;
    // Without saving, the saved values go to the scratch's unused tail (one loop, no branch).
    S* FASTRNN_RESTRICT preact = r.preact != nullptr ? r.preact : reinterpret_cast<S*>(w + hidden);
    S* FASTRNN_RESTRICT hidden_n = r.preact != nullptr ? r.hidden_n : preact + rows;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      const A h_prev = static_cast<A>(h[j]);
      const auto step = gru_cell(static_cast<A>(gx[j]), static_cast<A>(gx[hidden + j]),
                                 static_cast<A>(gx[2 * hidden + j]), hh[j], hh[hidden + j],
                                 hh[2 * hidden + j], h_prev, scale[j]);
      const S h_t = static_cast<S>(zoneout_blend(h_prev, step.h, w[j]));
      h[j] = h_t;
      out[j] = h_t;
      preact[j] = static_cast<S>(step.a_r);
      preact[hidden + j] = static_cast<S>(step.a_z);
      preact[2 * hidden + j] = static_cast<S>(step.a_n);
      hidden_n[j] = static_cast<S>(hh[2 * hidden + j]);
    }
  }

  template <typename S>
  static FASTRNN_INLINE void backward_row(const Call<S>& call, BackwardRow<S>& r) {
    using A = acc_t<S>;
    const int64_t hidden = call.hidden;
    A* FASTRNN_RESTRICT scale = draw_masks(call, r);
    A* FASTRNN_RESTRICT w = scale + hidden;
    const S* FASTRNN_RESTRICT preact = r.preact;
    const S* FASTRNN_RESTRICT hidden_n = r.hidden_n;
    const S* FASTRNN_RESTRICT h_prev = r.h_prev;
    const A* FASTRNN_RESTRICT dh = r.dh;
    const S* FASTRNN_RESTRICT grad_out = r.grad_out;
    A* FASTRNN_RESTRICT d_h_direct = r.d_h_direct;
    S* FASTRNN_RESTRICT d_gx = r.d_gx;
    A* FASTRNN_RESTRICT d_after_bias = r.d_after_bias;
    FASTRNN_IVDEP
    for (int64_t j = 0; j < hidden; ++j) {
      const A d_h = dh[j] + static_cast<A>(grad_out[j]);
      const auto grads = gru_cell_backward(
          static_cast<A>(preact[j]), static_cast<A>(preact[hidden + j]),
          static_cast<A>(preact[2 * hidden + j]), static_cast<A>(hidden_n[j]),
          static_cast<A>(h_prev[j]), scale[j], (A(1) - w[j]) * d_h);
      d_h_direct[j] = w[j] * d_h + grads.d_h_prev;
      d_gx[j] = static_cast<S>(grads.d_a_r);
      d_gx[hidden + j] = static_cast<S>(grads.d_a_z);
      d_gx[2 * hidden + j] = static_cast<S>(grads.d_a_n);
      d_after_bias[j] = grads.d_a_r;
      d_after_bias[hidden + j] = grads.d_a_z;
      d_after_bias[2 * hidden + j] = grads.d_hh_n;
    }
  }

  template <typename S>
  static void finish_params(const Call<S>&, const at::Tensor&, const BackwardOutputs&) {}
};

}  // namespace

void gru_forward(const CallTensors& call, const Options& options, const at::Tensor& gx,
                 const ForwardOutputs& results) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gx.scalar_type(), "fastrnn_cpu_gru_forward", [&] {
    forward<Gru, scalar_t>(call, options, gx, results);
  });
}

void gru_backward(const CallTensors& call, const Options& options, const BackwardInputs& in,
                  const BackwardOutputs& results) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.preact.scalar_type(), "fastrnn_cpu_gru_backward",
                                 [&] { backward<Gru, scalar_t>(call, options, in, results); });
}

}  // namespace cpu
}  // namespace fastrnn
