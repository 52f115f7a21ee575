// The regularizer mask stream of fastrnn/masks.py: Philox4x32-10 keyed by the call's seed, counter
// (index, kind).  The bits must match the Python and Triton versions exactly, so masks are
// regenerated in forward and backward instead of being stored.
#pragma once

#include <cstdint>

#include "host_device.cuh"

namespace fastrnn {

// Mask kinds (fastrnn/masks.py); only the per-step ones are drawn inside kernels.
constexpr uint32_t kZoneoutCell = 0;
constexpr uint32_t kZoneoutHidden = 1;
constexpr uint32_t kCandidateDropout = 2;

// The 32-bit halves of m * x.  Overloaded for SIMD lanes of words by the CPU kernels
// (csrc/cpu/masks.h), whose overload ADL finds from philox_first_word.
FASTRNN_HD void mulhilo(uint32_t m, uint32_t x, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(m) * x;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// First output word of Philox4x32-10 for counter (c0, c1, c2, c3), key = seed: the rounds written
// once for any word type W (a uint32_t, or lanes of them with ^ and mulhilo).
template <class W>
FASTRNN_HD W philox_first_word(uint64_t seed, W c0, W c1, W c2, W c3) {
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
FASTRNN_UNROLL
  for (int round = 0; round < 10; ++round) {
    W hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// First output word of Philox4x32-10 for counter (index lo, index hi, kind, 0), key = seed.
FASTRNN_HD uint32_t philox_bits(uint64_t seed, uint32_t kind, uint64_t index) {
  return philox_first_word<uint32_t>(seed, static_cast<uint32_t>(index),
                                     static_cast<uint32_t>(index >> 32), kind, 0u);
}

// True where the element is hit (zoned out / dropped): probability threshold / 2^24, the
// threshold being fastrnn.masks.threshold(p), computed once in Python.
FASTRNN_HD bool mask_hit(uint64_t seed, uint32_t kind, uint64_t index, uint32_t threshold) {
  return (philox_bits(seed, kind, index) >> 8) < threshold;
}

// Element index of per-step masks: (t * B + b) * H + j.
FASTRNN_HD uint64_t step_mask_index(int64_t t, int64_t b, int64_t j, int64_t batch, int64_t hidden) {
  return static_cast<uint64_t>((t * batch + b) * hidden + j);
}

}  // namespace fastrnn
