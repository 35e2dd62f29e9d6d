// The spectral norm of a matrix on the CPU: the norm table's kSpectral row
// (norm_stats.h) for a tensor of two or more axes, seen as the matrix G of
// `rows` = all axes but the last and `cols` = the last axis.
//
//   spectral(G) = sigma_1(G) + eps
//
// The method is that of normopt/ops/spectral_math.py, the keras.ops path's,
// step for step (its docstring has the reasons):
//
// 1. Lanczos on A = G'^T G', G' = p G with p = 1, or 2^-e (e: frexp's
//    exponent of max|G|) where max|G| is outside [2^-40, 2^40], so that
//    sigma_1(G')^2 neither overflows nor underflows (a power of two: the
//    steps are those of G scaled exactly). max|G| is gathered by the first
//    pass, which is done again with p only in that case.
// 2. The start q_1 = normalize(v + kStartMix * r): v the persistent vector
//    (zero before the first step; a non-finite one counts as zero), r the
//    fixed vector of `StartElement`.
// 3. Step k: w = A q_k in ONE pass over G (per row g_r: u = g_r . q_k, then
//    w += u g_r, the row still in cache; rows in fixed blocks, each block's
//    partial w added in block order, so the result does not depend on the
//    threads), alpha_k = q_k . w, w orthogonalized twice against q_1..q_k,
//    beta_k = |w|, q_{k+1} = w / beta_k; theta_k the largest eigenvalue of
//    the tridiagonal T_k (Eigen, in double).
// 4. Stop: k >= 2 and |sqrt(theta_k) - sqrt(theta_{k-1})| <= kTolerance *
//    sqrt(theta_k); or beta_k <= kBreakdown * theta_k; or k = min(cols,
//    kMaxSteps).
// 5. The new vector: the Ritz vector, normalized (q_1 where it would be
//    zero or not finite). The norm: sqrt(theta_k) / p + eps.
//
// Cost: passes over G = Lanczos steps (+1 where max|G| needs the scale),
// plus O(k * cols) per step for the orthogonalization.
#ifndef NORMOPT_OPS_SPECTRAL_NORM_H_
#define NORMOPT_OPS_SPECTRAL_NORM_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "Eigen/Eigenvalues"
#include "ops/chunk_plan.h"
#include "ops/chunk_stats.h"
#include "ops/element_types.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace normopt {

// The constants of normopt/ops/spectral_math.py (TOLERANCE, MAX_ITERATIONS,
// BREAKDOWN, START_MIX); tests/test_spectral.py checks they agree.
constexpr double kSpectralTolerance = 1e-5;
constexpr int kSpectralMaxSteps = 64;
constexpr double kSpectralBreakdown = 1e-7;
constexpr double kSpectralStartMix = 1e-3;
// Row blocks of a pass (fixed: the sums do not depend on the threads).
constexpr int64_t kSpectralBlocks = 64;

// r_i = h_i / 2^32 - 1/2, h_i = (2654435761 i + 2135587861) mod 2^32:
// spectral_math.start_vector.
inline double StartElement(int64_t i) {
  const uint32_t h = static_cast<uint32_t>(static_cast<uint64_t>(i) * 2654435761ull +
                                           2135587861ull);
  return static_cast<double>(h) / 4294967296.0 - 0.5;
}

// What one spectral norm computed: the norm (eps included) and the Lanczos
// steps it took.
template <typename Acc>
struct SpectralResult {
  Acc norm;
  int steps;
};

// w = (p G)^T (p G) q for G = x (rows x cols, row-major), in one pass; the
// max |x| into *max_abs when not null.
template <typename T>
void GramTimes(tensorflow::OpKernelContext* ctx, const T* x, int64_t rows,
               int64_t cols, AccType<T> p, const std::vector<AccType<T>>& q,
               std::vector<AccType<T>>* w, AccType<T>* max_abs) {
  using Acc = AccType<T>;
  const int64_t blocks = std::min(rows, kSpectralBlocks);
  std::vector<Acc> partial(blocks * cols, Acc(0));
  std::vector<Acc> block_max(blocks, Acc(0));
  const Acc* __restrict qv = q.data();
  ParallelForCount(ctx, blocks, (rows / blocks + 1) * cols * 6, [&](int64_t b) {
    const int64_t r0 = b * rows / blocks, r1 = (b + 1) * rows / blocks;
    Acc* __restrict out = &partial[b * cols];
    Acc mx = Acc(0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict row = x + r * cols;
      Acc lanes[kLanes] = {};
      Acc mlanes[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= cols; j += kLanes) {
#pragma GCC ivdep
        for (int l = 0; l < kLanes; ++l) {
          const Acc g = ToAcc(row[j + l]) * p;
          lanes[l] += g * qv[j + l];
          const Acc a = std::fabs(ToAcc(row[j + l]));
          mlanes[l] = (a > mlanes[l] || a != a) ? a : mlanes[l];
        }
      }
      for (int l = 0; j + l < cols; ++l) {
        const Acc g = ToAcc(row[j + l]) * p;
        lanes[l] += g * qv[j + l];
        const Acc a = std::fabs(ToAcc(row[j + l]));
        mlanes[l] = (a > mlanes[l] || a != a) ? a : mlanes[l];
      }
      const Acc u = SumLanes(lanes);
      for (int l = 0; l < kLanes; ++l) mx = max_keep_nan(mlanes[l], mx);
#pragma GCC ivdep
      for (int64_t k = 0; k < cols; ++k) out[k] += u * (ToAcc(row[k]) * p);
    }
    block_max[b] = mx;
  });
  w->assign(cols, Acc(0));
  Acc* __restrict wv = w->data();
  for (int64_t b = 0; b < blocks; ++b) {
    const Acc* __restrict part = &partial[b * cols];
#pragma GCC ivdep
    for (int64_t k = 0; k < cols; ++k) wv[k] += part[k];
  }
  if (max_abs != nullptr) {
    Acc mx = Acc(0);
    for (int64_t b = 0; b < blocks; ++b) mx = max_keep_nan(block_max[b], mx);
    *max_abs = mx;
  }
}

template <typename Acc>
double Dot(const std::vector<Acc>& a, const Acc* b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += double(a[k]) * double(b[k]);
  return s;
}

// The spectral norm of x (rows x cols), from the persistent vector v_in
// (cols values) and into v_out (may be v_in).
template <typename T>
SpectralResult<AccType<T>> SpectralNorm(tensorflow::OpKernelContext* ctx,
                                        const T* x, int64_t rows, int64_t cols,
                                        const AccType<T>* v_in,
                                        AccType<T>* v_out, AccType<T> eps) {
  using Acc = AccType<T>;
  const int steps = static_cast<int>(std::min<int64_t>(cols, kSpectralMaxSteps));
  // the start
  std::vector<double> r(cols);
  double r_sq = 0, v_sq = 0;
  bool v_finite = true;
  for (int64_t k = 0; k < cols; ++k) {
    r[k] = StartElement(k);
    r_sq += r[k] * r[k];
    v_finite = v_finite && std::isfinite(double(v_in[k]));
  }
  std::vector<Acc> q(cols);
  {
    std::vector<double> s(cols);
    const double rn = std::sqrt(r_sq);
    for (int64_t k = 0; k < cols; ++k) {
      s[k] = (v_finite ? double(v_in[k]) : 0.0) + kSpectralStartMix * r[k] / rn;
      v_sq += s[k] * s[k];
    }
    const double sn = std::sqrt(v_sq);
    for (int64_t k = 0; k < cols; ++k) q[k] = static_cast<Acc>(s[k] / sn);
  }
  std::vector<std::vector<Acc>> basis{q};
  std::vector<double> alpha, beta;
  std::vector<Acc> w;
  Acc p = Acc(1);
  int exponent = 0;
  double estimate = 0, last = 0;
  Eigen::VectorXd ritz;
  int k = 0;
  while (true) {
    if (k == 0) {
      Acc max_abs = Acc(0);
      GramTimes<T>(ctx, x, rows, cols, p, basis[0], &w, &max_abs);
      const Acc lo = std::ldexp(Acc(1), -40), hi = std::ldexp(Acc(1), 40);
      if (std::isfinite(double(max_abs)) && max_abs > Acc(0) &&
          (max_abs < lo || max_abs > hi)) {
        std::frexp(max_abs, &exponent);
        p = std::ldexp(Acc(1), -exponent);
        GramTimes<T>(ctx, x, rows, cols, p, basis[0], &w, nullptr);
      }
    } else {
      GramTimes<T>(ctx, x, rows, cols, p, basis[k], &w, nullptr);
    }
    const double a = Dot(basis[k], w.data());
    for (int pass = 0; pass < 2; ++pass) {
      for (const std::vector<Acc>& b : basis) {
        const Acc c = static_cast<Acc>(Dot(b, w.data()));
        for (int64_t j = 0; j < cols; ++j) w[j] -= c * b[j];
      }
    }
    double b_sq = 0;
    for (int64_t j = 0; j < cols; ++j) b_sq += double(w[j]) * double(w[j]);
    const double b = std::sqrt(b_sq);
    alpha.push_back(a);
    beta.push_back(b);
    const int size = k + 1;
    double theta;
    if (size == 1) {
      theta = alpha[0];
      ritz = Eigen::VectorXd::Ones(1);
    } else {
      Eigen::VectorXd diag(size), sub(size - 1);
      for (int j = 0; j < size; ++j) diag[j] = alpha[j];
      for (int j = 0; j + 1 < size; ++j) sub[j] = beta[j];
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver;
      solver.computeFromTridiagonal(diag, sub, Eigen::ComputeEigenvectors);
      theta = solver.eigenvalues()[size - 1];
      ritz = solver.eigenvectors().col(size - 1);
    }
    theta = std::max(theta, 0.0);
    estimate = std::sqrt(theta);
    const int k1 = k + 1;
    const bool changed = std::fabs(estimate - last) > kSpectralTolerance * estimate;
    last = estimate;
    k = k1;
    if (k1 >= steps || b <= kSpectralBreakdown * theta || (k1 >= 2 && !changed) ||
        !std::isfinite(b)) {
      break;
    }
    std::vector<Acc> next(cols);
    for (int64_t j = 0; j < cols; ++j) next[j] = b > 0 ? static_cast<Acc>(w[j] / b) : Acc(0);
    basis.push_back(std::move(next));
  }
  // the Ritz vector
  std::vector<double> y(cols, 0.0);
  for (int j = 0; j < ritz.size(); ++j) {
    for (int64_t c = 0; c < cols; ++c) y[c] += ritz[j] * double(basis[j][c]);
  }
  double y_sq = 0;
  for (int64_t c = 0; c < cols; ++c) y_sq += y[c] * y[c];
  const double y_norm = std::sqrt(y_sq);
  const bool keep = !(y_norm > 0) || !std::isfinite(y_norm);
  for (int64_t c = 0; c < cols; ++c) {
    v_out[c] = keep ? q[c] : static_cast<Acc>(y[c] / y_norm);
  }
  const Acc norm = static_cast<Acc>(estimate) * std::ldexp(Acc(1), exponent) + eps;
  return SpectralResult<Acc>{norm, k};
}

}  // namespace normopt

#endif  // NORMOPT_OPS_SPECTRAL_NORM_H_
