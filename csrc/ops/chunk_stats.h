// Statistics of one contiguous chunk of a gradient, for `normopt::NormStats`.
//
// Only the statistics a norm reads (`stats_needed`) are gathered: the loop is
// instantiated per statistic set, with kLanes independent accumulators per
// statistic so the compiler vectorizes it without reassociating a single
// floating-point sum (element i of a block of kLanes goes to lane i, lanes are
// summed by a fixed tree: the order, hence the result, is fixed). For std the
// chunk's centered sum of squares is a second pass over the chunk, still in
// cache, around the chunk's own mean; chunks are then merged Chan-style.
//
// NaN: max/min lanes use plain compares (which vectorize to max/min
// instructions and skip a NaN), and a separate per-lane flag records whether
// any |g_i| was NaN; a flagged chunk reports NaN for max_abs and min_abs, as
// tf.reduce_max/min would. Sums propagate NaN by themselves.
#ifndef NORMOPT_OPS_CHUNK_STATS_H_
#define NORMOPT_OPS_CHUNK_STATS_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

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

// Lane accumulators of one chunk: one GCC/Clang vector of kLanes values per
// statistic, so every operation is lane-wise (no reassociation, no shuffles)
// and the block loop compiles to straight vector code. `Step` adds one tail
// element to lane l with the same arithmetic as the vector loop.
template <typename Acc, unsigned Need>
struct LaneAccumulators {
  static constexpr bool kSumAbs = (Need & kStatSumAbs) != 0;
  static constexpr bool kSumSq = (Need & kStatSumSq) != 0;
  static constexpr bool kMax = (Need & kStatMaxAbs) != 0;
  static constexpr bool kMin = (Need & kStatMinAbs) != 0;
  static constexpr bool kSum = (Need & kStatMoments) != 0;

  using Bits = std::conditional_t<sizeof(Acc) == 8, uint64_t, uint32_t>;
  typedef Acc Vec __attribute__((vector_size(kLanes * sizeof(Acc))));
  typedef Bits BitVec __attribute__((vector_size(kLanes * sizeof(Acc))));

  union Lanes {
    Vec v;
    Acc a[kLanes];
  };
  Lanes sum_abs, sum_sq, max_abs, min_abs, sum, nan_seen;

  LaneAccumulators() {
    for (int l = 0; l < kLanes; ++l) {
      sum_abs.a[l] = sum_sq.a[l] = max_abs.a[l] = sum.a[l] = nan_seen.a[l] =
          Acc(0);
      min_abs.a[l] = std::numeric_limits<Acc>::infinity();
    }
  }

  // Adds the kLanes elements of `v` to their lanes.
  inline void Block(Vec v) {
    // |v| by clearing the sign bit (exactly std::fabs, -0 included).
    const BitVec sign_off = ~(BitVec{} + (Bits{1} << (8 * sizeof(Acc) - 1)));
    const Vec a = reinterpret_cast<Vec>(reinterpret_cast<BitVec>(v) & sign_off);
    if constexpr (kSumAbs) sum_abs.v += a;
    if constexpr (kSumSq) sum_sq.v += v * v;
    if constexpr (kMax) max_abs.v = a > max_abs.v ? a : max_abs.v;
    if constexpr (kMin) min_abs.v = a < min_abs.v ? a : min_abs.v;
    if constexpr (kMax || kMin) {
      nan_seen.v = a != a ? Vec{} + Acc(1) : nan_seen.v;
    }
    if constexpr (kSum) sum.v += v;
  }

  inline void Step(int l, Acc v) {
    const Acc a = std::fabs(v);
    if constexpr (kSumAbs) sum_abs.a[l] += a;
    if constexpr (kSumSq) sum_sq.a[l] += v * v;
    if constexpr (kMax) max_abs.a[l] = a > max_abs.a[l] ? a : max_abs.a[l];
    if constexpr (kMin) min_abs.a[l] = a < min_abs.a[l] ? a : min_abs.a[l];
    if constexpr (kMax || kMin) {
      nan_seen.a[l] = a != a ? Acc(1) : nan_seen.a[l];
    }
    if constexpr (kSum) sum.a[l] += v;
  }
};

// kLanes consecutive elements as one accumulator vector.
template <typename T, typename Vec>
inline Vec LoadLanes(const T* x) {
  using Acc = AccType<T>;
  Vec v;
  if constexpr (std::is_same<T, Acc>::value) {
    std::memcpy(&v, x, sizeof(v));
  } else {
    Acc tmp[kLanes];
    for (int l = 0; l < kLanes; ++l) tmp[l] = ToAcc(x[l]);
    std::memcpy(&v, tmp, sizeof(v));
  }
  return v;
}

// With Scaled, the statistics of x[i] * pre (the rescue pass of
// norm_stats.h: pre is a power of two); without, of x[i] (pre unused).
template <typename T, unsigned Need, bool Scaled = false>
NormStats<AccType<T>> ChunkStatsFor(const T* __restrict x, int64_t n,
                                    AccType<T> pre = AccType<T>(1)) {
  using Acc = AccType<T>;
  using Lanes = LaneAccumulators<Acc, Need>;
  Lanes acc;
  auto load = [&](int64_t j) {
    return Scaled ? ToAcc(x[j]) * pre : ToAcc(x[j]);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    typename Lanes::Vec v = LoadLanes<T, typename Lanes::Vec>(x + i);
    if constexpr (Scaled) v *= pre;
    acc.Block(v);
  }
  for (int l = 0; i + l < n; ++l) acc.Step(l, load(i + l));

  Acc mx = Acc(0), mn = std::numeric_limits<Acc>::infinity();
  if constexpr (Lanes::kMax || Lanes::kMin) {
    bool any_nan = false;
    for (int l = 0; l < kLanes; ++l) {
      mx = acc.max_abs.a[l] > mx ? acc.max_abs.a[l] : mx;
      mn = acc.min_abs.a[l] < mn ? acc.min_abs.a[l] : mn;
      any_nan = any_nan || acc.nan_seen.a[l] != Acc(0);
    }
    if (any_nan) mx = mn = std::numeric_limits<Acc>::quiet_NaN();
  }
  const Acc total = SumLanes(acc.sum.a);
  Acc centered_sq = Acc(0);
  if constexpr (Lanes::kSum) {
    const Acc mean = total / Acc(n);
    Acc c[kLanes];
    for (int l = 0; l < kLanes; ++l) c[l] = Acc(0);
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const Acc d = load(j + l) - mean;
        c[l] += d * d;
      }
    }
    for (int l = 0; j + l < n; ++l) {
      const Acc d = load(j + l) - mean;
      c[l] += d * d;
    }
    centered_sq = SumLanes(c);
  }
  return from_block_sums<Acc>(n, SumLanes(acc.sum_abs.a), SumLanes(acc.sum_sq.a),
                              mx, mn, total, centered_sq);
}

// Dispatches to the instantiation gathering exactly stats_needed(kind) |
// Extra: one case per row of NORMOPT_NORM_KINDS, its statistics bits as the
// template argument (rows with the same bits share an instantiation). Extra
// adds statistics the caller reads besides the norm (kStatSumSq: the recorded
// L2 norm of the gradient). Every NormKind
// comes from the table; a value cast from an int outside it gets NaN
// statistics, hence a NaN norm, rather than some other norm's.
template <typename T, bool Scaled = false, unsigned Extra = 0>
NormStats<AccType<T>> ChunkStats(NormKind kind, const T* x, int64_t n,
                                 AccType<T> pre = AccType<T>(1)) {
  switch (kind) {
#define NORMOPT_CHUNK_STATS_CASE(e, code, name, stats) \
  case NormKind::e:                                    \
    return ChunkStatsFor<T, (stats) | Extra, Scaled>(x, n, pre);
    NORMOPT_NORM_KINDS(NORMOPT_CHUNK_STATS_CASE)
#undef NORMOPT_CHUNK_STATS_CASE
  }
  using Acc = AccType<T>;
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  return from_block_sums<Acc>(n, nan, nan, nan, nan, nan, nan);
}

}  // namespace normopt

#endif  // NORMOPT_OPS_CHUNK_STATS_H_
