// Per-tensor norms and scales of a list of gradients, shared by every op.
//
// One read of each gradient: the statistics of every chunk (chunk_plan.h)
// are gathered in parallel into an array, then merged per tensor in chunk
// order (`merge_stats`) and finalized (`finalize_norm`). A tensor whose
// plain norm overflowed gets the rescue pass of norm_stats.h (`RescueNorm`).
// The scale is `scale_from_norm`, a TensorScale {pre, mult}: g' = (g * pre)
// * mult, with pre = 1 (the plain g * 1/norm, or g * clipnorm/norm) unless
// that scale would be below the smallest normal number.
// With kind "precomputed" the norms come from an input instead.
#ifndef NORMOPT_OPS_TENSOR_SCALES_H_
#define NORMOPT_OPS_TENSOR_SCALES_H_

#include <cmath>
#include <string>
#include <vector>

#include "normopt/norm_stats.h"
#include "ops/chunk_plan.h"
#include "ops/chunk_stats.h"
#include "ops/element_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace normopt {

constexpr char kPrecomputed[] = "precomputed";

// Where the per-tensor norms come from: a built-in kind, or an input.
struct NormSource {
  bool precomputed = false;
  NormKind kind = NormKind::kL2;
};

inline absl::Status ParseNormSource(const std::string& name,
                                    bool allow_precomputed, NormSource* out) {
  if (allow_precomputed && name == kPrecomputed) {
    out->precomputed = true;
    return absl::OkStatus();
  }
  out->precomputed = false;
  if (parse_norm_kind(name.c_str(), &out->kind)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      "normopt: unknown norm kind '" + name + "'; expected one of " +
      accepted_norm_names() +
      (allow_precomputed ? std::string(" or ") + kPrecomputed : std::string()));
}

inline absl::Status ParseMode(const std::string& name, ScaleMode* out) {
  if (parse_scale_mode(name.c_str(), out)) return absl::OkStatus();
  return absl::InvalidArgumentError("normopt: unknown scale mode '" + name +
                                    "'; expected normalize or clip");
}

// The value of a float64 scalar input.
inline absl::Status ScalarInput(tensorflow::OpKernelContext* ctx,
                                const char* name, double* out) {
  const tensorflow::Tensor* t;
  TF_RETURN_IF_ERROR(ctx->input(name, &t));
  if (!tensorflow::TensorShapeUtils::IsScalar(t->shape())) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must be a scalar, got shape " +
        t->shape().DebugString());
  }
  *out = t->scalar<double>()();
  return absl::OkStatus();
}

inline absl::Status CheckClipnorm(ScaleMode mode, double clipnorm) {
  if (mode == ScaleMode::kClip && !(std::isfinite(clipnorm) && clipnorm >= 0)) {
    return absl::InvalidArgumentError(
        "normopt: clipnorm must be finite and >= 0 in clip mode, got " +
        std::to_string(clipnorm));
  }
  return absl::OkStatus();
}

// A 1-D input of `n` values of the accumulation type (norms, decay).
inline absl::Status CheckPerTensorInput(const tensorflow::Tensor& t,
                                        const char* name, int64_t n) {
  if (t.dims() != 1 || t.dim_size(0) != n) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must have shape [" +
        std::to_string(n) + "] (one value per tensor), got " +
        t.shape().DebugString());
  }
  return absl::OkStatus();
}

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

// The rescue pass of norm_stats.h for tensor i (its chunks in `plan`,
// elements `data`) whose plain norm is `norm`: max|g| over its chunks, then
// the statistics of g * 2^-k, merged in chunk order. Returns `norm` unchanged
// when it is finite or when an element is inf or NaN. With ctx null (inside
// a parallel pass) the chunks are read in this thread.
template <typename T>
AccType<T> RescueNorm(tensorflow::OpKernelContext* ctx, NormKind kind,
                      const ChunkPlan& plan, int64_t i, const T* data,
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
    st[c] = ChunkStatsFor<T, kStatMaxAbs>(data + ch.begin, ch.end - ch.begin);
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
    st[c] = ChunkStats<T, true>(kind, data + ch.begin, ch.end - ch.begin, pre);
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
        ctx, kind, plan, i, data[i],
        NormFromChunkStats<Acc>(kind, chunk_stats.data() + plan.first[i],
                                plan.first[i + 1] - plan.first[i], eps),
        eps);
  }
}

// The statistics the ops gather besides a norm's own: the sum of squares,
// for the recorded L2 norm of every gradient (`RecordedNorm`).
constexpr unsigned kRecordedStats = kStatSumSq;

// The L2 norm sqrt(sum g^2) of tensor i (l2 of NORMOPT_NORM_KINDS with eps 0)
// from its sum of squares, rescued (RescueNorm) when that overflowed.
template <typename T>
AccType<T> RecordedNorm(tensorflow::OpKernelContext* ctx,
                        const ChunkPlan& plan, int64_t i, const T* data,
                        AccType<T> sum_sq) {
  using Acc = AccType<T>;
  NormStats<Acc> s = NormStats<Acc>::empty();
  s.sum_sq = sum_sq;
  return RescueNorm<T>(ctx, NormKind::kL2, plan, i, data,
                       finalize_norm(NormKind::kL2, s, Acc(0)), Acc(0));
}

// Per-tensor scales for an op that then makes one pass over every chunk, and
// the recorded L2 norm of every gradient, from the same reads.
//
// A tensor of one chunk needs no merge: its statistics are gathered in that
// pass, on the chunk it is about to update (`Of`), so small tensors cost one
// parallel pass instead of two. Tensors of several chunks (and empty ones)
// get their scale here, from a parallel pass over their chunks only. Both
// ways run the same ChunkStats and NormFromChunkStats on the same chunks, so
// the scales are the same bits as ComputeNorms gives. Every chunk's sum of
// squares is kept (with precomputed norms it is gathered in `Of`, on the
// chunk in cache) and `RecordedNorms` sums them per tensor in chunk order
// after the pass.
template <typename T>
class DeferredScales {
 public:
  using Acc = AccType<T>;

  void Compute(tensorflow::OpKernelContext* ctx, const NormSource& source,
               ScaleMode mode, const ChunkPlan& plan,
               const std::vector<const T*>& data, double eps, double clipnorm,
               const tensorflow::Tensor& precomputed_norms) {
    precomputed_ = source.precomputed;
    kind_ = source.kind;
    mode_ = mode;
    eps_ = static_cast<Acc>(eps);
    clipnorm_ = static_cast<Acc>(clipnorm);
    const int64_t n = static_cast<int64_t>(data.size());
    scales_.assign(n, TensorScale<Acc>{Acc(1), Acc(1)});
    in_pass_.assign(n, 0);
    chunk_sq_.assign(plan.size(), Acc(0));
    plan_ = &plan;
    if (precomputed_) {
      auto given = precomputed_norms.flat<Acc>();
      for (int64_t i = 0; i < n; ++i) {
        scales_[i] = scale_from_norm(mode_, given(i), clipnorm_);
      }
      return;
    }
    std::vector<int64_t> merged_chunks;  // chunks of multi-chunk tensors
    for (int64_t i = 0; i < n; ++i) {
      const int64_t count = plan.first[i + 1] - plan.first[i];
      if (count == 1) {
        in_pass_[i] = 1;
      } else {
        for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
          merged_chunks.push_back(c);
        }
      }
    }
    std::vector<NormStats<Acc>> chunk_stats(plan.size());
    ParallelForCount(ctx, static_cast<int64_t>(merged_chunks.size()),
                     kChunkElems * ChunkStatsCost(kind_),
                     [&](int64_t k) {
                       const int64_t c = merged_chunks[k];
                       const Chunk& ch = plan.chunks[c];
                       chunk_stats[c] = ChunkStats<T, false, kRecordedStats>(
                           kind_, data[ch.tensor] + ch.begin, ch.end - ch.begin);
                       chunk_sq_[c] = chunk_stats[c].sum_sq;
                     });
    for (int64_t i = 0; i < n; ++i) {
      if (in_pass_[i]) continue;
      const Acc norm = RescueNorm<T>(
          ctx, kind_, plan, i, data[i],
          NormFromChunkStats<Acc>(kind_, chunk_stats.data() + plan.first[i],
                                  plan.first[i + 1] - plan.first[i], eps_),
          eps_);
      scales_[i] = scale_from_norm(mode_, norm, clipnorm_);
    }
  }

  // The scale of the tensor of chunk c (`ch`), whose gradient chunk is
  // g[0, len). Called once per chunk, from the pass; chunks may run in
  // parallel.
  TensorScale<Acc> Of(int64_t c, const Chunk& ch, const T* g) {
    const int64_t len = ch.end - ch.begin;
    if (!in_pass_[ch.tensor]) {
      if (precomputed_) {
        chunk_sq_[c] = ChunkStatsFor<T, kRecordedStats>(g, len).sum_sq;
      }
      return scales_[ch.tensor];
    }
    const NormStats<Acc> st = ChunkStats<T, false, kRecordedStats>(kind_, g, len);
    chunk_sq_[c] = st.sum_sq;
    const Acc norm = RescueNorm<T>(
        nullptr, kind_, *plan_, ch.tensor, g - ch.begin,
        NormFromChunkStats<Acc>(kind_, &st, 1, eps_), eps_);
    return scale_from_norm(mode_, norm, clipnorm_);
  }

  // After the pass: out[i] = the L2 norm of gradient i (RecordedNorm).
  void RecordedNorms(tensorflow::OpKernelContext* ctx,
                     const std::vector<const T*>& data, Acc* out) const {
    const ChunkPlan& plan = *plan_;
    for (int64_t i = 0; i < static_cast<int64_t>(data.size()); ++i) {
      Acc sum_sq = Acc(0);
      for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
        sum_sq += chunk_sq_[c];
      }
      out[i] = RecordedNorm<T>(ctx, plan, i, data[i], sum_sq);
    }
  }

 private:
  bool precomputed_ = false;
  NormKind kind_ = NormKind::kL2;
  ScaleMode mode_ = ScaleMode::kNormalize;
  Acc eps_ = Acc(0);
  Acc clipnorm_ = Acc(0);
  const ChunkPlan* plan_ = nullptr;
  std::vector<TensorScale<Acc>> scales_;
  std::vector<char> in_pass_;  // 1: single-chunk tensor, scale made in Of
  std::vector<Acc> chunk_sq_;  // sum g^2 of every chunk
};

}  // namespace normopt

#endif  // NORMOPT_OPS_TENSOR_SCALES_H_
