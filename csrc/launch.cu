// Host side of the kernels: planning a call (team size, batch tiles, shared memory) for the current
// device, and enqueuing it on the caller's stream.  Errors become std::runtime_error (RuntimeError
// in Python) carrying CUDA's message.  Nothing here allocates or synchronizes, so a launch can be
// captured in a CUDA graph.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "launch.h"
#include "team_kernels.cuh"

namespace fastrnn {
namespace {

constexpr int64_t kMaxClusterBlocks = 16;   // non-portable cluster size, Hopper's maximum
constexpr int64_t kPortableClusterBlocks = 8;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("fastrnn CUDA error in ") + what + ": " +
                             cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
  }
}

struct DeviceInfo {
  int sms = 0, shared_optin = 0, major = 0;
};

const DeviceInfo& current_device() {
  static std::mutex lock;
  static std::map<int, DeviceInfo> known;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> guard(lock);
  auto found = known.find(device);
  if (found != known.end()) return found->second;
  DeviceInfo info;
  check(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&info.shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  return known.emplace(device, info).first->second;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

TeamKernels kernels_of(const std::string& cell, bool backward, int64_t dtype) {
  if (cell == "lstm") return lstm_team_kernels(backward, dtype);
  if (cell == "gru") return gru_team_kernels(backward, dtype);
  throw std::invalid_argument("fastrnn: unknown cell '" + cell + "'");
}

int64_t gates_of(const std::string& cell) { return cell == "lstm" ? 4 : 3; }

void prepare(const void* kernel, const Plan& plan) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(plan.smem_bytes)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  if (plan.cluster && plan.team_blocks > kPortableClusterBlocks) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
          "cudaFuncSetAttribute(NonPortableClusterSizeAllowed)");
  }
}

// The launch configuration of a plan; `attribute` must outlive the returned config.
cudaLaunchConfig_t launch_config(const Plan& plan, cudaStream_t stream, cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(plan.team_blocks), static_cast<unsigned>(plan.tiles), 1);
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = static_cast<size_t>(plan.smem_bytes);
  config.stream = stream;
  if (plan.cluster) {
    attribute->id = cudaLaunchAttributeClusterDimension;
    attribute->val.clusterDim.x = static_cast<unsigned>(plan.team_blocks);
    attribute->val.clusterDim.y = 1;
    attribute->val.clusterDim.z = 1;
  } else {
    attribute->id = cudaLaunchAttributeCooperative;
    attribute->val.cooperative = 1;
  }
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// Sizes a plan for `team_blocks` blocks (rounded so that none is empty) and a batch tile; false
// when it does not fit in one block's shared memory.
bool size_plan(int64_t gates, int64_t hidden, int64_t batch, int64_t elem_size, bool layer_norm,
               bool backward, int64_t team_blocks, int64_t batch_tile, const DeviceInfo& device,
               Plan* plan) {
  const int64_t units = ceil_div(hidden, team_blocks);
  const SharedLayout layout(gates, units, hidden, batch_tile, elem_size, backward, layer_norm);
  if (layout.total > static_cast<size_t>(device.shared_optin)) return false;
  plan->units = units;
  plan->team_blocks = ceil_div(hidden, units);
  plan->batch_tile = batch_tile;
  plan->tiles = ceil_div(batch, batch_tile);
  plan->smem_bytes = static_cast<int64_t>(layout.total);
  plan->scratch_floats = 2 * scratch_region_floats(plan->tiles, batch_tile, plan->team_blocks);
  return true;
}

// Cluster teams: at most 16 blocks, so the W_hh slice of H/16 units must fit one block.  Batch
// tiles are independent clusters; aim for as many tiles as clusters the chip holds at once.
bool plan_cluster(const void* kernel, int64_t gates, int64_t hidden, int64_t batch, int64_t elem_size,
                  bool layer_norm, bool backward, const DeviceInfo& device, Plan* plan) {
  const int64_t blocks = std::min(kMaxClusterBlocks, hidden);
  const int64_t resident_teams = std::max<int64_t>(1, device.sms / blocks);
  for (int64_t tile = ceil_div(batch, resident_teams); tile >= 1; tile = tile == 1 ? 0 : ceil_div(tile, 2)) {
    Plan candidate;
    candidate.cluster = 1;
    if (!size_plan(gates, hidden, batch, elem_size, layer_norm, backward, blocks, tile, device, &candidate)) continue;
    prepare(kernel, candidate);
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(candidate, nullptr, &attribute);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
      cudaGetLastError();  // a refused cluster shape only means: try the cooperative grid
      return false;
    }
    if (clusters >= 1) {
      *plan = candidate;
      return true;
    }
  }
  return false;
}

// Cooperative teams: every block of the grid must be resident at once (one per SM planned), so
// more batch tiles mean fewer blocks per team and larger W_hh slices per block.
bool plan_grid(const void* kernel, int64_t gates, int64_t hidden, int64_t batch, int64_t elem_size,
               bool layer_norm, bool backward, const DeviceInfo& device, Plan* plan) {
  for (int64_t tiles = 1; tiles <= batch; ++tiles) {
    const int64_t blocks = std::min(hidden, device.sms / tiles);
    if (blocks < 1) return false;
    Plan candidate;
    if (!size_plan(gates, hidden, batch, elem_size, layer_norm, backward, blocks, ceil_div(batch, tiles),
                   device, &candidate)) {
      continue;
    }
    prepare(kernel, candidate);
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                        static_cast<size_t>(candidate.smem_bytes)),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (static_cast<int64_t>(per_sm) * device.sms >= candidate.team_blocks * candidate.tiles) {
      *plan = candidate;
      return true;
    }
  }
  return false;
}

}  // namespace

Plan plan_recurrence(const std::string& cell, bool backward, int64_t hidden, int64_t batch,
                     int64_t dtype, bool layer_norm, std::string* refusal) {
  const DeviceInfo& device = current_device();
  const TeamKernels kernels = kernels_of(cell, backward, dtype);
  const int64_t gates = gates_of(cell), elem_size = dtype == kFloat32 ? 4 : 2;
  Plan plan;
  if (device.major >= 9 &&
      plan_cluster(kernels.cluster, gates, hidden, batch, elem_size, layer_norm, backward, device, &plan)) {
    return plan;
  }
  if (plan_grid(kernels.grid, gates, hidden, batch, elem_size, layer_norm, backward, device, &plan)) {
    return plan;
  }
  *refusal = "the recurrent weight (" + std::to_string(gates * hidden) + " x " + std::to_string(hidden) +
             ", " + std::to_string(elem_size) + "-byte elements) does not fit in the shared memory of " +
             std::to_string(device.sms) + " co-resident blocks of " + std::to_string(device.shared_optin) +
             " bytes; use backend='triton' for this size";
  return Plan{};
}

void launch_recurrence(const std::string& cell, bool backward, const RecurrenceArgs& args) {
  const TeamKernels kernels = kernels_of(cell, backward, args.dtype);
  const void* kernel = args.plan.cluster ? kernels.cluster : kernels.grid;
  prepare(kernel, args.plan);
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(args.plan, reinterpret_cast<cudaStream_t>(args.stream), &attribute);
  RecurrenceArgs kernel_args = args;
  void* parameters[] = {&kernel_args};
  check(cudaLaunchKernelExC(&config, kernel, parameters), backward ? "backward launch" : "forward launch");
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace fastrnn
