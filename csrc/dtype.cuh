// The element types of a call (float32, bfloat16, float16) and their conversions.  Statistics, gate
// math and the cell state are float32 whatever the element type; h is carried in the element type.
// Conversions are explicit because torch's extension build defines __CUDA_NO_HALF_CONVERSIONS__.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "host_device.cuh"

namespace fastrnn {

// Codes passed from Python (fastrnn/backends/cuda_backend.py: _DTYPE_CODES).
enum DtypeCode : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

FASTRNN_HD float to_float(float x) { return x; }
FASTRNN_HD float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
FASTRNN_HD float to_float(__half x) { return __half2float(x); }

template <typename T> FASTRNN_HD T from_float(float x);
template <> FASTRNN_HD float from_float<float>(float x) { return x; }
template <> FASTRNN_HD __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> FASTRNN_HD __half from_float<__half>(float x) { return __float2half_rn(x); }

// x rounded to T (round to nearest even, as torch rounds), as a float.
template <typename T> FASTRNN_HD float round_to(float x) { return to_float(from_float<T>(x)); }

#ifdef __CUDACC__
// Loads from L2, never from a possibly stale L1 line: for values that other blocks of the team
// wrote before the last team barrier.
__device__ __forceinline__ float load_shared_by_team(const float* p) { return __ldcg(p); }
__device__ __forceinline__ float load_shared_by_team(const __nv_bfloat16* p) {
  return to_float(__ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load_shared_by_team(const __half* p) {
  return to_float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}
#endif

}  // namespace fastrnn
