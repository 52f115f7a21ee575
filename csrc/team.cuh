// A team: the blocks that run one batch tile of a recurrence together, each owning a slice of the
// hidden units.  Between phases of a step they meet at a team barrier: a thread-block cluster
// barrier on sm_90, a cooperative grid barrier elsewhere.  Cross-block values (h, partial layer-norm
// statistics, d_hh) go through global memory, written before the barrier and read after it from L2.
#pragma once

#include <cooperative_groups.h>

#include "cell_math.cuh"
#include "dtype.cuh"
#include "launch.h"
#include "shared_layout.cuh"

namespace fastrnn {

namespace cg = cooperative_groups;

struct TeamSlice {
  int rank, blocks, tile;  // block rank in the team, team size, batch tile
  int units_cap, units, j0;  // units per block, this block's units (the last may have fewer), first
  int batch_tile, b0, bt;    // rows per tile, first batch row, rows in this tile
  int64_t hidden;

  __device__ int units_of(int other_rank) const {
    const int64_t left = hidden - static_cast<int64_t>(other_rank) * units_cap;
    return static_cast<int>(left < units_cap ? left : units_cap);
  }
};

// Grid (team_blocks, tiles): blockIdx.x is the rank, blockIdx.y the tile, for both team kinds
// (a cluster spans (team_blocks, 1, 1)).
__device__ inline TeamSlice team_slice(const RecurrenceArgs& args) {
  TeamSlice s;
  s.rank = blockIdx.x;
  s.blocks = gridDim.x;
  s.tile = blockIdx.y;
  s.hidden = args.hidden;
  s.units_cap = static_cast<int>(args.plan.units);
  s.j0 = s.rank * s.units_cap;
  s.units = s.units_of(s.rank);
  s.batch_tile = static_cast<int>(args.plan.batch_tile);
  s.b0 = s.tile * s.batch_tile;
  const int64_t rows_left = args.batch - s.b0;
  s.bt = static_cast<int>(rows_left < s.batch_tile ? rows_left : s.batch_tile);
  return s;
}

struct GridTeam {
  // The whole cooperative grid meets (all tiles): simpler than per-tile barriers, and tiles run
  // the same number of phases.
  __device__ static void sync() { cg::this_grid().sync(); }
};

struct ClusterTeam {
  __device__ static void sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The cluster barrier orders memory at cluster scope; the fence makes the global writes that
    // other blocks read after it visible at L2 whatever the cache policy of those writes.
    __threadfence();
    cg::this_cluster().sync();
#else
    __trap();  // cluster launches are planned only on sm_90 devices
#endif
  }
};

// Element e of LN group `group` of batch row b in a [gates][units_cap][batch_tile] array, for a
// block that owns `units` units: the group holds gates / groups whole gates.
__device__ inline int grouped_index(const TeamSlice& team, int gates_per_group, int group, int e,
                                    int b) {
  const int gate = group * gates_per_group + e / team.units;
  return (gate * team.units_cap + e % team.units) * team.batch_tile + b;
}

__device__ inline float* team_slot(float* region, const TeamSlice& team, int b, int group,
                                   int rank) {
  return region + ((static_cast<int64_t>(team.tile * team.batch_tile + b) * kMaxGroups + group) *
                       team.blocks + rank) * 2;
}

// For each (batch row, group): `local(b, group)` gives this block's float2, every block publishes
// it, and after the team barrier `merge(b, group, at)` reads all ranks' pairs via at(rank).
template <class Team, class Local, class Merge>
__device__ void team_exchange_pairs(const TeamSlice& team, int groups, float* region, Local local,
                                    Merge merge) {
  // `local` reads whole rows of shared arrays that the caller has just written with the per-cell
  // (or per-gate-element) thread mapping: those writes must be complete first.
  __syncthreads();
  for (int idx = threadIdx.x; idx < team.bt * groups; idx += blockDim.x) {
    const int b = idx / groups, group = idx % groups;
    const float2 mine = local(b, group);
    float* slot = team_slot(region, team, b, group, team.rank);
    slot[0] = mine.x;
    slot[1] = mine.y;
  }
  Team::sync();
  for (int idx = threadIdx.x; idx < team.bt * groups; idx += blockDim.x) {
    const int b = idx / groups, group = idx % groups;
    merge(b, group, [&](int rank) {
      const float* slot = team_slot(region, team, b, group, rank);
      return make_float2(load_shared_by_team(slot), load_shared_by_team(slot + 1));
    });
  }
  __syncthreads();
}

// Layer-norm statistics of `values` ([gates][units_cap][batch_tile]) over `groups` slices of the
// team's G·H values per batch row -> stats[b][mean_col + group], stats[b][rstd_col + group].
template <class Team>
__device__ void team_moments(const TeamSlice& team, const float* values, int gates, int groups,
                             float* region, float* stats, int mean_col, int rstd_col) {
  const int per_group = gates / groups;
  const int count = per_group * team.units;
  team_exchange_pairs<Team>(
      team, groups, region,
      [&](int b, int group) {
        float sum = 0.0f;
        for (int e = 0; e < count; ++e) sum += values[grouped_index(team, per_group, group, e, b)];
        const float mean = sum / count;
        float m2 = 0.0f;
        for (int e = 0; e < count; ++e) {
          const float d = values[grouped_index(team, per_group, group, e, b)] - mean;
          m2 += d * d;
        }
        return make_float2(mean, m2);
      },
      [&](int b, int group, auto at) {
        const Moments m = combine_moments(team.blocks, [&](int rank) {
          const float2 p = at(rank);
          return Partial{static_cast<float>(per_group * team.units_of(rank)), p.x, p.y};
        });
        stats[b * kStatsPerRow + mean_col + group] = m.mean;
        stats[b * kStatsPerRow + rstd_col + group] = m.rstd;
      });
}

// Group means of d_n and of d_n * n, the two sums of the layer-norm backward ->
// stats[b][first_col + group], stats[b][second_col + group].
template <class Team>
__device__ void team_grad_means(const TeamSlice& team, const float* d_n, const float* n, int gates,
                                int groups, float* region, float* stats, int first_col,
                                int second_col) {
  const int per_group = gates / groups;
  const int count = per_group * team.units;
  team_exchange_pairs<Team>(
      team, groups, region,
      [&](int b, int group) {
        float sum = 0.0f, sum_product = 0.0f;
        for (int e = 0; e < count; ++e) {
          const int i = grouped_index(team, per_group, group, e, b);
          sum += d_n[i];
          sum_product += d_n[i] * n[i];
        }
        return make_float2(sum, sum_product);
      },
      [&](int b, int group, auto at) {
        float sum = 0.0f, sum_product = 0.0f;
        for (int rank = 0; rank < team.blocks; ++rank) {
          const float2 p = at(rank);
          sum += p.x;
          sum_product += p.y;
        }
        const float total = static_cast<float>(per_group) * static_cast<float>(team.hidden);
        stats[b * kStatsPerRow + first_col + group] = sum / total;
        stats[b * kStatsPerRow + second_col + group] = sum_product / total;
      });
}

}  // namespace fastrnn
