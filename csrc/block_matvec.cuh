// The recurrent product of one block: out[r][b] = sum_k W_s[r][k] * input(b, k) for the block's
// weight rows (held in shared memory for the whole call) and the tile's batch rows.  The input is
// staged in float32 chunks of kChunk columns; each warp owns whole weight rows, so the
// accumulation into `out` needs no atomics and its order is fixed (deterministic results).
#pragma once

#include "dtype.cuh"
#include "shared_layout.cuh"
#include "team.cuh"

namespace fastrnn {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// `load(b, k)` gives input column k of tile row b (b < team.bt) as a float.
template <typename T, class Load>
__device__ void block_matvec(const T* weights, int rows, int64_t width, float* stage,
                             const TeamSlice& team, Load load, float* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int stage_rows = static_cast<int>(staged_rows(team.batch_tile));
  for (int idx = threadIdx.x; idx < rows * team.batch_tile; idx += blockDim.x) out[idx] = 0.0f;
  for (int64_t k0 = 0; k0 < width; k0 += kChunk) {
    const int chunk = static_cast<int>(width - k0 < kChunk ? width - k0 : kChunk);
    __syncthreads();  // the previous chunk is consumed (and `out` zeroed) before restaging
    for (int idx = threadIdx.x; idx < stage_rows * kChunk; idx += blockDim.x) {
      const int b = idx / kChunk, k = idx % kChunk;
      // Rows past the tile stay zero so that every warp can work in whole kBatchChunk groups.
      stage[idx] = (b < team.bt && k < chunk) ? load(b, k0 + k) : 0.0f;
    }
    __syncthreads();
    for (int r = warp; r < rows; r += warps) {
      const T* w = weights + r * width + k0;
      for (int b0 = 0; b0 < team.bt; b0 += kBatchChunk) {
        float acc[kBatchChunk] = {};
        for (int k = lane; k < chunk; k += 32) {
          const float wk = to_float(w[k]);
#pragma unroll
          for (int q = 0; q < kBatchChunk; ++q) acc[q] += wk * stage[(b0 + q) * kChunk + k];
        }
#pragma unroll
        for (int q = 0; q < kBatchChunk; ++q) {
          const float sum = warp_sum(acc[q]);
          if (lane == 0 && b0 + q < team.bt) out[r * team.batch_tile + b0 + q] += sum;
        }
      }
    }
  }
  __syncthreads();
}

// Forward: the block's rows of W_hh, [gate][unit][k] (rows of units past the block's share zero).
template <typename T>
__device__ void load_gate_rows(T* weights, const T* w_hh, const TeamSlice& team, int gates) {
  const int64_t hidden = team.hidden;
  const int64_t count = static_cast<int64_t>(gates) * team.units_cap * hidden;
  for (int64_t idx = threadIdx.x; idx < count; idx += blockDim.x) {
    const int64_t r = idx / hidden, k = idx % hidden;
    const int gate = static_cast<int>(r / team.units_cap), unit = static_cast<int>(r % team.units_cap);
    weights[idx] = unit < team.units ? w_hh[(gate * hidden + team.j0 + unit) * hidden + k]
                                     : from_float<T>(0.0f);
  }
}

// Backward: the block's columns of W_hh, [unit][G·H] (W_hh^T restricted to the block's units).
template <typename T>
__device__ void load_gate_columns(T* weights, const T* w_hh, const TeamSlice& team, int gates) {
  const int64_t hidden = team.hidden, rows = gates * hidden;
  const int64_t count = rows * team.units_cap;
  for (int64_t idx = threadIdx.x; idx < count; idx += blockDim.x) {
    // Consecutive threads read consecutive columns of one W_hh row (coalesced).
    const int64_t r = idx / team.units_cap;
    const int unit = static_cast<int>(idx % team.units_cap);
    weights[unit * rows + r] =
        unit < team.units ? w_hh[r * hidden + team.j0 + unit] : from_float<T>(0.0f);
  }
}

}  // namespace fastrnn
