// The per-step masks of one row on the CPU: philox.cuh's rounds over eight lanes at a time where
// the CPU has AVX2 (masks_avx2.cpp; they are most of what a regularized step costs), one word at
// a time elsewhere.  Both run philox_first_word, so the bits are those of fastrnn.masks either way
// (tests/test_cpu_backend.py checks them).
#pragma once

#include <cstdint>

#include "../philox.cuh"

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTRNN_MASK_LANES 1
#endif

namespace fastrnn {
namespace cpu {

#ifdef FASTRNN_MASK_LANES
// hit[j] for the elements first_index + j, j < n, n a multiple of 8; needs AVX2.
void mask_hits_avx2(uint64_t seed, uint32_t kind, uint64_t first_index, int64_t n,
                    uint32_t threshold, uint8_t* hit);

inline bool has_avx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
}
#endif

// hit[j] = mask_hit(seed, kind, first_index + j, threshold) for j < n.
inline void mask_hits(uint64_t seed, uint32_t kind, uint64_t first_index, int64_t n,
                      uint32_t threshold, uint8_t* hit) {
  int64_t done = 0;
#ifdef FASTRNN_MASK_LANES
  if (has_avx2()) {
    done = n - n % 8;
    mask_hits_avx2(seed, kind, first_index, done, threshold, hit);
  }
#endif
  for (int64_t j = done; j < n; ++j) {
    hit[j] = mask_hit(seed, kind, first_index + static_cast<uint64_t>(j), threshold);
  }
}

}  // namespace cpu
}  // namespace fastrnn
