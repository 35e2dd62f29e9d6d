// Statistics of the units of a gradient (granularity "unit"): unit u of a
// tensor of shape (..., U) is every element whose last index is u, i.e. the
// strided column u of the tensor seen as (rows, U) in row-major order.
//
// One pass over the tensor, in tasks of up to kUnitBlock columns: a task
// reads its columns row by row (each row's piece is contiguous, so the inner
// loop over units vectorizes). Norms reading the moments go in tiles of rows
// that fit in cache: per tile, every unit gets its sums and a second pass
// over the tile gives the sum of squares around the tile's own mean; tiles
// are merged per unit in row order with merge_stats. The order is fixed, so
// the statistics are the same bits for any thread count.
#ifndef NORMOPT_OPS_UNIT_STATS_H_
#define NORMOPT_OPS_UNIT_STATS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "normopt/norm_stats.h"
#include "ops/chunk_plan.h"
#include "ops/element_types.h"

namespace normopt {

// Units per task, and elements per tile (rows * units of one task).
constexpr int64_t kUnitBlock = 256;
constexpr int64_t kUnitTileElems = int64_t{1} << 14;

// Statistics `Need` of units [u0, u1) of x (rows x units, row-major), each
// element times `pre` (a power of two: the rescue pass) when Scaled; out[k]
// receives unit u0 + k.
template <typename T, unsigned Need, bool Scaled = false>
void UnitStatsFor(const T* __restrict x, int64_t rows, int64_t units,
                  int64_t u0, int64_t u1, NormStats<AccType<T>>* out,
                  AccType<T> pre = AccType<T>(1)) {
  using Acc = AccType<T>;
  constexpr bool kMoments = (Need & kStatMoments) != 0;
  constexpr bool kMaxMin = (Need & (kStatMaxAbs | kStatMinAbs)) != 0;
  const int64_t width = u1 - u0;
  // Tiles only matter for the moments' second pass (re-reading a tile from
  // cache); without it one tile of all rows saves the per-tile merges.
  const int64_t tile_rows =
      kMoments ? std::max<int64_t>(1, kUnitTileElems / width) : rows;
  Acc sum_abs[kUnitBlock], sum_sq[kUnitBlock], mx[kUnitBlock], mn[kUnitBlock];
  Acc sum[kUnitBlock], centered[kUnitBlock], nan_seen[kUnitBlock];
  for (int64_t k = 0; k < width; ++k) out[k] = NormStats<Acc>::empty();
  auto load = [&](const T* p, int64_t k) {
    return Scaled ? ToAcc(p[k]) * pre : ToAcc(p[k]);
  };
  for (int64_t r0 = 0; r0 < rows; r0 += tile_rows) {
    const int64_t r1 = std::min(rows, r0 + tile_rows);
    for (int64_t k = 0; k < width; ++k) {
      sum_abs[k] = sum_sq[k] = mx[k] = sum[k] = centered[k] = nan_seen[k] = Acc(0);
      mn[k] = std::numeric_limits<Acc>::infinity();
    }
    for (int64_t r = r0; r < r1; ++r) {
      const T* p = x + r * units + u0;
#pragma GCC ivdep
      for (int64_t k = 0; k < width; ++k) {
        const Acc v = load(p, k);
        const Acc a = std::fabs(v);
        if constexpr ((Need & kStatSumAbs) != 0) sum_abs[k] += a;
        if constexpr ((Need & kStatSumSq) != 0) sum_sq[k] += v * v;
        if constexpr (kMaxMin) {
          mx[k] = a > mx[k] ? a : mx[k];
          mn[k] = a < mn[k] ? a : mn[k];
          nan_seen[k] = a != a ? Acc(1) : nan_seen[k];
        }
        if constexpr (kMoments) sum[k] += v;
      }
    }
    const int64_t n = r1 - r0;
    if constexpr (kMoments) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * units + u0;
#pragma GCC ivdep
        for (int64_t k = 0; k < width; ++k) {
          const Acc d = load(p, k) - sum[k] / Acc(n);
          centered[k] += d * d;
        }
      }
    }
    for (int64_t k = 0; k < width; ++k) {
      const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
      const bool flagged = nan_seen[k] != Acc(0);
      out[k] = merge_stats(
          out[k], from_block_sums<Acc>(n, sum_abs[k], sum_sq[k],
                                       flagged ? nan : mx[k],
                                       flagged ? nan : mn[k], sum[k],
                                       centered[k]));
    }
  }
}

// The same for the statistics of norm `kind` plus `Extra` (one case per row
// of NORMOPT_NORM_KINDS, as ChunkStats dispatches).
template <typename T, bool Scaled = false, unsigned Extra = 0>
void UnitStats(NormKind kind, const T* x, int64_t rows, int64_t units,
               int64_t u0, int64_t u1, NormStats<AccType<T>>* out,
               AccType<T> pre = AccType<T>(1)) {
  switch (kind) {
#define NORMOPT_UNIT_STATS_CASE(e, code, name, stats)                  \
  case NormKind::e:                                                    \
    return UnitStatsFor<T, (stats) | Extra, Scaled>(x, rows, units, u0, \
                                                    u1, out, pre);
    NORMOPT_NORM_KINDS(NORMOPT_UNIT_STATS_CASE)
#undef NORMOPT_UNIT_STATS_CASE
  }
  using Acc = AccType<T>;
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  for (int64_t k = 0; k < u1 - u0; ++k) {
    out[k] = from_block_sums<Acc>(rows, nan, nan, nan, nan, nan, nan);
  }
}

}  // namespace normopt

#endif  // NORMOPT_OPS_UNIT_STATS_H_
