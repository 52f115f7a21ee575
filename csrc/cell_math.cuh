// Per-element math of the cells (docs/cells.md), forward and backward, in float32.  Written once as
// __host__ __device__ functions: the kernels call them and tests/test_csrc_host.py checks them on
// the CPU against fastrnn/reference.py.  Names follow docs/ops.md: a_* gate pre-activations,
// s the candidate-dropout scale, y the (normalized) cell that feeds tanh.
#pragma once

#include <math.h>

#include "host_device.cuh"

namespace fastrnn {

constexpr float kLayerNormEps = 1e-5f;

FASTRNN_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// ------------------------------------------------------------------------------- regularizers

// Weight w of the previous state in s_t = w * s_{t-1} + (1 - w) * s~_t: the hit mask in training,
// the expectation p in eval, 0 when zoneout is off.
FASTRNN_HD float zoneout_weight(float p, bool training, bool hit) {
  if (p == 0.0f) return 0.0f;
  if (training) return hit ? 1.0f : 0.0f;
  return p;
}

// Exact selection for w in {0, 1}, so a training step reproduces torch.where bit for bit.
FASTRNN_HD float zoneout_blend(float previous, float candidate, float w) {
  if (w == 0.0f) return candidate;
  if (w == 1.0f) return previous;
  return w * previous + (1.0f - w) * candidate;
}

// Inverted-dropout scale of the candidate: 0 when dropped, 1/(1-p) when kept, 1 when off or eval.
FASTRNN_HD float dropout_scale(float p, bool training, bool hit) {
  if (!training || p == 0.0f) return 1.0f;
  return hit ? 0.0f : 1.0f / (1.0f - p);
}

// -------------------------------------------------------------------------------------- LSTM

struct LstmGates {
  float i, f, g, o;
};

// c~_t = σ(f) c_{t-1} + σ(i) (s tanh(g)), before zoneout and before the cell norm.
FASTRNN_HD float lstm_candidate_cell(const LstmGates& a, float c_prev, float s) {
  return sigmoid(a.f) * c_prev + sigmoid(a.i) * (tanhf(a.g) * s);
}

// h~_t = σ(o) tanh(y), y = c~_t or its layer norm.
FASTRNN_HD float lstm_hidden(float a_o, float y) { return sigmoid(a_o) * tanhf(y); }

struct LstmHiddenGrads {
  float d_o, d_y;
};

FASTRNN_HD LstmHiddenGrads lstm_hidden_backward(float a_o, float y, float d_h) {
  const float o = sigmoid(a_o), ty = tanhf(y);
  return {d_h * ty * o * (1.0f - o), d_h * o * (1.0f - ty * ty)};
}

struct LstmCellGrads {
  float d_i, d_f, d_g, d_c_prev;  // d_c_prev: only the path through the forget gate
};

FASTRNN_HD LstmCellGrads lstm_candidate_cell_backward(const LstmGates& a, float c_prev, float s,
                                                      float d_c) {
  const float i = sigmoid(a.i), f = sigmoid(a.f), tg = tanhf(a.g);
  return {d_c * tg * s * i * (1.0f - i), d_c * c_prev * f * (1.0f - f),
          d_c * i * s * (1.0f - tg * tg), d_c * f};
}

// --------------------------------------------------------------------------------------- GRU

struct GruStep {
  float a_r, a_z, a_n, h;  // saved pre-activations and h~_t (before zoneout)
};

// PyTorch's GRU: r gates hh_n = W_hn h + b_hn (after the recurrent norm when there is one).
FASTRNN_HD GruStep gru_cell(float gx_r, float gx_z, float gx_n, float hh_r, float hh_z, float hh_n,
                            float h_prev, float s) {
  const float a_r = gx_r + hh_r, a_z = gx_z + hh_z;
  const float r = sigmoid(a_r), z = sigmoid(a_z);
  const float a_n = gx_n + r * hh_n;
  const float n = tanhf(a_n) * s;
  return {a_r, a_z, a_n, (1.0f - z) * n + z * h_prev};
}

struct GruGrads {
  float d_a_r, d_a_z, d_a_n, d_hh_n, d_h_prev;  // d_h_prev: only the path through z
};

FASTRNN_HD GruGrads gru_cell_backward(float a_r, float a_z, float a_n, float hh_n, float h_prev,
                                      float s, float d_h) {
  const float r = sigmoid(a_r), z = sigmoid(a_z), tn = tanhf(a_n);
  const float n = tn * s;
  const float d_z = d_h * (h_prev - n);
  const float d_a_n = d_h * (1.0f - z) * s * (1.0f - tn * tn);
  return {d_a_n * hh_n * r * (1.0f - r), d_z * z * (1.0f - z), d_a_n, d_a_n * r, d_h * z};
}

// -------------------------------------------------------------------------------- layer norm

struct Partial {
  float count, mean, m2;  // m2: sum of squared deviations from the partial's own mean
};

struct Moments {
  float mean, rstd;
};

// Mean and 1/sqrt(biased variance + eps) of the union of `parts` partials, each computed in two
// passes over its slice: merging (count, mean, m2) keeps the variance free of the cancellation
// that sum-of-squares formulas suffer when |mean| >> std.
template <class PartialAt>
FASTRNN_HD Moments combine_moments(int parts, PartialAt partial_at) {
  float count = 0.0f, weighted = 0.0f;
  for (int k = 0; k < parts; ++k) {
    const Partial p = partial_at(k);
    count += p.count;
    weighted += p.count * p.mean;
  }
  const float mean = weighted / count;
  float m2 = 0.0f;
  for (int k = 0; k < parts; ++k) {
    const Partial p = partial_at(k);
    const float shift = p.mean - mean;
    m2 += p.m2 + p.count * shift * shift;
  }
  return {mean, 1.0f / sqrtf(m2 / count + kLayerNormEps)};
}

// Gradient of v where n = (v - mean) * rstd over a group, given d_n and the group means of d_n
// and of d_n * n.
FASTRNN_HD float layer_norm_input_grad(float rstd, float d_n, float n, float mean_d_n,
                                       float mean_d_n_n) {
  return rstd * (d_n - mean_d_n - n * mean_d_n_n);
}

}  // namespace fastrnn
