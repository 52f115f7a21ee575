// Marks functions that run both in kernels and on the host, so the host tests can call the very
// code the kernels run (tests/test_csrc_host.py).
#pragma once

#define FASTRNN_HD __host__ __device__ __forceinline__
