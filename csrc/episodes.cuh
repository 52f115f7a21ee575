// Episode starts (the op's `resets`, docs/sequences.md): at a marked step a row reads the reset
// state (h_reset, c_reset) instead of the state its previous step in the call's processing order
// left (for its first processed step: instead of h0 / c0), and in the backward the gradient of
// the state read there goes to d h_reset (d c_reset), not to the previous step.  CUDA-only (the
// CPU kernels do not include it), but host-device so that tests/test_csrc_host.py runs it.
#pragma once

#include <cstdint>

#include "host_device.cuh"
#include "sequence.cuh"

namespace fastrnn {

// What `state_read` answers besides a time: the initial state, or the reset state.
constexpr int64_t kInitialState = -1;  // previous_time's answer for a sequence's first step
constexpr int64_t kResetState = -2;

// Whether step t of sequence b reads the reset state: resets [T, B] (bytes, nonzero = start;
// nullptr: the call has none) marks it and t is active (a flag at a padded step is ignored: the
// row holds its state there).
FASTRNN_HD bool episode_start(const uint8_t* resets, int64_t t, int64_t b, int64_t batch,
                              int64_t length) {
  return resets != nullptr && t < length && resets[t * batch + b] != 0;
}

// The state step t of a sequence reads: the time whose saved state it is, kInitialState (h0 /
// c0) or kResetState (h_reset / c_reset).  Only meaningful for active t.
FASTRNN_HD int64_t state_read(int64_t t, int64_t length, bool reverse, bool start) {
  return start ? kResetState : previous_time(t, length, reverse);
}

// Backward, at the end of a step: `carried` is d loss / d (the state the step read).  At an
// episode start it is added to the reset state's accumulator and nothing is carried further.
FASTRNN_HD float route_episode_start(bool start, float carried, float* reset_grad) {
  if (!start) return carried;
  *reset_grad += carried;
  return 0.0f;
}

}  // namespace fastrnn
