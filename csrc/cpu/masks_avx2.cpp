// masks.h's eight-lane masks, the only code compiled for AVX2 as a whole (the pragma): it includes
// nothing but philox.cuh, whose functions are always inlined, so no AVX2 copy of a shared
// function can stand in for the baseline one elsewhere.  Called only where the CPU has AVX2.
#include "masks.h"

#ifdef FASTRNN_MASK_LANES
#pragma GCC target("avx2")
#include <immintrin.h>

namespace fastrnn {
namespace cpu {
namespace {

typedef uint32_t u32x8 __attribute__((vector_size(32)));

// Eight words of the Philox state, one per element: what philox_first_word<W> needs of W.
struct Lanes {
  u32x8 v;
};
inline Lanes operator^(Lanes a, Lanes b) { return {a.v ^ b.v}; }
inline Lanes operator^(Lanes a, uint32_t k) { return {a.v ^ k}; }

// The 32-bit halves of m * x in every lane: even and odd lanes by two 32x32->64 products.
inline void mulhilo(uint32_t m, Lanes x, Lanes& hi, Lanes& lo) {
  const __m256i factor = _mm256_set1_epi32(static_cast<int>(m));
  const __m256i words = reinterpret_cast<__m256i>(x.v);
  const __m256i even = _mm256_mul_epu32(words, factor);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(words, 32), factor);
  hi.v = reinterpret_cast<u32x8>(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA));
  lo.v = reinterpret_cast<u32x8>(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA));
}

}  // namespace

void mask_hits_avx2(uint64_t seed, uint32_t kind, uint64_t first_index, int64_t n,
                    uint32_t threshold, uint8_t* hit) {
  for (int64_t j = 0; j < n; j += 8) {
    Lanes low, high;
    for (int l = 0; l < 8; ++l) {
      const uint64_t index = first_index + static_cast<uint64_t>(j + l);
      low.v[l] = static_cast<uint32_t>(index);
      high.v[l] = static_cast<uint32_t>(index >> 32);
    }
    const Lanes bits =
        philox_first_word<Lanes>(seed, low, high, Lanes{u32x8{} + kind}, Lanes{u32x8{}});
    const u32x8 hits = (bits.v >> 8) < threshold;
    for (int l = 0; l < 8; ++l) hit[j + l] = hits[l] != 0;
  }
}

}  // namespace cpu
}  // namespace fastrnn
#endif
