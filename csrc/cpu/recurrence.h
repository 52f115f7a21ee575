// The time loop of one recurrence call on the CPU, generic in the cell (lstm.cpp, gru.cpp).
//
// Forward, per step: the recurrent product W_hh (d ⊙ h_{t-1}) of every row by one GEMM into a
// preallocated [B, G·H] buffer, then one pass over the rows (parallel with at::parallel_for)
// that does the layer norm, the gates, the regularizers and the lengths of each row, writes the
// step's outputs and leaves the row's recurrent input for the next step's GEMM.  Backward, per
// step in reverse: one pass over the rows (the cell's chain rule, then the recurrent layer norm's)
// writing d(W_hh (d ⊙ h)) of the step, then the GEMM that takes it back through W_hh; d W_hh is
// one GEMM over every step at the end.  Per-element math is csrc/cell_math.cuh's and the masks
// csrc/philox.cuh's, the very code the CUDA kernels run.
//
// Values: S is the element type of the call (float, double, BFloat16), A the type of the gate
// math, statistics and the LSTM's cell state (float, or double for double).  h is carried in S
// and the recurrent product reads it rounded to S, as the reference does (docs/ops.md).
//
// Determinism: every row is computed by one thread in a fixed order, and every sum over rows
// (the parameter gradients) is taken in row order after the loop, so the results depend on the
// thread count only through the BLAS products.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../cell_math.cuh"
#include "../philox.cuh"
#include "../sequence.cuh"
#include "blas.h"
#include "masks.h"

// Promises that a pointer's data is reached through it alone within a loop: what the compiler
// needs to vectorize the row passes.
#define FASTRNN_RESTRICT __restrict__
// The same promise for the loops over a row's units, whose arrays are slices of distinct buffers.
#define FASTRNN_IVDEP _Pragma("GCC ivdep")
// Everything a pass over rows calls is inlined into it, so that each of its clones below is
// compiled whole for its instruction set.
#define FASTRNN_INLINE inline __attribute__((always_inline))
// The passes over rows are compiled twice, for x86-64-v3 (AVX2, FMA: 8 floats a vector, which
// makes the per-element math about three times faster) and for the baseline, and the loader
// picks the clone the CPU runs (GCC's function multiversioning).  Results can differ between
// the clones in the last bits (FMA contraction), never between runs on one machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define FASTRNN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES
#endif

namespace fastrnn {
namespace cpu {

template <typename S>
using acc_t = std::conditional_t<std::is_same<S, double>::value, double, float>;

// The options of a call (fastrnn.cells.LSTMCall / GRUCall) that are not tensors.
struct Options {
  int64_t ln_groups = 1;
  double zoneout_cell = 0.0, zoneout_hidden = 0.0, candidate_dropout = 0.0;
  // fastrnn.masks.threshold of each probability, computed once in Python.
  int64_t zoneout_cell_threshold = 0, zoneout_hidden_threshold = 0, candidate_threshold = 0;
  bool training = false, reverse = false;
  int64_t seed = 0;
};

// The tensors of a call the kernels read (absent: undefined), as given by Python: contiguous,
// in the call's element type.
struct CallTensors {
  at::Tensor w_hh, b_hh, ln_hh_weight, ln_cell_weight, ln_cell_bias, h0, c0, lengths,
      recurrent_mask;
  at::Tensor resets, h_reset, c_reset;  // episode starts: [T, B] bool, [B, P], [B, H] (LSTM)
};

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Sums in double over independent lanes: exact enough for float statistics whatever the
// length, and without the serial dependence of one running sum.
template <class Term>
FASTRNN_INLINE double lane_sum(int64_t n, Term term) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(term(k + l));
  }
  for (int l = 0; k < n; ++k, ++l) lanes[l] += static_cast<double>(term(k));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// What one recurrence call reads, as raw pointers, and the questions every step asks of it.
template <typename S>
struct Call {
  using A = acc_t<S>;
  int64_t steps, batch, hidden, gates, width;  // T, B, H, G, P (= H: no projection yet)
  Options options;
  const S* gx = nullptr;                        // [T, B, G·H]
  const A* w_hh = nullptr;                      // [G·H, P] in A: the GEMMs' operand
  const A* b_hh = nullptr;                      // [G·H] in A, or null
  const A* ln_hh_weight = nullptr;              // [G·H] in A, or null: no layer norm
  const A* ln_cell_weight = nullptr;            // [H] in A (LSTM with layer norm)
  const A* ln_cell_bias = nullptr;
  const S* h0 = nullptr;                        // [B, P]
  const S* c0 = nullptr;                        // [B, H] (LSTM)
  const int64_t* lengths = nullptr;
  const S* recurrent_mask = nullptr;            // [B, P], or null
  const bool* resets = nullptr;                 // [T, B] episode starts, or null: none
  const S* h_reset = nullptr;                   // [B, P] the state an episode starts from
  const S* c_reset = nullptr;                   // [B, H] (LSTM)
  std::vector<at::Tensor> keep;                 // owners of the converted parameters

  Call(const CallTensors& t, const Options& o, int64_t steps_, int64_t gates_)
      : steps(steps_), batch(t.h0.size(0)), hidden(t.w_hh.size(0) / gates_), gates(gates_),
        width(t.w_hh.size(1)), options(o) {
    w_hh = converted(t.w_hh);
    b_hh = converted(t.b_hh);
    ln_hh_weight = converted(t.ln_hh_weight);
    ln_cell_weight = converted(t.ln_cell_weight);
    ln_cell_bias = converted(t.ln_cell_bias);
    h0 = data_or_null<S>(t.h0);
    c0 = data_or_null<S>(t.c0);
    lengths = data_or_null<int64_t>(t.lengths);
    recurrent_mask = data_or_null<S>(t.recurrent_mask);
    resets = data_or_null<bool>(t.resets);
    h_reset = data_or_null<S>(t.h_reset);
    c_reset = data_or_null<S>(t.c_reset);
    check_shapes(t);
  }

  // Python hands over well-formed calls; these checks keep a malformed direct call of the op
  // from reading out of bounds.
  void check_shapes(const CallTensors& t) const {
    auto check = [](const at::Tensor& tensor, std::vector<int64_t> shape, const char* name) {
      TORCH_CHECK(!tensor.defined() || (tensor.sizes().vec() == shape && tensor.is_contiguous()),
                  "fastrnn._cpu: ", name, " must be a contiguous tensor of shape ", shape,
                  ", got ", tensor.sizes());
    };
    TORCH_CHECK(t.w_hh.size(0) == gates * hidden, "fastrnn._cpu: w_hh must have ", gates,
                "·H rows, got ", t.w_hh.size(0));
    check(t.h0, {batch, width}, "h0");
    check(t.c0, {batch, hidden}, "c0");
    check(t.b_hh, {gates * hidden}, "b_hh");
    check(t.ln_hh_weight, {gates * hidden}, "ln_hh_weight");
    check(t.ln_cell_weight, {hidden}, "ln_cell_weight");
    check(t.ln_cell_bias, {hidden}, "ln_cell_bias");
    check(t.recurrent_mask, {batch, width}, "recurrent_mask");
    check(t.lengths, {batch}, "lengths");
    check(t.resets, {steps, batch}, "resets");
    TORCH_CHECK(!t.resets.defined() || (t.h_reset.defined() && (c0 == nullptr || t.c_reset.defined())),
                "fastrnn._cpu: resets need h_reset (and c_reset for the LSTM)");
    check(t.h_reset, {batch, width}, "h_reset");
    check(t.c_reset, {batch, hidden}, "c_reset");
    TORCH_CHECK(options.ln_groups >= 1 && (gates * hidden) % options.ln_groups == 0,
                "fastrnn._cpu: ln_groups must divide G·H, got ", options.ln_groups);
    for (int64_t b = 0; lengths != nullptr && b < batch; ++b) {
      TORCH_CHECK(lengths[b] >= 0 && lengths[b] <= steps, "fastrnn._cpu: lengths must lie in [0, ",
                  steps, "], got ", lengths[b]);
    }
  }

  // A step's tensor of B rows of n values: [steps, batch, n].
  void check_steps(const at::Tensor& tensor, int64_t n, const char* name) const {
    TORCH_CHECK(tensor.dim() == 3 && tensor.size(0) == steps && tensor.size(1) == batch &&
                    tensor.size(2) == n && tensor.is_contiguous(),
                "fastrnn._cpu: ", name, " must be a contiguous [", steps, ", ", batch, ", ", n,
                "] tensor, got ", tensor.sizes());
  }

  const A* converted(const at::Tensor& t) {
    if (!t.defined()) return nullptr;
    at::Tensor in_a = t.to(scalar_type_of<A>()).contiguous();
    keep.push_back(in_a);
    return in_a.data_ptr<A>();
  }

  int64_t rows() const { return gates * hidden; }  // G·H
  int64_t groups() const { return options.ln_groups; }
  bool layer_norm() const { return ln_hh_weight != nullptr; }
  int64_t time_of(int64_t step) const { return time_of_step(step, steps, options.reverse); }
  bool active(int64_t t, int64_t b) const { return t < sequence_length(lengths, b, steps); }
  // Whether row b starts an episode at step t: it reads the reset state, not its previous one
  // (a row past its length holds its state whatever the flag says).
  bool starts(int64_t t, int64_t b) const {
    return resets != nullptr && resets[t * batch + b] && active(t, b);
  }
  // The time whose state row b read at step t, or -1 for the initial state.
  int64_t previous(int64_t t, int64_t b) const {
    return previous_time(t, sequence_length(lengths, b, steps), options.reverse);
  }
  // The h row b read at step t (an active step): h_reset where it starts an episode, h0 at its
  // first step, else its previous step's row of `out`.
  const S* hidden_read(const S* out, int64_t t, int64_t b) const {
    if (starts(t, b)) return h_reset + b * width;
    const int64_t from = previous(t, b);
    return from < 0 ? h0 + b * width : out + (from * batch + b) * width;
  }

  // The zoneout weights w (zoneout_weight) of the n units of row b at step t.
  FASTRNN_INLINE void zoneout_weights(A* w, int64_t n, double p, int64_t threshold, uint32_t kind,
                                      int64_t t, int64_t b) const {
    const A probability = static_cast<A>(p);
    if (!(options.training && p > 0.0)) {  // no mask drawn: one weight for every unit
      std::fill_n(w, n, zoneout_weight(probability, options.training, false));
      return;
    }
    hits_in_chunks(kind, threshold, t, b, n, [&](int64_t first, int64_t count, const uint8_t* hit) {
      for (int64_t k = 0; k < count; ++k) w[first + k] = zoneout_weight(probability, true, hit[k] != 0);
    });
  }
  // The candidate-dropout scales (dropout_scale) of the n units of row b at step t.
  FASTRNN_INLINE void candidate_scales(A* s, int64_t n, int64_t t, int64_t b) const {
    const double p = options.candidate_dropout;
    const A probability = static_cast<A>(p);
    if (!(options.training && p > 0.0)) {
      std::fill_n(s, n, dropout_scale(probability, options.training, false));
      return;
    }
    hits_in_chunks(kCandidateDropout, options.candidate_threshold, t, b, n,
                   [&](int64_t first, int64_t count, const uint8_t* hit) {
                     for (int64_t k = 0; k < count; ++k) {
                       s[first + k] = dropout_scale(probability, true, hit[k] != 0);
                     }
                   });
  }
  // The hits of the mask `kind` on the n units of row b at step t, a chunk at a time.
  template <class Use>
  FASTRNN_INLINE void hits_in_chunks(uint32_t kind, int64_t threshold, int64_t t, int64_t b,
                                     int64_t n, Use use) const {
    constexpr int64_t kChunk = 256;
    uint8_t hit[kChunk];
    const uint64_t first = step_mask_index(t, b, 0, batch, n);
    for (int64_t j = 0; j < n; j += kChunk) {
      const int64_t count = std::min(kChunk, n - j);
      mask_hits(static_cast<uint64_t>(options.seed), kind, first + static_cast<uint64_t>(j), count,
                static_cast<uint32_t>(threshold), hit);
      use(j, count, hit);
    }
  }

  // The recurrent input of a row: d ⊙ h rounded to S (what the reference's product reads), in A.
  FASTRNN_INLINE void recurrent_input(const S* FASTRNN_RESTRICT h, int64_t b, A* FASTRNN_RESTRICT into) const {
    if (recurrent_mask == nullptr) {
      for (int64_t j = 0; j < width; ++j) into[j] = static_cast<A>(h[j]);
      return;
    }
    const S* FASTRNN_RESTRICT mask = recurrent_mask + b * width;
    for (int64_t j = 0; j < width; ++j) {
      into[j] = static_cast<A>(static_cast<S>(static_cast<A>(h[j]) * static_cast<A>(mask[j])));
    }
  }
};

// Layer-norm statistics of one group of n values (reference.normalize): the norm_scale factor,
// then mean and rstd of the scaled values.
template <typename A>
struct GroupNorm {
  A scale, mean, rstd;
  A normalized(A v) const { return (v * scale - mean) * rstd; }
  // The statistics the saved ``stats`` hold: those of v itself.
  float saved_mean() const { return static_cast<float>(mean / scale); }
  float saved_rstd() const { return static_cast<float>(rstd * scale); }
};

// max |v| over independent lanes (a NaN is passed over: it poisons the group's sums anyway).
template <typename A>
FASTRNN_INLINE A largest_magnitude(const A* FASTRNN_RESTRICT v, int64_t n) {
  constexpr int kLanes = 8;
  A lanes[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const A m = std::abs(v[k + l]);
      lanes[l] = m > lanes[l] ? m : lanes[l];
    }
  }
  for (int l = 0; k < n; ++k, ++l) {
    const A m = std::abs(v[k]);
    lanes[l] = m > lanes[l] ? m : lanes[l];
  }
  A largest = A(0);
  for (int l = 0; l < kLanes; ++l) largest = lanes[l] > largest ? lanes[l] : largest;
  return largest;
}

template <typename A>
FASTRNN_INLINE GroupNorm<A> group_norm(const A* FASTRNN_RESTRICT v, int64_t n) {
  const A largest = largest_magnitude(v, n);
  const A scale = norm_scale<A>(static_cast<float>(largest));
  const A mean = static_cast<A>(lane_sum(n, [&](int64_t k) { return v[k] * scale; }) / n);
  const A m2 = static_cast<A>(lane_sum(n, [&](int64_t k) {
    const A d = v[k] * scale - mean;
    return d * d;
  }));
  return {scale, mean, layer_norm_rstd(m2, static_cast<A>(n))};
}

// d v of one group from d n = d_n (reference.normalize_backward), n the normalized values.
// In place allowed: d_v may be d_n.
template <typename A>
FASTRNN_INLINE void group_norm_backward(const A* d_n, const A* FASTRNN_RESTRICT n, int64_t count, A rstd, A* d_v) {
  const A mean_d_n = static_cast<A>(lane_sum(count, [&](int64_t k) { return d_n[k]; }) / count);
  const A mean_d_n_n =
      static_cast<A>(lane_sum(count, [&](int64_t k) { return d_n[k] * n[k]; }) / count);
  for (int64_t k = 0; k < count; ++k) {
    d_v[k] = layer_norm_input_grad(rstd, d_n[k], n[k], mean_d_n, mean_d_n_n);
  }
}

// The recurrent layer norm of one row in place: hh <- γ_hh ⊙ N(hh) per group, the statistics
// (means, then rstds) into stats when given.
template <typename S>
FASTRNN_INLINE void recurrent_norm(const Call<S>& call, acc_t<S>* hh, float* stats) {
  if (!call.layer_norm()) return;
  const int64_t groups = call.groups(), per_group = call.rows() / groups;
  for (int64_t g = 0; g < groups; ++g) {
    acc_t<S>* v = hh + g * per_group;
    const auto norm = group_norm(v, per_group);
    const acc_t<S>* FASTRNN_RESTRICT gamma = call.ln_hh_weight + g * per_group;
    for (int64_t k = 0; k < per_group; ++k) v[k] = gamma[k] * norm.normalized(v[k]);
    if (stats != nullptr) {
      stats[g] = norm.saved_mean();
      stats[groups + g] = norm.saved_rstd();
    }
  }
}

// Results of a forward: out and the final states always, the saved tensors when ``save``.
struct ForwardOutputs {
  at::Tensor out, h_n, c_n;
  at::Tensor preact, middle, stats;  // undefined unless saved; middle: cell (LSTM) / hidden_n (GRU)
};

// Results of a backward, allocated by the caller in the call's element type (parameter
// gradients of absent parameters undefined).
struct BackwardOutputs {
  at::Tensor d_gx, d_w_hh, d_b_hh, d_ln_hh_weight, d_ln_cell_weight, d_ln_cell_bias, d_h0, d_c0;
  at::Tensor d_h_reset, d_c_reset;  // with episode starts
};

struct BackwardInputs {
  at::Tensor grad_out, grad_h_n, grad_c_n;       // grad_c_n: LSTM
  at::Tensor out, preact, middle, stats;         // the saved tensors
};

inline int64_t row_grain(int64_t row_work) {
  // Rows per task: a step's pass is split across threads only when each share is worth a
  // parallel region (a few microseconds of work).
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, row_work));
}

// ------------------------------------------------------------------------------------ forward

// A cell policy provides:
//   static constexpr int64_t kGates; static constexpr bool kCell (an LSTM-style carried c);
//   static int64_t scratch(const Call<S>&): A values of per-row scratch;
//   static void forward_row(const Call<S>&, ForwardRow<S>&): one active row of one step.
template <typename S>
struct ForwardRow {
  using A = acc_t<S>;
  int64_t t, b;
  const S* gx;        // [G·H] of this step and row
  A* hh;              // [G·H]: W_hh (d ⊙ h) on entry; free for the cell afterwards
  S* h;               // [P] the carried h (read, then updated)
  A* c;               // [H] the carried c (LSTM)
  S* out;             // [P] out[t, b]
  S* preact;          // [G·H] or null
  A* cell;            // [H] saved c_t (LSTM) or null
  S* hidden_n;        // [H] saved hn (GRU) or null
  float* stats;       // [stats width] or null
  A* scratch;         // the cell's per-row scratch
};

// What every row of a forward step reads and writes besides the call.
template <typename S>
struct ForwardStep {
  using A = acc_t<S>;
  int64_t t;
  A* hh;                          // [B, G·H] W_hh (d ⊙ h) of the step
  S* h;                           // [B, P] the carried h
  A* c;                           // [B, H] the carried c (LSTM)
  A* h_in;                        // [B, P] the next step's recurrent input, or null: it reads h
  S* out;                         // [T, B, P]
  S* preact;                      // [T, B, G·H] or null: nothing saved
  A* cell;                        // [T, B, H] (LSTM, saved)
  S* hidden_n;                    // [T, B, H] (GRU, saved)
  float* stats;                   // [T, B, stats_width] (saved)
  int64_t stats_width;
  A* scratch;                     // [B, scratch_stride]
  int64_t scratch_stride;
};

template <class Cell, typename S>
struct ForwardPass {
  using A = acc_t<S>;

  // Rows [begin, end) of one step, after the step's GEMM.
  FASTRNN_CLONES static void rows(const Call<S>& call, const ForwardStep<S>& p, int64_t begin,
                                  int64_t end) {
    const int64_t t = p.t, batch = call.batch, width = call.width, rows = call.rows(),
                  hidden = call.hidden;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t row = t * batch + b;
      if (!call.active(t, b)) {
        // The state is held; out and the saved rows of a skipped step are zero.
        std::fill_n(p.out + row * width, width, S(0));
        if (p.preact != nullptr) {
          std::fill_n(p.preact + row * rows, rows, S(0));
          std::fill_n(p.stats + row * p.stats_width, p.stats_width, 0.0f);
          if (p.cell != nullptr) std::fill_n(p.cell + row * hidden, hidden, A(0));
          if (p.hidden_n != nullptr) std::fill_n(p.hidden_n + row * hidden, hidden, S(0));
        }
        continue;
      }
      const bool save = p.preact != nullptr;
      ForwardRow<S> r{t,
                      b,
                      call.gx + row * rows,
                      p.hh + b * rows,
                      p.h + b * width,
                      p.c == nullptr ? nullptr : p.c + b * hidden,
                      p.out + row * width,
                      save ? p.preact + row * rows : nullptr,
                      save && p.cell != nullptr ? p.cell + row * hidden : nullptr,
                      save && p.hidden_n != nullptr ? p.hidden_n + row * hidden : nullptr,
                      save ? p.stats + row * p.stats_width : nullptr,
                      p.scratch + b * p.scratch_stride};
      recurrent_norm(call, r.hh, r.stats);
      Cell::forward_row(call, r);
      if (p.h_in != nullptr) call.recurrent_input(r.h, b, p.h_in + b * width);
    }
  }
};

// The rows that start an episode at step p.t read the reset state: it replaces the carried
// state (and the recurrent input the step's GEMM reads) before the step.
template <class Cell, typename S>
void start_episodes(const Call<S>& call, const ForwardStep<S>& p) {
  const int64_t width = call.width, hidden = call.hidden;
  for (int64_t b = 0; b < call.batch; ++b) {
    if (!call.starts(p.t, b)) continue;
    std::copy_n(call.h_reset + b * width, width, p.h + b * width);
    if (Cell::kCell) {
      for (int64_t j = 0; j < hidden; ++j) {
        p.c[b * hidden + j] = static_cast<acc_t<S>>(call.c_reset[b * hidden + j]);
      }
    }
    if (p.h_in != nullptr) call.recurrent_input(p.h + b * width, b, p.h_in + b * width);
  }
}

template <class Cell, typename S>
void forward(const CallTensors& tensors, const Options& options, const at::Tensor& gx_tensor,
             const ForwardOutputs& results) {
  using A = acc_t<S>;
  const int64_t steps = gx_tensor.size(0);
  Call<S> call(tensors, options, steps, Cell::kGates);
  call.check_steps(gx_tensor, call.rows(), "gx");
  call.check_steps(results.out, call.width, "out");
  call.gx = gx_tensor.data_ptr<S>();
  const int64_t batch = call.batch, width = call.width, rows = call.rows();
  const bool save = results.preact.defined();

  // The carried states: h in S in h_n, c in A (LSTM), both written in place step by step.
  at::Tensor h_state = results.h_n;
  h_state.copy_(tensors.h0);
  at::Tensor c_state;
  if (Cell::kCell) c_state = tensors.c0.to(scalar_type_of<A>()).contiguous().clone();
  // The GEMM reads h itself when it is already what the product reads (A = S, no mask).
  const bool direct = std::is_same<S, A>::value && call.recurrent_mask == nullptr;
  const auto a_options = at::TensorOptions().dtype(scalar_type_of<A>());
  at::Tensor h_in = direct ? at::Tensor() : at::empty({batch, width}, a_options);
  at::Tensor hh = at::empty({batch, rows}, a_options);
  at::Tensor scratch = at::empty({batch, std::max<int64_t>(1, Cell::scratch(call))}, a_options);
  ForwardStep<S> p{0,
                   hh.data_ptr<A>(),
                   h_state.data_ptr<S>(),
                   Cell::kCell ? c_state.data_ptr<A>() : nullptr,
                   direct ? nullptr : h_in.data_ptr<A>(),
                   results.out.data_ptr<S>(),
                   save ? results.preact.data_ptr<S>() : nullptr,
                   save && Cell::kCell ? results.middle.data_ptr<A>() : nullptr,
                   save && !Cell::kCell ? results.middle.data_ptr<S>() : nullptr,
                   save ? results.stats.data_ptr<float>() : nullptr,
                   save ? results.stats.size(2) : 0,
                   scratch.data_ptr<A>(),
                   scratch.size(1)};
  if (!direct) {
    for (int64_t b = 0; b < batch; ++b) call.recurrent_input(p.h + b * width, b, p.h_in + b * width);
  }
  const A* product_input = direct ? reinterpret_cast<const A*>(p.h) : p.h_in;
  for (int64_t step = 0; step < steps; ++step) {
    p.t = call.time_of(step);
    if (call.resets != nullptr) start_episodes<Cell>(call, p);
    gemm<A>(false, true, batch, rows, width, product_input, width, call.w_hh, width, A(0), p.hh,
            rows);
    at::parallel_for(0, batch, row_grain(rows), [&](int64_t begin, int64_t end) {
      ForwardPass<Cell, S>::rows(call, p, begin, end);
    });
  }
  if (Cell::kCell) results.c_n.copy_(c_state);
}

// ----------------------------------------------------------------------------------- backward

// One active row of one step of the backward, as the cell policy sees it.
template <typename S>
struct BackwardRow {
  using A = acc_t<S>;
  int64_t t, b;
  const S* preact;        // [G·H]
  const S* hidden_n;      // [H] (GRU), or null
  const S* h_prev;        // [P] the state the step read (out of the row's previous step, or h0)
  const A* c_prev;        // [H] the saved c of the row's previous step (LSTM), or null: c0
  const S* c0;            // [H] the row's c0 (LSTM)
  const S* grad_out;      // [P] of this step and row
  A* dh;                  // [P] d h_t carried (complete on entry)
  A* dc;                  // [H] d c_t carried (LSTM): updated to d c_{t-1}
  A* d_h_direct;          // [P] out: the share of d h_{t-1} that does not go through W_hh
  A* d_after_bias;        // [G·H] out: d of (γ_hh ⊙ N(W_hh h) or W_hh h) + b_hh
  S* d_gx;                // [G·H] out
  A* params;              // the row's running sums of the cell's own parameter gradients
  A* scratch;             // the cell's per-row scratch
};

// What every row of a backward step reads and writes besides the call.
template <typename S>
struct BackwardStep {
  using A = acc_t<S>;
  int64_t t;
  int64_t previous_t;        // the step processed before (its d h_{t-1} to finish), or -1
  const S* out;              // the saved [T, B, P]
  const S* preact;           // [T, B, G·H]
  const S* hidden_n;         // [T, B, H] (GRU)
  const A* cells;            // [T, B, H] (LSTM)
  const S* grad_out;         // [T, B, P]
  const A* products;         // [T, B, G·H] W_hh (d ⊙ h_{t-1}) (layer norm), or null
  A* dh;                     // [B, P] d h carried
  A* dc;                     // [B, H] d c carried (LSTM)
  A* d_h_direct;             // [B, P]
  const A* d_h_in;           // [B, P] W_hhᵀ d_products of the previous step
  A* d_products;             // [T, B, G·H]
  S* d_gx;                   // [T, B, G·H]
  A* params;                 // [B, param_width]
  int64_t param_width;
  A* scratch;                // [B, scratch_stride]
  int64_t scratch_stride;
  A* d_h_reset;              // [B, P] Σ over a row's episode starts of d of the state read, or null
  A* d_c_reset;              // [B, H] (LSTM)
};

template <class Cell, typename S>
struct BackwardPass {
  using A = acc_t<S>;

  // d h_{t-1} of row b once the GEMM has taken step t's d_products back through W_hh.
  static FASTRNN_INLINE void finish(const Call<S>& call, const BackwardStep<S>& p, int64_t t,
                                    int64_t b) {
    if (!call.active(t, b)) return;
    const int64_t width = call.width;
    A* FASTRNN_RESTRICT d = p.dh + b * width;
    const A* FASTRNN_RESTRICT direct = p.d_h_direct + b * width;
    const A* FASTRNN_RESTRICT through = p.d_h_in + b * width;
    if (call.recurrent_mask == nullptr) {
      for (int64_t j = 0; j < width; ++j) d[j] = direct[j] + through[j];
    } else {
      const S* FASTRNN_RESTRICT m = call.recurrent_mask + b * width;
      for (int64_t j = 0; j < width; ++j) d[j] = direct[j] + through[j] * static_cast<A>(m[j]);
    }
    // At an episode start d of the state read belongs to the reset state, not to step t - 1.
    if (call.starts(t, b)) move_to(d, p.d_h_reset + b * width, width);
  }

  static FASTRNN_INLINE void move_to(A* FASTRNN_RESTRICT from, A* FASTRNN_RESTRICT into, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      into[j] += from[j];
      from[j] = A(0);
    }
  }

  // Rows [begin, end) of one step: first d h of the previous step finished, then the cell's
  // chain rule and the recurrent layer norm's, down to d (W_hh (d ⊙ h)) for the step's GEMM.
  FASTRNN_CLONES static void rows(const Call<S>& call, const BackwardStep<S>& p, int64_t begin,
                                  int64_t end) {
    const int64_t t = p.t, batch = call.batch, width = call.width, rows = call.rows(),
                  hidden = call.hidden, groups = call.groups(), per_group = rows / groups;
    for (int64_t b = begin; b < end; ++b) {
      if (p.previous_t >= 0) finish(call, p, p.previous_t, b);
      const int64_t row = t * batch + b;
      A* FASTRNN_RESTRICT d_product = p.d_products + row * rows;
      if (!call.active(t, b)) {
        std::fill_n(p.d_gx + row * rows, rows, S(0));
        std::fill_n(d_product, rows, A(0));
        continue;
      }
      A* scratch = p.scratch + b * p.scratch_stride;
      A* FASTRNN_RESTRICT param_sums = p.params + b * p.param_width;
      // An episode start reads the reset state as a step without a previous one reads h0, c0.
      const bool start = call.starts(t, b);
      const int64_t previous = start ? -1 : call.previous(t, b);
      const S* initial_c = start ? call.c_reset : call.c0;
      BackwardRow<S> r{t,
                       b,
                       p.preact + row * rows,
                       p.hidden_n == nullptr ? nullptr : p.hidden_n + row * hidden,
                       call.hidden_read(p.out, t, b),
                       previous < 0 || p.cells == nullptr
                           ? nullptr
                           : p.cells + (previous * batch + b) * hidden,
                       initial_c == nullptr ? nullptr : initial_c + b * hidden,
                       p.grad_out + row * width,
                       p.dh + b * width,
                       p.dc == nullptr ? nullptr : p.dc + b * hidden,
                       p.d_h_direct + b * width,
                       scratch,
                       p.d_gx + row * rows,
                       param_sums + 2 * rows,
                       scratch + 2 * rows};
      Cell::backward_row(call, r);
      if (start && r.dc != nullptr) move_to(r.dc, p.d_c_reset + b * hidden, hidden);
      // Through the bias and the recurrent layer norm to d (W_hh (d ⊙ h)).
      const A* FASTRNN_RESTRICT d_after_bias = r.d_after_bias;
      for (int64_t k = 0; k < rows; ++k) param_sums[k] += d_after_bias[k];
      if (p.products == nullptr) {
        std::copy_n(d_after_bias, rows, d_product);
        continue;
      }
      A* FASTRNN_RESTRICT normalized = scratch + rows;
      const A* FASTRNN_RESTRICT product = p.products + row * rows;
      const A* FASTRNN_RESTRICT gamma = call.ln_hh_weight;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = g * per_group;
        const auto norm = group_norm(product + first, per_group);
        for (int64_t k = first; k < first + per_group; ++k) {
          normalized[k] = norm.normalized(product[k]);
          param_sums[rows + k] += d_after_bias[k] * normalized[k];
          // d n = γ ⊙ d(after bias), kept in d_product until the group's backward reads it.
          d_product[k] = d_after_bias[k] * gamma[k];
        }
        // rstd of v itself: the scaled rstd times the factor (reference.normalize).
        group_norm_backward(d_product + first, normalized + first, per_group,
                            norm.rstd * norm.scale, d_product + first);
      }
    }
  }

  // d ⊙ h_{t-1} of every (t, b) the forward's products read: zero on skipped steps.
  FASTRNN_CLONES static void inputs(const Call<S>& call, const S* out, A* into, int64_t begin,
                                    int64_t end) {
    const int64_t batch = call.batch, width = call.width;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row / batch, b = row % batch;
      if (!call.active(t, b)) {
        std::fill_n(into + row * width, width, A(0));
        continue;
      }
      call.recurrent_input(call.hidden_read(out, t, b), b, into + row * width);
    }
  }
};

template <class Cell, typename S>
void backward(const CallTensors& tensors, const Options& options, const BackwardInputs& in,
              const BackwardOutputs& results) {
  using A = acc_t<S>;
  const int64_t steps = in.preact.size(0);
  Call<S> call(tensors, options, steps, Cell::kGates);
  call.check_steps(in.preact, call.rows(), "preact");
  call.check_steps(in.out, call.width, "out");
  call.check_steps(in.middle, call.hidden, Cell::kCell ? "cell" : "hidden_n");
  call.check_steps(in.grad_out, call.width, "grad_out");
  call.check_steps(results.d_gx, call.rows(), "d_gx");
  const int64_t batch = call.batch, width = call.width, rows = call.rows();
  const auto a_options = at::TensorOptions().dtype(scalar_type_of<A>());
  using Pass = BackwardPass<Cell, S>;

  // What each step's product read, d ⊙ h_{t-1} for all t, and with layer norm W_hh of it,
  // recomputed by one GEMM.
  const S* out = in.out.data_ptr<S>();
  at::Tensor inputs = at::empty({steps, batch, width}, a_options);
  A* inputs_data = inputs.data_ptr<A>();
  at::parallel_for(0, steps * batch, row_grain(width), [&](int64_t begin, int64_t end) {
    Pass::inputs(call, out, inputs_data, begin, end);
  });
  at::Tensor products;
  if (call.layer_norm()) {
    products = at::empty({steps, batch, rows}, a_options);
    gemm<A>(false, true, steps * batch, rows, width, inputs_data, width, call.w_hh, width, A(0),
            products.data_ptr<A>(), rows);
  }
  // d of W_hh (d ⊙ h) for every step: the operand of the d W_hh GEMM.
  at::Tensor d_products = at::empty({steps, batch, rows}, a_options);
  at::Tensor dh = in.grad_h_n.to(scalar_type_of<A>()).contiguous().clone();
  at::Tensor dc = Cell::kCell ? in.grad_c_n.to(scalar_type_of<A>()).contiguous().clone() : at::Tensor();
  at::Tensor d_h_direct = at::zeros({batch, width}, a_options);
  at::Tensor d_h_in = at::zeros({batch, width}, a_options);
  const int64_t param_width = 2 * rows + Cell::param_width(call);  // d b_hh, d γ_hh, the cell's
  at::Tensor params = at::zeros({batch, param_width}, a_options);
  at::Tensor scratch =
      at::empty({batch, 2 * rows + std::max<int64_t>(1, Cell::scratch(call))}, a_options);
  const bool resets = call.resets != nullptr;
  at::Tensor d_h_reset = resets ? at::zeros({batch, width}, a_options) : at::Tensor();
  at::Tensor d_c_reset =
      resets && Cell::kCell ? at::zeros({batch, call.hidden}, a_options) : at::Tensor();
  BackwardStep<S> p{0,
                    -1,
                    out,
                    in.preact.data_ptr<S>(),
                    Cell::kCell ? nullptr : in.middle.data_ptr<S>(),
                    Cell::kCell ? in.middle.data_ptr<A>() : nullptr,
                    in.grad_out.data_ptr<S>(),
                    call.layer_norm() ? products.data_ptr<A>() : nullptr,
                    dh.data_ptr<A>(),
                    Cell::kCell ? dc.data_ptr<A>() : nullptr,
                    d_h_direct.data_ptr<A>(),
                    d_h_in.data_ptr<A>(),
                    d_products.data_ptr<A>(),
                    results.d_gx.data_ptr<S>(),
                    params.data_ptr<A>(),
                    param_width,
                    scratch.data_ptr<A>(),
                    scratch.size(1),
                    resets ? d_h_reset.data_ptr<A>() : nullptr,
                    d_c_reset.defined() ? d_c_reset.data_ptr<A>() : nullptr};
  A* d_products_data = p.d_products;
  for (int64_t step = steps - 1; step >= 0; --step) {
    p.t = call.time_of(step);
    at::parallel_for(0, batch, row_grain(rows), [&](int64_t begin, int64_t end) {
      Pass::rows(call, p, begin, end);
    });
    gemm<A>(false, false, batch, width, rows, d_products_data + p.t * batch * rows, rows,
            call.w_hh, width, A(0), d_h_in.data_ptr<A>(), width);
    p.previous_t = p.t;
  }
  if (p.previous_t >= 0) {
    for (int64_t b = 0; b < batch; ++b) Pass::finish(call, p, p.previous_t, b);
  }
  A* params_data = p.params;
  // d W_hh = Σ_(t, b) d_product ⊗ (d ⊙ h_{t-1}): one GEMM over every step.
  at::Tensor d_w_hh = at::empty({rows, width}, a_options);
  gemm<A>(true, false, rows, width, steps * batch, d_products_data, rows, inputs_data, width, A(0),
          d_w_hh.data_ptr<A>(), width);
  results.d_w_hh.copy_(d_w_hh);
  // The parameter gradients: the rows' sums added in row order.
  at::Tensor param_sums = at::zeros({param_width}, a_options);
  A* sums = param_sums.data_ptr<A>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t k = 0; k < param_width; ++k) sums[k] += params_data[b * param_width + k];
  }
  if (results.d_b_hh.defined()) results.d_b_hh.copy_(param_sums.narrow(0, 0, rows));
  if (results.d_ln_hh_weight.defined()) results.d_ln_hh_weight.copy_(param_sums.narrow(0, rows, rows));
  Cell::finish_params(call, param_sums.narrow(0, 2 * rows, param_width - 2 * rows), results);
  results.d_h0.copy_(dh);
  if (Cell::kCell) results.d_c0.copy_(dc);
  if (results.d_h_reset.defined()) results.d_h_reset.copy_(d_h_reset);
  if (results.d_c_reset.defined()) results.d_c_reset.copy_(d_c_reset);
}

}  // namespace cpu
}  // namespace fastrnn
