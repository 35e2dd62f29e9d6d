// The one definition of every built-in normalization.
//
// Every norm is a function of a few one-pass statistics of a gradient tensor g
// with n elements:
//
//   count   n
//   sum_abs sum |g_i|
//   sum_sq  sum g_i^2
//   max_abs max |g_i|          (0 for an empty tensor)
//   min_abs min |g_i|          (0 for an empty tensor)
//   mean    mean g_i           (0 for an empty tensor)
//   m2      sum (g_i - mean)^2 (Welford / Chan; 0 for an empty tensor)
//
// and `finalize_norm` turns them into the norm, eps added exactly once:
//
//   l1        sum_abs + eps
//   l2        sqrt(sum_sq) + eps
//   l1_l2     (sum_abs + sqrt(sum_sq)) / 2 + eps
//   avg_l1    sum_abs / n + eps
//   avg_l2    sqrt(sum_sq / n) + eps
//   avg_l1_l2 (sum_abs / n + sqrt(sum_sq / n)) / 2 + eps
//   max       max_abs + eps                      (alias: linf)
//   min_max   (max_abs + min_abs) / 2 + eps
//   std       sqrt(m2 / n) + eps                 (population std)
//
// Averages over an empty tensor are 0, so every norm of an empty tensor is eps.
//
// The per-tensor scale applied to the gradient is
//   normalize: 1 / norm
//   clip:      clipnorm / norm  if norm >= clipnorm, else 1
//
// This header is plain C++17 usable from host code and from CUDA device code
// (functions are __host__ __device__ under nvcc). It has no TensorFlow
// dependency so the CUDA sources and CuPy can include it as is.
#ifndef NORMOPT_NORM_STATS_H_
#define NORMOPT_NORM_STATS_H_

#if defined(__CUDACC_RTC__)
// NVRTC (CuPy's default compiler) has no C++ standard library headers.
#include <cuda/std/cstdint>
#else
#include <cstdint>
#endif

#if defined(__CUDACC__)
#define NORMOPT_HD __host__ __device__ __forceinline__
#include <cuda/std/cmath>
#define NORMOPT_SQRT(x) ::sqrt(x)
#else
#define NORMOPT_HD inline
#include <cmath>
#include <cstring>
#define NORMOPT_SQRT(x) std::sqrt(x)
#endif

namespace normopt {

enum class NormKind : int {
  kL1 = 0,
  kL2 = 1,
  kL1L2 = 2,
  kAvgL1 = 3,
  kAvgL2 = 4,
  kAvgL1L2 = 5,
  kMax = 6,
  kMinMax = 7,
  kStd = 8,
};

constexpr int kNumNormKinds = 9;

enum class ScaleMode : int { kNormalize = 0, kClip = 1 };

// Bit flags naming the statistics a norm reads, so kernels can skip the rest.
enum StatBits : unsigned {
  kStatSumAbs = 1u << 0,
  kStatSumSq = 1u << 1,
  kStatMaxAbs = 1u << 2,
  kStatMinAbs = 1u << 3,
  kStatMoments = 1u << 4,  // mean and m2
};

NORMOPT_HD unsigned stats_needed(NormKind kind) {
  switch (kind) {
    case NormKind::kL1:
    case NormKind::kAvgL1:
      return kStatSumAbs;
    case NormKind::kL2:
    case NormKind::kAvgL2:
      return kStatSumSq;
    case NormKind::kL1L2:
    case NormKind::kAvgL1L2:
      return kStatSumAbs | kStatSumSq;
    case NormKind::kMax:
      return kStatMaxAbs;
    case NormKind::kMinMax:
      return kStatMaxAbs | kStatMinAbs;
    case NormKind::kStd:
      return kStatMoments;
  }
  return 0;
}

// max and min that return NaN when either argument is NaN, as
// tf.reduce_max/min do: a plain `a > b ? a : b` keeps b whenever a is NaN,
// so a NaN would survive or vanish depending on the order of the merge.
template <typename Acc>
NORMOPT_HD Acc max_keep_nan(Acc a, Acc b) {
  return (a > b || a != a) ? a : b;
}
template <typename Acc>
NORMOPT_HD Acc min_keep_nan(Acc a, Acc b) {
  return (a < b || a != a) ? a : b;
}

// One-pass statistics of a block of elements, in accumulator type Acc
// (float for 16- and 32-bit inputs, double for double).
template <typename Acc>
struct NormStats {
  int64_t count;
  Acc sum_abs;
  Acc sum_sq;
  Acc max_abs;
  Acc min_abs;
  Acc mean;
  Acc m2;

  NORMOPT_HD static NormStats empty() {
    NormStats s;
    s.count = 0;
    s.sum_abs = Acc(0);
    s.sum_sq = Acc(0);
    s.max_abs = Acc(0);
    s.min_abs = Acc(0);
    s.mean = Acc(0);
    s.m2 = Acc(0);
    return s;
  }

  // Adds one element (Welford update for mean/m2). Reference path; block
  // kernels usually build per-block stats with `from_block_sums` instead.
  NORMOPT_HD void push(Acc x) {
    const Acc a = x < Acc(0) ? -x : x;
    if (count == 0) {
      max_abs = a;
      min_abs = a;
    } else {
      max_abs = max_keep_nan(a, max_abs);
      min_abs = min_keep_nan(a, min_abs);
    }
    count += 1;
    sum_abs += a;
    sum_sq += x * x;
    const Acc delta = x - mean;
    mean += delta / Acc(count);
    m2 += delta * (x - mean);
  }
};

// Chan et al. parallel merge: combining the statistics of two disjoint blocks
// gives the statistics of their union (a NaN max/min of either block stays). Merging in a fixed order gives bitwise
// reproducible results whatever the number of threads.
//   n = na + nb, d = mean_b - mean_a
//   mean = mean_a + d * nb / n
//   m2   = m2_a + m2_b + d^2 * na * nb / n
template <typename Acc>
NORMOPT_HD NormStats<Acc> merge_stats(const NormStats<Acc>& a,
                                      const NormStats<Acc>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  NormStats<Acc> r;
  r.count = a.count + b.count;
  r.sum_abs = a.sum_abs + b.sum_abs;
  r.sum_sq = a.sum_sq + b.sum_sq;
  r.max_abs = max_keep_nan(a.max_abs, b.max_abs);
  r.min_abs = min_keep_nan(a.min_abs, b.min_abs);
  const Acc n = Acc(r.count);
  const Acc na = Acc(a.count);
  const Acc nb = Acc(b.count);
  const Acc d = b.mean - a.mean;
  r.mean = a.mean + d * (nb / n);
  r.m2 = a.m2 + b.m2 + d * d * (na * nb / n);
  return r;
}

// Statistics of one block from sums that a vectorized loop gathered over it:
// `sum` is sum g_i and `centered_sq` is sum (g_i - sum / n)^2 over the block
// (a second pass over a block that is still in cache).
template <typename Acc>
NORMOPT_HD NormStats<Acc> from_block_sums(int64_t count, Acc sum_abs,
                                          Acc sum_sq, Acc max_abs,
                                          Acc min_abs, Acc sum,
                                          Acc centered_sq) {
  NormStats<Acc> s = NormStats<Acc>::empty();
  if (count == 0) return s;
  s.count = count;
  s.sum_abs = sum_abs;
  s.sum_sq = sum_sq;
  s.max_abs = max_abs;
  s.min_abs = min_abs;
  s.mean = sum / Acc(count);
  s.m2 = centered_sq;
  return s;
}

template <typename Acc>
NORMOPT_HD Acc finalize_norm(NormKind kind, const NormStats<Acc>& s, Acc eps) {
  const Acc n = Acc(s.count);
  const bool any = s.count > 0;
  const Acc avg_abs = any ? s.sum_abs / n : Acc(0);
  const Acc avg_sq = any ? s.sum_sq / n : Acc(0);
  switch (kind) {
    case NormKind::kL1:
      return s.sum_abs + eps;
    case NormKind::kL2:
      return NORMOPT_SQRT(s.sum_sq) + eps;
    case NormKind::kL1L2:
      return (s.sum_abs + NORMOPT_SQRT(s.sum_sq)) / Acc(2) + eps;
    case NormKind::kAvgL1:
      return avg_abs + eps;
    case NormKind::kAvgL2:
      return NORMOPT_SQRT(avg_sq) + eps;
    case NormKind::kAvgL1L2:
      return (avg_abs + NORMOPT_SQRT(avg_sq)) / Acc(2) + eps;
    case NormKind::kMax:
      return (any ? s.max_abs : Acc(0)) + eps;
    case NormKind::kMinMax:
      return (any ? (s.max_abs + s.min_abs) / Acc(2) : Acc(0)) + eps;
    case NormKind::kStd:
      return NORMOPT_SQRT(any ? s.m2 / n : Acc(0)) + eps;
  }
  return eps;
}

// Per-tensor multiplier applied to the gradient.
template <typename Acc>
NORMOPT_HD Acc scale_from_norm(ScaleMode mode, Acc norm, Acc clipnorm) {
  if (mode == ScaleMode::kNormalize) return Acc(1) / norm;
  return norm >= clipnorm ? clipnorm / norm : Acc(1);
}

#if !defined(__CUDACC__)
// Host-side name lookup; `linf` is an alias of `max`. Returns false for an
// unknown name.
inline bool parse_norm_kind(const char* name, NormKind* out) {
  struct Entry {
    const char* name;
    NormKind kind;
  };
  static const Entry kEntries[] = {
      {"l1", NormKind::kL1},           {"l2", NormKind::kL2},
      {"l1_l2", NormKind::kL1L2},      {"avg_l1", NormKind::kAvgL1},
      {"avg_l2", NormKind::kAvgL2},    {"avg_l1_l2", NormKind::kAvgL1L2},
      {"max", NormKind::kMax},         {"linf", NormKind::kMax},
      {"min_max", NormKind::kMinMax},  {"std", NormKind::kStd},
  };
  for (const Entry& e : kEntries) {
    if (std::strcmp(e.name, name) == 0) {
      *out = e.kind;
      return true;
    }
  }
  return false;
}

inline bool parse_scale_mode(const char* name, ScaleMode* out) {
  if (std::strcmp(name, "normalize") == 0) {
    *out = ScaleMode::kNormalize;
    return true;
  }
  if (std::strcmp(name, "clip") == 0) {
    *out = ScaleMode::kClip;
    return true;
  }
  return false;
}
#endif

}  // namespace normopt

#endif  // NORMOPT_NORM_STATS_H_
