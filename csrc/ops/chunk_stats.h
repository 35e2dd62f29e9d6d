// Statistics of one contiguous chunk of a gradient, for `normopt::NormStats`.
//
// Only the statistics a norm reads (`stats_needed`) are gathered: the loop is
// instantiated per statistic set, with kLanes independent accumulators per
// statistic so the compiler vectorizes it without reassociating a single
// floating-point sum (and so the order, hence the result, is fixed). For std
// the chunk's centered sum of squares is a second pass over the chunk, still
// in cache, around the chunk's own mean; chunks are then merged Chan-style.
#ifndef NORMOPT_OPS_CHUNK_STATS_H_
#define NORMOPT_OPS_CHUNK_STATS_H_

#include <cmath>
#include <cstdint>
#include <limits>

#include "normopt/norm_stats.h"
#include "ops/element_types.h"

namespace normopt {

constexpr int kLanes = 16;

template <typename Acc>
inline Acc SumLanes(const Acc* lanes) {
  Acc t[kLanes];
  for (int l = 0; l < kLanes; ++l) t[l] = lanes[l];
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) t[l] += t[l + width];
  }
  return t[0];
}

template <typename T, unsigned Need>
NormStats<AccType<T>> ChunkStatsFor(const T* __restrict x, int64_t n) {
  using Acc = AccType<T>;
  Acc sum_abs[kLanes], sum_sq[kLanes], max_abs[kLanes], min_abs[kLanes],
      sum[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    sum_abs[l] = sum_sq[l] = max_abs[l] = sum[l] = Acc(0);
    min_abs[l] = std::numeric_limits<Acc>::infinity();
  }
  auto visit = [&](int l, Acc v) {
    const Acc a = std::fabs(v);
    if constexpr ((Need & kStatSumAbs) != 0) sum_abs[l] += a;
    if constexpr ((Need & kStatSumSq) != 0) sum_sq[l] += v * v;
    // `a != a` keeps a NaN once seen, as tf.reduce_max/min do.
    if constexpr ((Need & kStatMaxAbs) != 0) {
      max_abs[l] = (a > max_abs[l] || a != a) ? a : max_abs[l];
    }
    if constexpr ((Need & kStatMinAbs) != 0) {
      min_abs[l] = (a < min_abs[l] || a != a) ? a : min_abs[l];
    }
    if constexpr ((Need & kStatMoments) != 0) sum[l] += v;
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) visit(l, ToAcc(x[i + l]));
  }
  for (int l = 0; i + l < n; ++l) visit(l, ToAcc(x[i + l]));

  Acc mx = Acc(0), mn = std::numeric_limits<Acc>::infinity();
  for (int l = 0; l < kLanes; ++l) {
    mx = (max_abs[l] > mx || max_abs[l] != max_abs[l]) ? max_abs[l] : mx;
    mn = (min_abs[l] < mn || min_abs[l] != min_abs[l]) ? min_abs[l] : mn;
  }
  const Acc total = SumLanes(sum);
  Acc centered_sq = Acc(0);
  if constexpr ((Need & kStatMoments) != 0) {
    const Acc mean = total / Acc(n);
    Acc c[kLanes];
    for (int l = 0; l < kLanes; ++l) c[l] = Acc(0);
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const Acc d = ToAcc(x[j + l]) - mean;
        c[l] += d * d;
      }
    }
    for (int l = 0; j + l < n; ++l) {
      const Acc d = ToAcc(x[j + l]) - mean;
      c[l] += d * d;
    }
    centered_sq = SumLanes(c);
  }
  return from_block_sums<Acc>(n, SumLanes(sum_abs), SumLanes(sum_sq), mx, mn,
                              total, centered_sq);
}

// Dispatches to the instantiation gathering exactly stats_needed(kind).
template <typename T>
NormStats<AccType<T>> ChunkStats(NormKind kind, const T* x, int64_t n) {
  switch (stats_needed(kind)) {
    case kStatSumAbs:
      return ChunkStatsFor<T, kStatSumAbs>(x, n);
    case kStatSumSq:
      return ChunkStatsFor<T, kStatSumSq>(x, n);
    case kStatSumAbs | kStatSumSq:
      return ChunkStatsFor<T, kStatSumAbs | kStatSumSq>(x, n);
    case kStatMaxAbs:
      return ChunkStatsFor<T, kStatMaxAbs>(x, n);
    case kStatMaxAbs | kStatMinAbs:
      return ChunkStatsFor<T, kStatMaxAbs | kStatMinAbs>(x, n);
    default:
      return ChunkStatsFor<T, kStatMoments>(x, n);
  }
}

}  // namespace normopt

#endif  // NORMOPT_OPS_CHUNK_STATS_H_
