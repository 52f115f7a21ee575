// Time order and variable lengths (docs/sequences.md): step s of a call runs time t = s, or
// T-1-s in reverse; sequence b takes part in time t iff t < L_b, so a reversed sequence starts
// at its own L_b - 1.
#pragma once

#include <cstdint>

#include "host_device.cuh"

namespace fastrnn {

FASTRNN_HD int64_t time_of_step(int64_t step, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - step : step;
}

FASTRNN_HD int64_t sequence_length(const int64_t* lengths, int64_t b, int64_t steps) {
  return lengths == nullptr ? steps : lengths[b];
}

// The time whose state step t of sequence b reads, or -1 when t is the sequence's first step
// (the state is then h0 / c0).  Only meaningful for active t (t < length).
FASTRNN_HD int64_t previous_time(int64_t t, int64_t length, bool reverse) {
  if (reverse) return t + 1 < length ? t + 1 : -1;
  return t - 1;
}

}  // namespace fastrnn
