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
//   spectral  the largest singular value of g seen as a matrix (all axes
//             but the last as rows) + eps: spectral.h, a matrix pass of its
//             own (kStatMatrix); sqrt(sum_sq) + eps, the l2 norm, for a
//             tensor of at most one axis, which is what finalize_norm gives
//
// Averages over an empty tensor are 0, so every norm of an empty tensor is eps.
//
// The norms are listed once, in NORMOPT_NORM_KINDS below (enumerator, code,
// name, statistics read), with their aliases in NORMOPT_NORM_ALIASES; the
// NormKind enum, kNumNormKinds, stats_needed, the name lookup and the list of
// accepted names in error messages are generated from it. The formula of
// each norm is its case in finalize_norm (no default: -Wswitch flags a row
// without one). normopt/kernels/_finalize.py holds the same table for
// Python; tests/test_header_tables.py checks the two against each other.
//
// A new built-in norm is therefore: its row in NORMOPT_NORM_KINDS, its case
// in finalize_norm (and its line in the list above); in Python its row in
// _finalize.NORMS and its formula in _finalize.finalize_norm (Numba) and
// normalizations.finalize_norm (TensorFlow); and its formula in the tests'
// independent reference (tests/reference.py). The compiler (-Wswitch) and
// the tests name whichever of those is missing.
//
// The per-tensor scale applied to the gradient is
//   normalize: 1 / norm
//   clip:      clipnorm / norm  if norm >= clipnorm, else 1
//
// Overflow (issue 11). Every norm is positively homogeneous: with norm0 the
// norm without eps, norm0(c * g) = c * norm0(g). When the plain statistics
// overflow although every element is finite (norm0 not finite, max|g|
// finite), the norm is recomputed from the statistics of g * 2^-k, k =
// `rescue_exponent(max|g|)` (a power of two, so the scaling is exact), as
// `rescued_norm` = norm0(g * 2^-k) * 2^k + eps. Only such a tensor pays that
// second read; every other norm is the plain formula above, bit for bit.
//
// The scale is a pair `TensorScale{pre, mult}` applied as (g * pre) * mult.
// pre is 1 (so the result is g * mult, the plain product) unless the plain
// scale would be below the smallest normal number, where a kernel run with
// denormals flushed to zero (TensorFlow's) would make it 0; then pre = 2^-k
// with k from the norm's exponent and mult = target / (norm * 2^-k).
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
#define NORMOPT_FREXP(x, e) ::frexp(x, e)
#define NORMOPT_LDEXP(x, k) ::ldexp(x, k)
#else
// Always inlined, as __forceinline__ on the device: a rule's operator() that
// GCC leaves out of line keeps the CPU element loop from vectorizing (fused
// Ftrl ran 10x slower that way).
#define NORMOPT_HD inline __attribute__((always_inline))
#include <cmath>
#include <cstring>
#include <string>
#define NORMOPT_SQRT(x) std::sqrt(x)
#define NORMOPT_FREXP(x, e) std::frexp(x, e)
#define NORMOPT_LDEXP(x, k) std::ldexp(x, k)
#endif

namespace normopt {

// Bit flags naming the statistics a norm reads, so kernels can skip the rest.
enum StatBits : unsigned {
  kStatSumAbs = 1u << 0,
  kStatSumSq = 1u << 1,
  kStatMaxAbs = 1u << 2,
  kStatMinAbs = 1u << 3,
  kStatMoments = 1u << 4,  // mean and m2
  // Not a statistic: the norm of the matrix view of a tensor of two or more
  // axes (spectral.h), measured by a matrix pass of its own; the other bits
  // of the row give its value for a tensor of at most one axis. Consumers
  // that compute norms from statistics alone refuse such a row
  // (`is_matrix_norm`).
  kStatMatrix = 1u << 5,
};

// The table of built-in norms: X(enumerator, code, name, statistics bits),
// one row per norm, codes 0, 1, ... in row order (checked below). The codes
// cross the C ABI (CUDA launchers, CuPy, Numba), so a row keeps its code.
#define NORMOPT_NORM_KINDS(X)                              \
  X(kL1, 0, "l1", kStatSumAbs)                             \
  X(kL2, 1, "l2", kStatSumSq)                              \
  X(kL1L2, 2, "l1_l2", kStatSumAbs | kStatSumSq)           \
  X(kAvgL1, 3, "avg_l1", kStatSumAbs)                      \
  X(kAvgL2, 4, "avg_l2", kStatSumSq)                       \
  X(kAvgL1L2, 5, "avg_l1_l2", kStatSumAbs | kStatSumSq)    \
  X(kMax, 6, "max", kStatMaxAbs)                           \
  X(kMinMax, 7, "min_max", kStatMaxAbs | kStatMinAbs)      \
  X(kStd, 8, "std", kStatMoments)                         \
  X(kSpectral, 9, "spectral", kStatSumSq | kStatMatrix)

// Other names of a row: A(alias, enumerator). Error messages list an alias
// right after the name of its row.
#define NORMOPT_NORM_ALIASES(A) A("linf", kMax)

enum class NormKind : int {
#define NORMOPT_NORM_ENUMERATOR(e, code, name, stats) e = code,
  NORMOPT_NORM_KINDS(NORMOPT_NORM_ENUMERATOR)
#undef NORMOPT_NORM_ENUMERATOR
};

namespace norm_table_detail {
// The rows numbered by position, to check that the codes are 0, 1, ...
enum RowIndex : int {
#define NORMOPT_NORM_ROW(e, code, name, stats) kRow##e,
  NORMOPT_NORM_KINDS(NORMOPT_NORM_ROW)
#undef NORMOPT_NORM_ROW
  kRowCount
};
#define NORMOPT_NORM_CODE_CHECK(e, code, name, stats)                \
  static_assert(static_cast<int>(NormKind::e) == kRow##e,            \
                "NORMOPT_NORM_KINDS: the codes must be 0, 1, ... in " \
                "row order (" name ")");
NORMOPT_NORM_KINDS(NORMOPT_NORM_CODE_CHECK)
#undef NORMOPT_NORM_CODE_CHECK
}  // namespace norm_table_detail

constexpr int kNumNormKinds = norm_table_detail::kRowCount;

enum class ScaleMode : int { kNormalize = 0, kClip = 1 };

// The statistics norm `kind` reads (its row's bits). Every NormKind comes
// from the table, so the switch covers them all; 0 only for a value cast
// from an int outside the table.
NORMOPT_HD unsigned stats_needed(NormKind kind) {
  switch (kind) {
#define NORMOPT_NORM_STATS_CASE(e, code, name, stats) \
  case NormKind::e:                                   \
    return stats;
    NORMOPT_NORM_KINDS(NORMOPT_NORM_STATS_CASE)
#undef NORMOPT_NORM_STATS_CASE
  }
  return 0;
}

// Whether `kind` is measured on the matrix view (kStatMatrix) rather than
// from statistics alone.
NORMOPT_HD bool is_matrix_norm(NormKind kind) {
  return (stats_needed(kind) & kStatMatrix) != 0;
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

// The norm from the statistics (formulas at the top of this file): one case
// per row of NORMOPT_NORM_KINDS and no default, so -Wswitch names a row
// without its formula. eps only for a value cast from an int outside the
// table.
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
    case NormKind::kSpectral:  // of a tensor of at most one axis: l2
      return NORMOPT_SQRT(s.sum_sq) + eps;
  }
  return eps;
}

// ---- Overflow rescue (see the top of this file) ----

// Limits of the accumulation type, without <limits> (NVRTC has none).
template <typename Acc>
struct AccLimits;
template <>
struct AccLimits<float> {
  static constexpr int kMaxExp = 128;  // FLT_MAX_EXP
  static constexpr float kMinNormal = 1.17549435082228750797e-38f;
};
template <>
struct AccLimits<double> {
  static constexpr int kMaxExp = 1024;  // DBL_MAX_EXP
  static constexpr double kMinNormal = 2.2250738585072013830902e-308;
};

// x is neither infinite nor NaN.
template <typename Acc>
NORMOPT_HD bool is_finite(Acc x) {
  return x - x == Acc(0);
}

// 2^k, exact for 0 <= k < kMaxExp.
template <typename Acc>
NORMOPT_HD Acc pow2(int k) {
  return NORMOPT_LDEXP(Acc(1), k);
}

// k >= 0 such that x * 2^-k is in [0.5, 4) for a finite x > 0 that is large
// (in [0.5, 1) unless clamped), with 2^-k normal: frexp's exponent, clamped
// to [0, kMaxExp - 2].
template <typename Acc>
NORMOPT_HD int rescue_exponent(Acc x) {
  int e = 0;
  NORMOPT_FREXP(x, &e);
  const int top = AccLimits<Acc>::kMaxExp - 2;
  return e < 0 ? 0 : (e > top ? top : e);
}

// Statistics of `count` zeros: the implicit zeros of a sparse gradient,
// which nothing reads.
template <typename Acc>
NORMOPT_HD NormStats<Acc> zero_stats(int64_t count) {
  const Acc zero(0);
  return from_block_sums<Acc>(count, zero, zero, zero, zero, zero, zero);
}

// The norm needs the rescue pass: it is not finite. (The pass then reads
// max|g|; if that is not finite either, an element is inf or NaN and the
// plain norm stands.)
template <typename Acc>
NORMOPT_HD bool needs_rescue(Acc norm) {
  return !is_finite(norm);
}

// The norm from the statistics `scaled` of g * 2^-k: norm0 * 2^k + eps.
template <typename Acc>
NORMOPT_HD Acc rescued_norm(NormKind kind, const NormStats<Acc>& scaled, int k,
                            Acc eps) {
  return NORMOPT_LDEXP(finalize_norm(kind, scaled, Acc(0)), k) + eps;
}

// Statistics of x[i] * pre for i in [0, n), in one thread, for loaders
// `load(i) -> Acc`: sums in one pass, the centered sum of squares in a second
// (when `moments`). The rescue pass of kernels without a parallel one.
template <typename Acc, typename Load>
NORMOPT_HD NormStats<Acc> serial_scaled_stats(const Load& load, int64_t n,
                                              Acc pre, bool moments) {
  Acc s_abs = Acc(0), s_sq = Acc(0), total = Acc(0), mx = Acc(0), mn = Acc(0);
  for (int64_t i = 0; i < n; ++i) {
    const Acc x = load(i) * pre;
    const Acc a = x < Acc(0) ? -x : x;
    s_abs += a;
    s_sq += x * x;
    total += x;
    mx = i == 0 ? a : max_keep_nan(a, mx);
    mn = i == 0 ? a : min_keep_nan(a, mn);
  }
  Acc centered = Acc(0);
  if (moments && n > 0) {
    const Acc mean = total / Acc(n);
    for (int64_t i = 0; i < n; ++i) {
      const Acc d = load(i) * pre - mean;
      centered += d * d;
    }
  }
  return from_block_sums<Acc>(n, s_abs, s_sq, mx, mn, total, centered);
}

// The norm of n elements `load(i)` and `zeros` more zeros (a sparse
// gradient's absent rows) whose plain norm is `norm`, with max|g| =
// `max_abs`: `norm` itself unless needs_rescue(norm) and max_abs is finite,
// else rescued_norm over serial_scaled_stats merged with zero_stats.
template <typename Acc, typename Load>
NORMOPT_HD Acc serial_rescue(NormKind kind, Acc norm, Acc max_abs,
                             const Load& load, int64_t n, Acc eps,
                             int64_t zeros = 0) {
  if (!needs_rescue(norm) || !is_finite(max_abs)) return norm;
  const int k = rescue_exponent(max_abs);
  const NormStats<Acc> s = merge_stats(
      serial_scaled_stats<Acc>(load, n, pow2<Acc>(-k),
                               (stats_needed(kind) & kStatMoments) != 0),
      zero_stats<Acc>(zeros));
  return rescued_norm(kind, s, k, eps);
}

// The per-tensor scale: g' = (g * pre) * mult.
template <typename Acc>
struct TensorScale {
  Acc pre;
  Acc mult;
};

template <typename Acc>
NORMOPT_HD Acc apply_scale(Acc x, const TensorScale<Acc>& s) {
  return (x * s.pre) * s.mult;
}

// The clip threshold of adaptive gradient clipping: clip_factor *
// max(norm(w), weight_eps), w's norm at the gradient's granularity (a NaN
// weight norm stays NaN, as tf.maximum keeps it).
template <typename Acc>
NORMOPT_HD Acc adaptive_threshold(Acc clip_factor, Acc weight_norm,
                                  Acc weight_eps) {
  return clip_factor * max_keep_nan(weight_norm, weight_eps);
}

// The scale of a tensor of norm `norm` (see the top of this file): target
// = 1 (normalize) or clipnorm (clip, where norm >= clipnorm; else 1).
template <typename Acc>
NORMOPT_HD TensorScale<Acc> scale_from_norm(ScaleMode mode, Acc norm,
                                            Acc clipnorm) {
  TensorScale<Acc> r;
  r.pre = Acc(1);
  Acc target = Acc(1);
  if (mode == ScaleMode::kClip) {
    if (!(norm >= clipnorm)) {
      r.mult = Acc(1);
      return r;
    }
    target = clipnorm;
  }
  r.mult = target / norm;
  if (r.mult >= Acc(0) && r.mult < AccLimits<Acc>::kMinNormal &&
      target > Acc(0) && is_finite(norm)) {
    const int k = rescue_exponent(norm);
    r.pre = pow2<Acc>(-k);
    r.mult = target / (norm * r.pre);
  }
  return r;
}

#if !defined(__CUDACC__)
// Host-side name lookup, from NORMOPT_NORM_KINDS and NORMOPT_NORM_ALIASES.
struct NormName {
  const char* name;
  NormKind kind;
};

// Every row's name, in code order.
inline constexpr NormName kNormNames[] = {
#define NORMOPT_NORM_NAME(e, code, name, stats) {name, NormKind::e},
    NORMOPT_NORM_KINDS(NORMOPT_NORM_NAME)
#undef NORMOPT_NORM_NAME
};
static_assert(sizeof(kNormNames) / sizeof(kNormNames[0]) == kNumNormKinds,
              "one name per norm");

inline constexpr NormName kNormAliases[] = {
#define NORMOPT_NORM_ALIAS(alias, e) {alias, NormKind::e},
    NORMOPT_NORM_ALIASES(NORMOPT_NORM_ALIAS)
#undef NORMOPT_NORM_ALIAS
};

// Sets *out to the norm called `name` (a row's name or an alias). Returns
// false for an unknown name.
inline bool parse_norm_kind(const char* name, NormKind* out) {
  for (const NormName& e : kNormNames) {
    if (std::strcmp(e.name, name) == 0) {
      *out = e.kind;
      return true;
    }
  }
  for (const NormName& e : kNormAliases) {
    if (std::strcmp(e.name, name) == 0) {
      *out = e.kind;
      return true;
    }
  }
  return false;
}

// Every accepted name, joined by `sep`: the rows in code order, each alias
// right after its row ("l1, l2, ..., max, linf, min_max, std").
inline std::string accepted_norm_names(const char* sep = ", ") {
  std::string out;
  for (const NormName& e : kNormNames) {
    if (!out.empty()) out += sep;
    out += e.name;
    for (const NormName& a : kNormAliases) {
      if (a.kind == e.kind) {
        out += sep;
        out += a.name;
      }
    }
  }
  return out;
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
