// Norms and scales of a list of gradients, shared by every op: per tensor,
// per unit (unit_stats.h) or over all of them (ScaleSpec, StepScales), and
// the recorded L2 norm of every gradient from the same reads.
//
// One read of each gradient: the statistics of every chunk (chunk_plan.h)
// are gathered in parallel into an array, then merged per tensor in chunk
// order (`merge_stats`) and finalized (`finalize_norm`). A tensor whose
// plain norm overflowed gets the rescue pass of norm_stats.h (`RescueNorm`).
// The scale is `scale_from_norm`, a TensorScale {pre, mult}: g' = (g * pre)
// * mult, with pre = 1 (the plain g * 1/norm, or g * clipnorm/norm) unless
// that scale would be below the smallest normal number.
// With kind "precomputed" the norms come from an input instead. The ops'
// attrs and scalar inputs are parsed and checked in op_inputs.h.
#ifndef NORMOPT_OPS_TENSOR_SCALES_H_
#define NORMOPT_OPS_TENSOR_SCALES_H_

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "normopt/norm_stats.h"
#include "ops/chunk_plan.h"
#include "ops/chunk_stats.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/spectral_norm.h"
#include "ops/unit_stats.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

// Where the per-tensor norms come from: a built-in kind, or an input.
struct NormSource {
  bool precomputed = false;
  NormKind kind = NormKind::kL2;
};

// The norm of one tensor from the statistics of its chunks, merged in chunk
// order. A chunk holding a NaN reports a NaN max/min (chunk_stats.h) and
// merge_stats keeps it, so a NaN element gives a NaN norm, as on the TF path.
template <typename Acc>
Acc NormFromChunkStats(NormKind kind, const NormStats<Acc>* chunk_stats,
                       int64_t count, Acc eps) {
  NormStats<Acc> s = NormStats<Acc>::empty();
  for (int64_t c = 0; c < count; ++c) s = merge_stats(s, chunk_stats[c]);
  return finalize_norm(kind, s, eps);
}

// Chunk reads: read(i, begin, len) is a pointer to elements [begin, begin +
// len) of tensor i, valid until this thread's next read. DenseReads reads
// arrays in place; a GradList reads its gradients (GradReads), sparse ones
// gathered chunk by chunk.
template <typename T>
struct DenseReads {
  const std::vector<const T*>& data;
  const T* operator()(int64_t i, int64_t begin, int64_t) const {
    return data[i] + begin;
  }
};

template <typename T>
struct GradReads {
  const GradList<T>& grads;
  const T* operator()(int64_t i, int64_t begin, int64_t len) const {
    return grads.Elements(i, begin, len);
  }
};

// stats(x, n), the statistics of n contiguous elements, of elements [begin,
// begin + len) of gradient i. A sparse gradient's are those of the elements
// in its present rows, merged with those of its zeros, which need no reading.
template <typename T, typename Stats>
NormStats<AccType<T>> GradChunkStats(const GradList<T>& grads, int64_t i,
                                     int64_t begin, int64_t len,
                                     const Stats& stats) {
  using Acc = AccType<T>;
  if (!grads.sparse[i]) return stats(grads.data[i] + begin, len);
  int64_t present = 0;
  const T* x = grads.PresentElements(i, begin, len, &present);
  return merge_stats(stats(x, present), zero_stats<Acc>(len - present));
}

// The rescue pass of norm_stats.h for tensor i (its chunks in `plan`, read
// by `read`) whose plain norm is `norm`: max|g| over its chunks, then the
// statistics of g * 2^-k, merged in chunk order. Returns `norm` unchanged
// when it is finite or when an element is inf or NaN. With ctx null (inside
// a parallel pass) the chunks are read in this thread.
template <typename T, typename Read>
AccType<T> RescueNorm(tensorflow::OpKernelContext* ctx, NormKind kind,
                      const ChunkPlan& plan, int64_t i, const Read& read,
                      AccType<T> norm, AccType<T> eps) {
  using Acc = AccType<T>;
  if (!needs_rescue(norm)) return norm;
  const int64_t first = plan.first[i];
  const int64_t count = plan.first[i + 1] - first;
  std::vector<NormStats<Acc>> st(count);
  auto over_chunks = [&](const std::function<void(int64_t)>& fn) {
    if (ctx == nullptr || count == 1) {
      for (int64_t c = 0; c < count; ++c) fn(c);
    } else {
      ParallelForCount(ctx, count, kChunkElems * 4, fn);
    }
  };
  over_chunks([&](int64_t c) {
    const Chunk& ch = plan.chunks[first + c];
    const int64_t len = ch.end - ch.begin;
    st[c] = ChunkStatsFor<T, kStatMaxAbs>(read(i, ch.begin, len), len);
  });
  Acc max_abs = Acc(0);
  for (int64_t c = 0; c < count; ++c) {
    max_abs = max_keep_nan(st[c].max_abs, max_abs);
  }
  if (!is_finite(max_abs)) return norm;
  const int k = rescue_exponent(max_abs);
  const Acc pre = pow2<Acc>(-k);
  over_chunks([&](int64_t c) {
    const Chunk& ch = plan.chunks[first + c];
    const int64_t len = ch.end - ch.begin;
    st[c] = ChunkStats<T, true>(kind, read(i, ch.begin, len), len, pre);
  });
  NormStats<Acc> s = NormStats<Acc>::empty();
  for (int64_t c = 0; c < count; ++c) s = merge_stats(s, st[c]);
  return rescued_norm(kind, s, k, eps);
}

// Relative cost per element of ChunkStats for `kind`, for the thread pool's
// sharding: a norm reading the moments makes a second pass over each chunk.
inline int ChunkStatsCost(NormKind kind) {
  return (stats_needed(kind) & kStatMoments) != 0 ? 6 : 2;
}

// Norms of the gradients data[i] (sizes in plan), built-in kind.
template <typename T>
void ComputeNorms(tensorflow::OpKernelContext* ctx, NormKind kind,
                  const ChunkPlan& plan, const std::vector<const T*>& data,
                  AccType<T> eps, std::vector<AccType<T>>* norms) {
  using Acc = AccType<T>;
  std::vector<NormStats<Acc>> chunk_stats(plan.size());
  ParallelForChunks(ctx, plan, ChunkStatsCost(kind), [&](int64_t c) {
    const Chunk& ch = plan.chunks[c];
    chunk_stats[c] = ChunkStats<T>(kind, data[ch.tensor] + ch.begin,
                                   ch.end - ch.begin);
  });
  const int64_t n = static_cast<int64_t>(data.size());
  norms->resize(n);
  for (int64_t i = 0; i < n; ++i) {
    (*norms)[i] = RescueNorm<T>(
        ctx, kind, plan, i, DenseReads<T>{data},
        NormFromChunkStats<Acc>(kind, chunk_stats.data() + plan.first[i],
                                plan.first[i + 1] - plan.first[i], eps),
        eps);
  }
}

// The statistics the ops gather besides a norm's own: the sum of squares,
// for the recorded L2 norm of every gradient (`RecordedNorm`).
constexpr unsigned kRecordedStats = kStatSumSq;

// The L2 norm sqrt(sum g^2) of gradient i (l2 of NORMOPT_NORM_KINDS with eps
// 0) from its sum of squares, rescued (RescueNorm) when that overflowed.
template <typename T>
AccType<T> RecordedNorm(tensorflow::OpKernelContext* ctx,
                        const ChunkPlan& plan, int64_t i,
                        const GradList<T>& grads, AccType<T> sum_sq) {
  using Acc = AccType<T>;
  NormStats<Acc> s = NormStats<Acc>::empty();
  s.sum_sq = sum_sq;
  return RescueNorm<T>(ctx, NormKind::kL2, plan, i, GradReads<T>{grads},
                       finalize_norm(NormKind::kL2, s, Acc(0)), Acc(0));
}

// What the norms are taken over:
//   tensor  one norm per gradient (the default)
//   unit    one norm per index of the last axis, over all other axes
//           (unit_stats.h); a gradient of at most one axis is one unit
//   global  one norm over all gradients together, as if concatenated
enum class Granularity : int { kTensor = 0, kUnit = 1, kGlobal = 2 };

// How one step's gradients are scaled, per norm (of a tensor, unit or all):
//   normalize  s = 1 / norm(g)
//   clip       s = clipnorm / norm(g) where norm(g) >= clipnorm, else 1
//   adaptive   clip with clipnorm = clip_factor * max(norm(w), weight_eps),
//              norm(w) the same norm of the variable at the same
//              granularity (adaptive gradient clipping); `clipnorm` holds
//              clip_factor
// Excluded gradients pass unscaled and stay out of a global norm.
// `kinds` holds the norm of every gradient (attr `kinds`, else `kind` for
// each; filled when the inputs are read); a matrix norm (spectral) measures
// the gradients of two or more axes in a pass of its own (spectral_norm.h).
struct ScaleSpec {
  NormSource source;
  std::vector<NormKind> kinds;
  ScaleMode mode = ScaleMode::kNormalize;
  bool adaptive = false;
  Granularity granularity = Granularity::kTensor;
  double eps = 0, clipnorm = 0, weight_eps = 0;
  std::vector<int> excluded;  // indices into the gradient list
};

// Whether every gradient has the same norm and it is made of statistics:
// what the GPU kernels take.
inline bool OneStatisticsKind(const ScaleSpec& spec) {
  for (NormKind k : spec.kinds) {
    if (k != spec.kinds[0] || is_matrix_norm(k)) return false;
  }
  return true;
}

// The gradients a matrix norm measures as matrices, in order: a matrix
// kind, two or more axes, not excluded. Each has a persistent vector of its
// last axis's length (and, adaptive, one for its variable, after all of the
// gradients'), normopt/ops/step_plan.spectral_indices.
template <typename T>
std::vector<int> MatrixTensors(const ScaleSpec& spec, const GradList<T>& grads) {
  if (spec.source.precomputed) return {};
  std::vector<char> excluded(grads.size(), 0);
  for (int i : spec.excluded) excluded[i] = 1;
  std::vector<int> out;
  for (int i = 0; i < grads.size(); ++i) {
    if (is_matrix_norm(spec.kinds[i]) && grads.shapes[i].dims() >= 2 &&
        !excluded[i]) {
      out.push_back(i);
    }
  }
  return out;
}

// The persistent vectors of the matrices (MatrixTensors order; adaptive:
// the gradients', then the variables'): read from `in`, written to `out`.
template <typename Acc>
struct SpectralVectors {
  std::vector<const Acc*> in;
  std::vector<Acc*> out;
};

// The scales of one chunk: element j of the chunk (flat index begin + j)
// takes scales[(col0 + j) % units] (units 1: one scale for the chunk).
// `mult`, when not null, holds the same scales' mult (all their pre are 1)
// as a plain array, which the per-unit loop reads with vector loads.
template <typename Acc>
struct ChunkScales {
  const TensorScale<Acc>* scales;
  int64_t units;
  int64_t col0;
  const Acc* mult = nullptr;
};

// body(j, scale of element j) for j in [0, n) of a chunk: one scale for the
// whole chunk, or the unit scales one row piece at a time (each piece a plain
// loop over contiguous units, so both loops vectorize).
template <typename Acc, typename Body>
inline void ForEachScaled(const ChunkScales<Acc>& cs, int64_t n, Body&& body) {
  if (cs.units == 1) {
    const TensorScale<Acc> s = cs.scales[0];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) body(j, s);
    return;
  }
  for (int64_t j = 0, col = cs.col0; j < n; col = 0) {
    const int64_t len = std::min(cs.units - col, n - j);
    if (cs.mult != nullptr) {
      const Acc* m = cs.mult + col;
#pragma GCC ivdep
      for (int64_t k = 0; k < len; ++k) body(j + k, TensorScale<Acc>{Acc(1), m[k]});
    } else {
      const TensorScale<Acc>* s = cs.scales + col;
#pragma GCC ivdep
      for (int64_t k = 0; k < len; ++k) body(j + k, s[k]);
    }
    j += len;
  }
}

// Per-norm scales for an op that then makes one pass over every chunk, and
// the recorded L2 norm of every gradient, from the same reads.
//
// Per-tensor norms of a gradient of one chunk need no merge: its statistics
// (and, adaptive, its variable's) are gathered in that pass, on the chunk it
// is about to update (`Of`), so small tensors cost one parallel pass instead
// of two. Everything else is gathered here first: the chunks of multi-chunk
// tensors (every chunk, for a global norm), in one parallel pass merged per
// norm in chunk order, and the units of unit-wise tensors (UnitStats). The
// sums of squares of every chunk (of every unit-wise tensor) are kept and
// `RecordedNorms` turns them into the L2 norms after the pass.
template <typename T>
class StepScales {
 public:
  using Acc = AccType<T>;

  // `weights` (the variables, read only) for the adaptive mode, else empty.
  // `vectors`: those of the matrices a matrix norm measures (none: null).
  void Compute(tensorflow::OpKernelContext* ctx, const ScaleSpec& spec,
               const ChunkPlan& plan, const GradList<T>& grads,
               const std::vector<const T*>& weights,
               const tensorflow::Tensor& precomputed_norms,
               const SpectralVectors<Acc>* vectors = nullptr) {
    spec_ = &spec;
    plan_ = &plan;
    grads_ = &grads;
    cost_ = 2;
    for (NormKind k : spec.kinds) cost_ = std::max(cost_, ChunkStatsCost(k));
    eps_ = static_cast<Acc>(spec.eps);
    const int64_t n = grads.size();
    chunk_sq_.assign(plan.size(), Acc(0));
    unit_sq_.assign(n, Acc(0));
    units_.assign(n, 1);
    first_scale_.assign(n + 1, 0);
    how_.assign(n, How::kReady);
    for (int i : spec.excluded) how_[i] = How::kExcluded;
    for (int64_t i = 0; i < n; ++i) {
      if (spec.granularity == Granularity::kUnit && how_[i] == How::kReady) {
        units_[i] = grads.units[i] > 1 ? grads.units[i] : 1;
      }
      first_scale_[i + 1] = first_scale_[i] + units_[i];
    }
    scales_.assign(first_scale_[n], TensorScale<Acc>{Acc(1), Acc(1)});
    if (spec.source.precomputed) {
      auto given = precomputed_norms.flat<Acc>();
      for (int64_t i = 0; i < n; ++i) {
        if (how_[i] == How::kExcluded) continue;
        scales_[first_scale_[i]] = ScaleOf(given(i), Acc(0));
      }
      return;
    }
    ComputeMatrices(ctx, grads, weights, vectors);
    const bool global = spec.granularity == Granularity::kGlobal;
    std::vector<int64_t> pre_chunks;  // chunks whose statistics come first
    for (int64_t i = 0; i < n; ++i) {
      if (how_[i] != How::kReady || units_[i] > 1) continue;
      const int64_t count = plan.first[i + 1] - plan.first[i];
      if (!global && count == 1) {
        how_[i] = How::kInPass;
        continue;
      }
      for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
        pre_chunks.push_back(c);
      }
    }
    const GradReads<T> data{grads};
    const DenseReads<T> w_data{weights};
    std::vector<NormStats<Acc>> g_stats(plan.size()), w_stats;
    if (spec.adaptive) w_stats.resize(plan.size());
    ParallelForCount(
        ctx, static_cast<int64_t>(pre_chunks.size()),
        kChunkElems * cost_ * (spec.adaptive ? 2 : 1),
        [&](int64_t k) {
          const int64_t c = pre_chunks[k];
          const Chunk& ch = plan.chunks[c];
          const int64_t len = ch.end - ch.begin;
          g_stats[c] = GradChunkStats(grads, ch.tensor, ch.begin, len,
                                      NormAndRecordedStats(ch.tensor));
          chunk_sq_[c] = g_stats[c].sum_sq;
          if (spec.adaptive) {
            w_stats[c] = ChunkStats<T>(Kind(ch.tensor),
                                       weights[ch.tensor] + ch.begin, len);
          }
        });
    if (global) {
      if (!pre_chunks.empty()) {
        // one kind for every gradient of a global norm (op_inputs.h)
        const NormKind kind = Kind(plan.chunks[pre_chunks[0]].tensor);
        const Acc g_norm = GroupNorm(ctx, kind, pre_chunks, data, g_stats);
        const Acc w_norm =
            spec.adaptive ? GroupNorm(ctx, kind, pre_chunks, w_data, w_stats)
                          : Acc(0);
        const TensorScale<Acc> shared = ScaleOf(g_norm, w_norm);
        for (int64_t i = 0; i < n; ++i) {
          if (how_[i] == How::kReady) scales_[first_scale_[i]] = shared;
        }
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        if (how_[i] != How::kReady || units_[i] > 1) continue;
        std::vector<int64_t> own;
        for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) own.push_back(c);
        if (own.empty()) continue;  // an empty tensor keeps scale 1
        const Acc g_norm = GroupNorm(ctx, Kind(i), own, data, g_stats);
        const Acc w_norm =
            spec.adaptive ? GroupNorm(ctx, Kind(i), own, w_data, w_stats)
                          : Acc(0);
        scales_[first_scale_[i]] = ScaleOf(g_norm, w_norm);
      }
    }
    ComputeUnits(ctx, grads, weights);
  }

  // The scales of chunk c (`ch`) of the gradients given to Compute, whose
  // variable chunk is w[0, len) (read in the adaptive mode only). g is the
  // gradient's chunk as the caller read it (GradList::Elements), or null
  // where the caller reads only a sparse gradient's present rows. Called
  // once per chunk from the pass, before the chunk is updated; chunks may
  // run in parallel.
  ChunkScales<Acc> Of(int64_t c, const Chunk& ch, const T* g, const T* w) {
    const int i = ch.tensor;
    const int64_t len = ch.end - ch.begin;
    TensorScale<Acc>* own = &scales_[first_scale_[i]];
    if (how_[i] == How::kInPass) {
      const NormKind kind = Kind(i);
      const NormStats<Acc> st =
          GradChunkStats(*grads_, i, ch.begin, len, NormAndRecordedStats(i));
      chunk_sq_[c] = st.sum_sq;
      // The tensor's one chunk, already read: g (and w).
      auto chunk = [&ch](const T* x) {
        return [x, &ch](int64_t, int64_t begin, int64_t) {
          return x + (begin - ch.begin);
        };
      };
      const Acc plain = NormFromChunkStats<Acc>(kind, &st, 1, eps_);
      const Acc g_norm =
          g != nullptr
              ? RescueNorm<T>(nullptr, kind, *plan_, i, chunk(g), plain, eps_)
              : RescueNorm<T>(nullptr, kind, *plan_, i, GradReads<T>{*grads_},
                              plain, eps_);
      Acc w_norm = Acc(0);
      if (spec_->adaptive) {
        const NormStats<Acc> ws = ChunkStats<T>(kind, w, len);
        w_norm = RescueNorm<T>(nullptr, kind, *plan_, i, chunk(w),
                               NormFromChunkStats<Acc>(kind, &ws, 1, eps_),
                               eps_);
      }
      *own = ScaleOf(g_norm, w_norm);
    } else if (how_[i] == How::kExcluded || how_[i] == How::kMatrix ||
               spec_->source.precomputed) {
      chunk_sq_[c] = ChunkSumSq(i, ch.begin, len);
    }
    if (units_[i] == 1) return ChunkScales<Acc>{own, 1, 0};
    const Acc* mult = mult_only_[i] ? &mult_[first_scale_[i]] : nullptr;
    return ChunkScales<Acc>{own, units_[i], ch.begin % units_[i], mult};
  }

  // The Lanczos steps of each matrix's spectral norm, in MatrixTensors
  // order (adaptive: the gradients', then the variables').
  const std::vector<int>& SpectralSteps() const { return spectral_steps_; }

  // After the pass: out[i] = the L2 norm of gradient i (RecordedNorm).
  void RecordedNorms(tensorflow::OpKernelContext* ctx,
                     const GradList<T>& grads, Acc* out) const {
    const ChunkPlan& plan = *plan_;
    for (int64_t i = 0; i < grads.size(); ++i) {
      Acc sum_sq = unit_sq_[i];
      if (units_[i] == 1) {
        for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
          sum_sq += chunk_sq_[c];
        }
      }
      out[i] = RecordedNorm<T>(ctx, plan, i, grads, sum_sq);
    }
  }

 private:
  // kMatrix: measured by the matrix pass (ComputeMatrices), scale ready.
  enum class How : char { kReady, kInPass, kExcluded, kMatrix };

  NormKind Kind(int64_t i) const { return spec_->kinds[i]; }

  // The statistics of tensor i's norm and of the recorded L2 norm, of n
  // elements.
  auto NormAndRecordedStats(int64_t i) const {
    return [kind = Kind(i)](const T* x, int64_t n) {
      return ChunkStats<T, false, kRecordedStats>(kind, x, n);
    };
  }

  // The scales of the matrices a matrix norm measures (spectral_norm.h),
  // their vectors read and written.
  void ComputeMatrices(tensorflow::OpKernelContext* ctx,
                       const GradList<T>& grads,
                       const std::vector<const T*>& weights,
                       const SpectralVectors<Acc>* vectors) {
    spectral_steps_.clear();
    const std::vector<int> matrices = MatrixTensors(*spec_, grads);
    const size_t m = matrices.size();
    std::vector<int> w_steps;
    for (size_t k = 0; k < m; ++k) {
      const int i = matrices[k];
      how_[i] = How::kMatrix;
      const int64_t cols = grads.shapes[i].dim_size(grads.shapes[i].dims() - 1);
      const int64_t rows = cols > 0 ? grads.sizes[i] / cols : 0;
      const bool reads_weights = spec_->adaptive;
      if (rows == 0 || cols == 0) {  // nothing to measure: the vectors stay
        std::copy(vectors->in[k], vectors->in[k] + cols, vectors->out[k]);
        if (reads_weights) {
          std::copy(vectors->in[m + k], vectors->in[m + k] + cols,
                    vectors->out[m + k]);
        }
        continue;
      }
      const SpectralResult<Acc> g = SpectralNorm<T>(
          ctx, grads.data[i], rows, cols, vectors->in[k], vectors->out[k], eps_);
      spectral_steps_.push_back(g.steps);
      Acc w_norm = Acc(0);
      if (reads_weights) {
        const SpectralResult<Acc> w =
            SpectralNorm<T>(ctx, weights[i], rows, cols, vectors->in[m + k],
                            vectors->out[m + k], eps_);
        w_norm = w.norm;
        w_steps.push_back(w.steps);
      }
      scales_[first_scale_[i]] = ScaleOf(g.norm, w_norm);
    }
    spectral_steps_.insert(spectral_steps_.end(), w_steps.begin(), w_steps.end());
  }

  // sum g^2 over elements [begin, begin + len) of gradient i.
  Acc ChunkSumSq(int64_t i, int64_t begin, int64_t len) const {
    return GradChunkStats(*grads_, i, begin, len,
                          [](const T* x, int64_t n) {
                            return ChunkStatsFor<T, kRecordedStats>(x, n);
                          })
        .sum_sq;
  }

  // The scale of a norm of g (and, adaptive, of w) by the spec's mode.
  TensorScale<Acc> ScaleOf(Acc g_norm, Acc w_norm) const {
    const Acc clipnorm = static_cast<Acc>(spec_->clipnorm);
    const Acc threshold =
        spec_->adaptive ? adaptive_threshold(clipnorm, w_norm,
                                             static_cast<Acc>(spec_->weight_eps))
                        : clipnorm;
    return scale_from_norm(spec_->mode, g_norm, threshold);
  }

  // The norm of the elements of `chunks` (merged in that order, from
  // `stats`), rescued like RescueNorm over the same chunks (read by
  // `read`): max|x| over them, then the statistics of x * 2^-k.
  template <typename Read>
  Acc GroupNorm(tensorflow::OpKernelContext* ctx, NormKind kind,
                const std::vector<int64_t>& chunks, const Read& read,
                const std::vector<NormStats<Acc>>& stats) const {
    NormStats<Acc> s = NormStats<Acc>::empty();
    for (int64_t c : chunks) s = merge_stats(s, stats[c]);
    const Acc norm = finalize_norm(kind, s, eps_);
    if (!needs_rescue(norm)) return norm;
    const ChunkPlan& plan = *plan_;
    const int64_t count = static_cast<int64_t>(chunks.size());
    std::vector<NormStats<Acc>> st(count);
    ParallelForCount(ctx, count, kChunkElems * 4, [&](int64_t k) {
      const Chunk& ch = plan.chunks[chunks[k]];
      const int64_t len = ch.end - ch.begin;
      st[k] = ChunkStatsFor<T, kStatMaxAbs>(read(ch.tensor, ch.begin, len), len);
    });
    Acc max_abs = Acc(0);
    for (int64_t k = 0; k < count; ++k) max_abs = max_keep_nan(st[k].max_abs, max_abs);
    if (!is_finite(max_abs)) return norm;
    const int e = rescue_exponent(max_abs);
    const Acc pre = pow2<Acc>(-e);
    ParallelForCount(ctx, count, kChunkElems * 4, [&](int64_t k) {
      const Chunk& ch = plan.chunks[chunks[k]];
      const int64_t len = ch.end - ch.begin;
      st[k] = ChunkStats<T, true>(kind, read(ch.tensor, ch.begin, len), len,
                                  pre);
    });
    NormStats<Acc> r = NormStats<Acc>::empty();
    for (int64_t k = 0; k < count; ++k) r = merge_stats(r, st[k]);
    return rescued_norm(kind, r, e, eps_);
  }

  // Unit-wise tensors: per-unit statistics of g (and w) in tasks of
  // kUnitBlock units, then per-unit norms and scales. A tensor with a unit
  // norm that is not finite gets the rescue of all its units whose norm is
  // not finite, with k from max|x| over the whole tensor (as the TF path).
  void ComputeUnits(tensorflow::OpKernelContext* ctx, const GradList<T>& grads,
                    const std::vector<const T*>& weights) {
    struct Task {
      int64_t tensor, u0, u1;
    };
    std::vector<Task> tasks;
    const int64_t n = grads.size();
    for (int64_t i = 0; i < n; ++i) {
      if (units_[i] <= 1 || grads.sizes[i] == 0) continue;
      for (int64_t u0 = 0; u0 < units_[i]; u0 += kUnitBlock) {
        tasks.push_back({i, u0, std::min(units_[i], u0 + kUnitBlock)});
      }
    }
    if (tasks.empty()) return;
    mult_.assign(scales_.size(), Acc(1));
    mult_only_.assign(n, 0);
    const bool adaptive = spec_->adaptive;
    std::vector<NormStats<Acc>> g_units(scales_.size()), w_units;
    if (adaptive) w_units.resize(scales_.size());
    auto rows = [&](int64_t i) { return grads.sizes[i] / units_[i]; };
    ParallelForCount(
        ctx, static_cast<int64_t>(tasks.size()),
        kUnitBlock * 64 * cost_ * (adaptive ? 2 : 1),
        [&](int64_t k) {
          const Task& t = tasks[k];
          const int64_t at = first_scale_[t.tensor] + t.u0;
          UnitStats<T, false, kRecordedStats>(Kind(t.tensor), grads.data[t.tensor],
                                              rows(t.tensor), units_[t.tensor],
                                              t.u0, t.u1, &g_units[at]);
          if (adaptive) {
            UnitStats<T>(Kind(t.tensor), weights[t.tensor], rows(t.tensor),
                         units_[t.tensor], t.u0, t.u1, &w_units[at]);
          }
        });
    for (int64_t i = 0; i < n; ++i) {
      if (units_[i] <= 1 || grads.sizes[i] == 0) continue;
      const int64_t at = first_scale_[i];
      std::vector<Acc> g_norms = UnitNorms(ctx, i, grads.data[i], rows(i), &g_units[at]);
      std::vector<Acc> w_norms;
      if (adaptive) w_norms = UnitNorms(ctx, i, weights[i], rows(i), &w_units[at]);
      Acc sum_sq = Acc(0);
      bool mult_only = true;
      for (int64_t u = 0; u < units_[i]; ++u) {
        sum_sq += g_units[at + u].sum_sq;
        scales_[at + u] = ScaleOf(g_norms[u], adaptive ? w_norms[u] : Acc(0));
        mult_[at + u] = scales_[at + u].mult;
        mult_only = mult_only && scales_[at + u].pre == Acc(1);
      }
      unit_sq_[i] = sum_sq;
      mult_only_[i] = mult_only;
    }
  }

  // The unit norms of tensor i (elements x, rows x units_[i]) from `stats`.
  std::vector<Acc> UnitNorms(tensorflow::OpKernelContext* ctx, int64_t i,
                             const T* x, int64_t rows,
                             const NormStats<Acc>* stats) const {
    const int64_t units = units_[i];
    std::vector<Acc> norms(units);
    bool rescue = false;
    const NormKind kind = Kind(i);
    for (int64_t u = 0; u < units; ++u) {
      norms[u] = finalize_norm(kind, stats[u], eps_);
      rescue = rescue || needs_rescue(norms[u]);
    }
    if (!rescue) return norms;
    const ChunkPlan& plan = *plan_;
    Acc max_abs = Acc(0);
    for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
      const Chunk& ch = plan.chunks[c];
      max_abs = max_keep_nan(
          ChunkStatsFor<T, kStatMaxAbs>(x + ch.begin, ch.end - ch.begin).max_abs,
          max_abs);
    }
    if (!is_finite(max_abs)) return norms;
    const int e = rescue_exponent(max_abs);
    std::vector<NormStats<Acc>> scaled(units);
    const int64_t blocks = (units + kUnitBlock - 1) / kUnitBlock;
    ParallelForCount(ctx, blocks, kUnitBlock * rows * 4, [&](int64_t b) {
      const int64_t u0 = b * kUnitBlock;
      UnitStats<T, true>(kind, x, rows, units, u0,
                         std::min(units, u0 + kUnitBlock), &scaled[u0],
                         pow2<Acc>(-e));
    });
    for (int64_t u = 0; u < units; ++u) {
      if (needs_rescue(norms[u])) norms[u] = rescued_norm(kind, scaled[u], e, eps_);
    }
    return norms;
  }

  const ScaleSpec* spec_ = nullptr;
  const ChunkPlan* plan_ = nullptr;
  const GradList<T>* grads_ = nullptr;
  int cost_ = 2;  // ChunkStatsCost of the costliest kind
  Acc eps_ = Acc(0);
  std::vector<int> spectral_steps_;
  std::vector<How> how_;
  std::vector<int64_t> units_;        // scales per tensor (1 unless unit-wise)
  std::vector<int64_t> first_scale_;  // tensor i's scales start here
  std::vector<TensorScale<Acc>> scales_;
  std::vector<Acc> chunk_sq_;  // sum g^2 of every chunk (1-unit tensors)
  std::vector<Acc> unit_sq_;   // sum g^2 of every unit-wise tensor
  std::vector<Acc> mult_;      // scales_[k].mult, for unit-wise tensors
  std::vector<char> mult_only_;  // 1: every unit scale of the tensor has pre 1
};

}  // namespace normopt

#endif  // NORMOPT_OPS_TENSOR_SCALES_H_
