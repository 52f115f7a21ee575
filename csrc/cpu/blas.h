// The recurrent products of the CPU backend: row-major GEMMs on raw buffers, through the BLAS
// torch links (MKL or OpenBLAS export the Fortran sgemm_ / dgemm_) when it exports one, else
// through at::mm_out on views of the same buffers.  Either way nothing is allocated for the
// result: every product writes into a buffer of the call's workspace.
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <cstdint>

extern "C" {
// Weak: resolved against libtorch_cpu when its BLAS exports them, null otherwise.
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
}

namespace fastrnn {
namespace cpu {

template <typename A>
at::ScalarType scalar_type_of();
template <>
inline at::ScalarType scalar_type_of<float>() { return at::kFloat; }
template <>
inline at::ScalarType scalar_type_of<double>() { return at::kDouble; }

inline bool fits_int(int64_t v) { return v <= INT_MAX; }

// C[m, n] = op(X)[m, k] op(Y)[k, n] + beta C, row-major; op transposes where the flag says so
// (X is then stored [k, m], Y [n, k]).
template <typename A>
void gemm(bool transpose_x, bool transpose_y, int64_t m, int64_t n, int64_t k, const A* x,
          int64_t ldx, const A* y, int64_t ldy, A beta, A* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr bool is_float = sizeof(A) == sizeof(float);
  const bool blas = (is_float ? sgemm_ != nullptr : dgemm_ != nullptr) && fits_int(m) &&
                    fits_int(n) && fits_int(k) && fits_int(ldx) && fits_int(ldy) && fits_int(ldc);
  if (blas && k > 0) {
    // Column-major BLAS sees each row-major matrix transposed: C^T = op(Y)^T op(X)^T.
    const char ty = transpose_y ? 'T' : 'N', tx = transpose_x ? 'T' : 'N';
    const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
    const int lda = static_cast<int>(ldy), ldb = static_cast<int>(ldx), ldci = static_cast<int>(ldc);
    const A one = A(1);
    if constexpr (is_float) {
      sgemm_(&ty, &tx, &mi, &ni, &ki, &one, y, &lda, x, &ldb, &beta, c, &ldci);
    } else {
      dgemm_(&ty, &tx, &mi, &ni, &ki, &one, y, &lda, x, &ldb, &beta, c, &ldci);
    }
    return;
  }
  const auto options = at::TensorOptions().dtype(scalar_type_of<A>());
  auto view = [&](const A* p, int64_t rows, int64_t cols, int64_t ld, bool transpose) {
    at::Tensor t = at::from_blob(const_cast<A*>(p), {transpose ? cols : rows, transpose ? rows : cols},
                                 {ld, 1}, options);
    return transpose ? t.t() : t;
  };
  at::Tensor result = at::from_blob(c, {m, n}, {ldc, 1}, options);
  const at::Tensor lhs = view(x, m, k, ldx, transpose_x), rhs = view(y, k, n, ldy, transpose_y);
  if (beta == A(0)) {
    at::mm_out(result, lhs, rhs);
  } else {
    at::addmm_out(result, result, lhs, rhs, beta, 1);
  }
}

}  // namespace cpu
}  // namespace fastrnn
