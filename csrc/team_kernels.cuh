// The kernel instances of one cell: forward and backward, for each element type, as a cluster
// team (sm_90) and as a cooperative-grid team.  launch.cu plans and launches through this table.
#pragma once

#include <stdexcept>
#include <string>

#include "backward_kernel.cuh"
#include "forward_kernel.cuh"

namespace fastrnn {

struct TeamKernels {
  const void* cluster;
  const void* grid;
};

template <typename T, class Cell>
TeamKernels team_kernels_of(bool backward) {
  if (backward) {
    return {reinterpret_cast<const void*>(&backward_kernel<T, ClusterTeam, Cell>),
            reinterpret_cast<const void*>(&backward_kernel<T, GridTeam, Cell>)};
  }
  return {reinterpret_cast<const void*>(&forward_kernel<T, ClusterTeam, Cell>),
          reinterpret_cast<const void*>(&forward_kernel<T, GridTeam, Cell>)};
}

template <class Cell>
TeamKernels team_kernels_for(bool backward, int64_t dtype) {
  switch (dtype) {
    case kFloat32: return team_kernels_of<float, Cell>(backward);
    case kBFloat16: return team_kernels_of<__nv_bfloat16, Cell>(backward);
    case kFloat16: return team_kernels_of<__half, Cell>(backward);
  }
  throw std::invalid_argument("fastrnn: unknown dtype code " + std::to_string(dtype));
}

// Defined in lstm.cu and gru.cu.
TeamKernels lstm_team_kernels(bool backward, int64_t dtype);
TeamKernels gru_team_kernels(bool backward, int64_t dtype);

}  // namespace fastrnn
