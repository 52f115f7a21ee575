// Marks functions that run both in kernels and on the host, so the host tests can call the very
// code the kernels run (tests/test_csrc_host.py) and the CPU backend (csrc/cpu/) runs it too.
// The shared headers (this one, cell_math.cuh, philox.cuh, sequence.cuh) must compile with a
// plain C++ compiler: the CPU extension is built without nvcc.
#pragma once

#ifdef __CUDACC__
#define FASTRNN_HD __host__ __device__ __forceinline__
#define FASTRNN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FASTRNN_HD inline __attribute__((always_inline))
#define FASTRNN_UNROLL _Pragma("GCC unroll 16")
#else
#define FASTRNN_HD inline
#define FASTRNN_UNROLL
#endif
