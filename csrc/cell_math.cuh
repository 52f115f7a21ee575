// Per-element math of the cells (docs/cells.md), forward and backward, for the scalar type T of the
// gate math: float (float32, bfloat16 and float16 calls) or double (float64 calls).  Written once as
// host-device functions: the CUDA kernels call them with float, the CPU backend (csrc/cpu/) with
// float and double, and tests/test_csrc_host.py checks them on the CPU against
// fastrnn/reference.py.  Names follow docs/ops.md: a_* gate pre-activations, s the
// candidate-dropout scale, y the (normalized) cell that feeds tanh.
#pragma once

#include <math.h>

#include "host_device.cuh"
#include "host_math.cuh"

namespace fastrnn {

constexpr double kLayerNormEps = 1e-5;

// The elementary functions, picked by type so that float math stays in float (expf, not exp).  On
// the device they are CUDA's.  On the host they are host_math.cuh's branch-free polynomials
// (within an ulp or two of libm), because libm's exp and tanh are calls the compiler cannot
// vectorize, and the CPU backend's passes over a row are loops of them.
#ifdef __CUDA_ARCH__
FASTRNN_HD float math_exp(float x) { return expf(x); }
FASTRNN_HD double math_exp(double x) { return exp(x); }
FASTRNN_HD float math_tanh(float x) { return tanhf(x); }
FASTRNN_HD double math_tanh(double x) { return tanh(x); }
#else
FASTRNN_HD float math_exp(float x) { return host_exp(x); }
FASTRNN_HD double math_exp(double x) { return host_exp(x); }
FASTRNN_HD float math_tanh(float x) { return host_tanh(x); }
FASTRNN_HD double math_tanh(double x) { return host_tanh(x); }
#endif
FASTRNN_HD float math_sqrt(float x) { return sqrtf(x); }
FASTRNN_HD double math_sqrt(double x) { return sqrt(x); }

template <typename T>
FASTRNN_HD T sigmoid(T x) { return T(1) / (T(1) + math_exp(-x)); }

// ------------------------------------------------------------------------------- regularizers

// Weight w of the previous state in s_t = w * s_{t-1} + (1 - w) * s~_t: the hit mask in training,
// the expectation p in eval, 0 when zoneout is off.  The backward splits d s_t the same way:
// (1 - w) d s_t to s~_t, w d s_t straight to s_{t-1}.
template <typename T>
FASTRNN_HD T zoneout_weight(T p, bool training, bool hit) {
  if (p == T(0)) return T(0);
  if (training) return hit ? T(1) : T(0);
  return p;
}

// Exact selection for w in {0, 1}, so a training step reproduces torch.where bit for bit.
template <typename T>
FASTRNN_HD T zoneout_blend(T previous, T candidate, T w) {
  if (w == T(0)) return candidate;
  if (w == T(1)) return previous;
  return w * previous + (T(1) - w) * candidate;
}

// Inverted-dropout scale of the candidate: 0 when dropped, 1/(1-p) when kept, 1 when off or eval.
template <typename T>
FASTRNN_HD T dropout_scale(T p, bool training, bool hit) {
  if (!training || p == T(0)) return T(1);
  return hit ? T(0) : T(1) / (T(1) - p);
}

// -------------------------------------------------------------------------------------- LSTM

template <typename T>
struct LstmGatesOf {
  T i, f, g, o;
};
using LstmGates = LstmGatesOf<float>;

// c~_t = σ(f) c_{t-1} + σ(i) (s tanh(g)), before zoneout and before the cell norm.
template <typename T>
FASTRNN_HD T lstm_candidate_cell(const LstmGatesOf<T>& a, T c_prev, T s) {
  return sigmoid(a.f) * c_prev + sigmoid(a.i) * (math_tanh(a.g) * s);
}

// h~_t = σ(o) tanh(y), y = c~_t or its layer norm.
template <typename T>
FASTRNN_HD T lstm_hidden(T a_o, T y) { return sigmoid(a_o) * math_tanh(y); }

template <typename T>
struct LstmHiddenGradsOf {
  T d_o, d_y;
};
using LstmHiddenGrads = LstmHiddenGradsOf<float>;

template <typename T>
FASTRNN_HD LstmHiddenGradsOf<T> lstm_hidden_backward(T a_o, T y, T d_h) {
  const T o = sigmoid(a_o), ty = math_tanh(y);
  return {d_h * ty * o * (T(1) - o), d_h * o * (T(1) - ty * ty)};
}

template <typename T>
struct LstmCellGradsOf {
  T d_i, d_f, d_g, d_c_prev;  // d_c_prev: only the path through the forget gate
};
using LstmCellGrads = LstmCellGradsOf<float>;

template <typename T>
FASTRNN_HD LstmCellGradsOf<T> lstm_candidate_cell_backward(const LstmGatesOf<T>& a, T c_prev, T s,
                                                           T d_c) {
  const T i = sigmoid(a.i), f = sigmoid(a.f), tg = math_tanh(a.g);
  return {d_c * tg * s * i * (T(1) - i), d_c * c_prev * f * (T(1) - f),
          d_c * i * s * (T(1) - tg * tg), d_c * f};
}

// --------------------------------------------------------------------------------------- GRU

template <typename T>
struct GruStepOf {
  T a_r, a_z, a_n, h;  // saved pre-activations and h~_t (before zoneout)
};
using GruStep = GruStepOf<float>;

// PyTorch's GRU: r gates hh_n = W_hn h + b_hn (after the recurrent norm when there is one).
template <typename T>
FASTRNN_HD GruStepOf<T> gru_cell(T gx_r, T gx_z, T gx_n, T hh_r, T hh_z, T hh_n, T h_prev, T s) {
  const T a_r = gx_r + hh_r, a_z = gx_z + hh_z;
  const T r = sigmoid(a_r), z = sigmoid(a_z);
  const T a_n = gx_n + r * hh_n;
  const T n = math_tanh(a_n) * s;
  return {a_r, a_z, a_n, (T(1) - z) * n + z * h_prev};
}

template <typename T>
struct GruGradsOf {
  T d_a_r, d_a_z, d_a_n, d_hh_n, d_h_prev;  // d_h_prev: only the path through z
};
using GruGrads = GruGradsOf<float>;

template <typename T>
FASTRNN_HD GruGradsOf<T> gru_cell_backward(T a_r, T a_z, T a_n, T hh_n, T h_prev, T s, T d_h) {
  const T r = sigmoid(a_r), z = sigmoid(a_z), tn = math_tanh(a_n);
  const T n = tn * s;
  const T d_z = d_h * (h_prev - n);
  const T d_a_n = d_h * (T(1) - z) * s * (T(1) - tn * tn);
  return {d_a_n * hh_n * r * (T(1) - r), d_z * z * (T(1) - z), d_a_n, d_a_n * r, d_h * z};
}

// -------------------------------------------------------------------------------- layer norm

template <typename T>
struct PartialOf {
  T count, mean, m2;  // m2: sum of squared deviations from the partial's own mean
};
using Partial = PartialOf<float>;

template <typename T>
struct MomentsOf {
  T mean, rstd;
};
using Moments = MomentsOf<float>;

// 1/sqrt(biased variance + eps) from the sum of squared deviations m2 of count values.
template <typename T>
FASTRNN_HD T layer_norm_rstd(T m2, T count) {
  return T(1) / math_sqrt(m2 / count + T(kLayerNormEps));
}

// Mean and 1/sqrt(biased variance + eps) of the union of `parts` partials, each computed in two
// passes over its slice: merging (count, mean, m2) keeps the variance free of the cancellation
// that sum-of-squares formulas suffer when |mean| >> std.
template <class PartialAt>
FASTRNN_HD auto combine_moments(int parts, PartialAt partial_at)
    -> MomentsOf<decltype(partial_at(0).mean)> {
  using T = decltype(partial_at(0).mean);
  T count = T(0), weighted = T(0);
  for (int k = 0; k < parts; ++k) {
    const PartialOf<T> p = partial_at(k);
    count += p.count;
    weighted += p.count * p.mean;
  }
  const T mean = weighted / count;
  T m2 = T(0);
  for (int k = 0; k < parts; ++k) {
    const PartialOf<T> p = partial_at(k);
    const T shift = p.mean - mean;
    m2 += p.m2 + p.count * shift * shift;
  }
  return {mean, layer_norm_rstd(m2, count)};
}

// Gradient of v where n = (v - mean) * rstd over a group, given d_n and the group means of d_n
// and of d_n * n.
template <typename T>
FASTRNN_HD T layer_norm_input_grad(T rstd, T d_n, T n, T mean_d_n, T mean_d_n_n) {
  return rstd * (d_n - mean_d_n - n * mean_d_n_n);
}

// fastrnn.reference.norm_scale: a group whose largest |v| reaches 2^40 is normalized after
// multiplying it by a power of two that brings it near 2^40 (float statistics of values near
// 2^64 would overflow; N is invariant to the factor).  `largest` is max |v| rounded to float, as
// the reference takes it; 1 below 2^40 (and for NaN, which poisons the group anyway).
constexpr int kNormScaleExponent = 40;

template <typename T>
FASTRNN_HD T norm_scale(float largest) {
  if (!(largest >= 1099511627776.0f)) return T(1);  // 2^40
  const float shift = floorf(log2f(largest)) + 1.0f - static_cast<float>(kNormScaleExponent);
  return static_cast<T>(exp2f(-shift));
}

}  // namespace fastrnn
