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

// First output word of Philox4x32-10 for counter (index lo, index hi, kind, 0), key = seed.
FASTRNN_HD uint32_t philox_bits(uint64_t seed, uint32_t kind, uint64_t index) {
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(index);
  uint32_t c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = kind;
  uint32_t c3 = 0;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
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
