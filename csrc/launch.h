// The boundary between the pybind11 module (bindings.cpp, plain C++) and the CUDA code: plain
// structs and host functions only, so the binding compiles without CUDA or torch headers.
#pragma once

#include <cstdint>
#include <string>

namespace fastrnn {

// How one call is split over blocks: a team of `team_blocks` blocks per batch tile, each block
// owning `units` hidden units (all gates) and keeping their W_hh slice in shared memory for all T
// steps.  A team synchronizes as a thread-block cluster (sm_90) or through a cooperative grid.
struct Plan {
  int64_t team_blocks = 0;
  int64_t units = 0;
  int64_t batch_tile = 0;
  int64_t tiles = 0;
  int64_t cluster = 0;  // 1: cluster launch; 0: cooperative grid
  int64_t smem_bytes = 0;
  int64_t scratch_floats = 0;  // float32 workspace the caller allocates for team reductions
};

// One op call (docs/ops.md).  Pointers are device addresses from torch (0 = absent); every tensor
// is contiguous.  Thresholds are fastrnn.masks.threshold(p), probabilities the same p.
struct RecurrenceArgs {
  // sizes and options
  int64_t steps = 0, batch = 0, hidden = 0, gates = 0, ln_groups = 1, dtype = 0;
  int64_t reverse = 0, training = 0;
  int64_t zoneout_cell_threshold = 0, zoneout_hidden_threshold = 0, candidate_threshold = 0;
  double zoneout_cell = 0.0, zoneout_hidden = 0.0, candidate_dropout = 0.0;
  // inputs shared by forward and backward
  uintptr_t gx = 0, w_hh = 0, b_hh = 0, ln_hh_weight = 0, ln_cell_weight = 0, ln_cell_bias = 0;
  uintptr_t h0 = 0, c0 = 0, lengths = 0, recurrent_mask = 0, seed = 0;
  // episode starts (csrc/episodes.cuh): resets [T, B] bytes (nonzero = the step reads the reset
  // state), h_reset / c_reset [B, H] in the element type; 0 = the call has no resets
  uintptr_t resets = 0, h_reset = 0, c_reset = 0;
  // forward outputs and the forward's ping-pong h state [2, B, H]; preact, cell, stats and
  // hidden_n are saved for backward, all 0 when none will follow (nothing is written then)
  uintptr_t out = 0, h_n = 0, c_n = 0, preact = 0, cell = 0, stats = 0, hidden_n = 0, state = 0;
  // backward: incoming gradients, W_hh (d ⊙ h_{t-1}) for every t when layer norm needs it
  uintptr_t grad_out = 0, grad_h_n = 0, grad_c_n = 0, hh = 0;
  // backward outputs: d_hh [T, B, G·H] is the gradient that W_hh^T multiplies (may alias d_gx),
  // param_partials [tiles, 2·G·H + 2·H] per-tile sums of d b_hh, d γ_hh, d γ_c, d β_c
  uintptr_t d_gx = 0, d_hh = 0, d_h0 = 0, d_c0 = 0, param_partials = 0;
  // with resets: d h_reset, d c_reset [B, H] float32, summed over each row's episode starts (the
  // kernel zeroes them first; every element has one owning thread, so no atomics)
  uintptr_t d_h_reset = 0, d_c_reset = 0;
  uintptr_t scratch = 0;
  Plan plan;
  uintptr_t stream = 0;  // cudaStream_t of the call (torch.cuda.current_stream().cuda_stream)
};

// Plans a call of `cell` ("lstm" or "gru") on the current device; on failure returns a Plan with
// team_blocks == 0 and says why in *refusal.
Plan plan_recurrence(const std::string& cell, bool backward, int64_t hidden, int64_t batch,
                     int64_t dtype, bool layer_norm, std::string* refusal);

// Enqueues the forward or backward kernel on args.stream; throws std::runtime_error with CUDA's
// message when a CUDA call fails.  No allocation and no host synchronization.
void launch_recurrence(const std::string& cell, bool backward, const RecurrenceArgs& args);

}  // namespace fastrnn
