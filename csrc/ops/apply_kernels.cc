// CPU kernel of NormoptApply: the generic multi-tensor apply on the CPU.
//
// Before any lock, the statistics of the gradients that span several chunks
// (or the given norms) become per-tensor scales; then one parallel pass over
// the fixed chunks (chunk_plan.h) scales each gradient on the fly and applies
// the rule (normopt/update_rules.h) to the variable and its slots in place. A
// gradient of one chunk gets its statistics in that same pass, on the chunk
// it is about to update (StepScales in tensor_scales.h). The same
// statistics give the L2 norm of every gradient, output `grad_norms`.
//
// A trust-ratio rule (update_rules.h) takes two parallel passes instead of
// one: phase 1 reads every chunk and sums its w^2 and u^2 (kLanes lanes
// added by a fixed tree, as chunk_stats.h), storing nothing; each tensor's
// chunk sums are added in chunk order, which makes its ratio; phase 2 runs
// the same element steps again with the ratio and stores the variables and
// slots. Every result depends only on the chunking, not on the threads.

// PrepareToUpdateVariable copies on the CPU (ThreadPoolDevice) with Eigen.
#define EIGEN_USE_THREADS

#include <memory>
#include <vector>

#include "normopt/update_rules.h"
#include "ops/apply_op.h"
#include "ops/chunk_plan.h"
#include "ops/chunk_stats.h"
#include "ops/element_types.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace normopt {

using CpuDevice = Eigen::ThreadPoolDevice;

namespace {

// One chunk of n elements: w, the rule's slots s[q] and g, read once and
// written once each, g scaled by its (tensor's or unit's) scale. Decay is a
// template argument so the loop is branch-free; the slot pointers come from
// an array, which the compiler cannot prove disjoint: ForEachScaled's loops
// are ivdep.
template <typename T, typename Rule, bool Decay>
void ApplyRuleChunk(const Rule& rule, AccType<T> lr, AccType<T> wd,
                    const ChunkScales<AccType<T>>& scales, T* __restrict w,
                    T* const* slots, const T* __restrict g, int64_t n) {
  using A = AccType<T>;
  constexpr int K = Rule::kSlots;
  constexpr int KS = K > 0 ? K : 1;
  T* s[KS] = {};
  for (int q = 0; q < K; ++q) s[q] = slots[q];
  ForEachScaled(scales, n, [&](int64_t j, const TensorScale<A>& scale) {
    A wa = ToAcc(w[j]);
    A sa[KS];
    for (int q = 0; q < K; ++q) sa[q] = ToAcc(s[q][j]);
    update_element<Decay>(rule, lr, wd, scale, wa, sa, ToAcc(g[j]));
    w[j] = FromAcc<T>(wa);
    for (int q = 0; q < K; ++q) s[q][j] = FromAcc<T>(sa[q]);
  });
}

// Phase 1 of a trust-ratio rule on one chunk, nothing stored: w decayed,
// the slots updated, u their direction; returns the chunk's sums of w^2 and
// u^2. Element j goes to lane j % kLanes, the lanes are added by SumLanes'
// fixed tree (whether g's scale is the tensor's or its unit's).
template <typename T, typename Rule, bool Decay>
TrustSums<AccType<T>> TrustSumsChunk(const Rule& rule, AccType<T> lr,
                                     AccType<T> wd,
                                     const ChunkScales<AccType<T>>& scales,
                                     const T* __restrict w, T* const* slots,
                                     const T* __restrict g, int64_t n) {
  using A = AccType<T>;
  constexpr int K = Rule::kSlots;
  constexpr int KS = K > 0 ? K : 1;
  const T* s[KS] = {};
  for (int q = 0; q < K; ++q) s[q] = slots[q];
  auto sums = [&](auto scale_of) {
    A w_lanes[kLanes] = {}, u_lanes[kLanes] = {};
    auto element = [&](int64_t j, int l) {
      const A wa = decayed<Decay>(ToAcc(w[j]), wd, lr);
      A sa[KS];
      for (int q = 0; q < K; ++q) sa[q] = ToAcc(s[q][j]);
      rule.moments(sa, apply_scale(ToAcc(g[j]), scale_of(j)));
      const A u = rule.direction(sa);
      w_lanes[l] += wa * wa;
      u_lanes[l] += u * u;
    };
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) element(j + l, l);
    }
    for (int l = 0; j + l < n; ++l) element(j + l, l);
    return TrustSums<A>{SumLanes(w_lanes), SumLanes(u_lanes)};
  };
  if (scales.units == 1) {
    const TensorScale<A> scale = scales.scales[0];
    return sums([scale](int64_t) { return scale; });
  }
  return sums([&scales](int64_t j) {
    return scales.scales[(scales.col0 + j) % scales.units];
  });
}

// Phase 2 of a trust-ratio rule on one chunk: phase 1's decay and slots
// again, then the variable with its tensor's ratio r; w and the slots
// stored.
template <typename T, typename Rule, bool Decay>
void TrustUpdateChunk(const Rule& rule, AccType<T> lr, AccType<T> wd,
                      const ChunkScales<AccType<T>>& scales, AccType<T> r,
                      T* __restrict w, T* const* slots,
                      const T* __restrict g, int64_t n) {
  using A = AccType<T>;
  constexpr int K = Rule::kSlots;
  constexpr int KS = K > 0 ? K : 1;
  T* s[KS] = {};
  for (int q = 0; q < K; ++q) s[q] = slots[q];
  ForEachScaled(scales, n, [&](int64_t j, const TensorScale<A>& scale) {
    A wa = decayed<Decay>(ToAcc(w[j]), wd, lr);
    A sa[KS];
    for (int q = 0; q < K; ++q) sa[q] = ToAcc(s[q][j]);
    rule.moments(sa, apply_scale(ToAcc(g[j]), scale));
    rule(wa, sa, r);
    w[j] = FromAcc<T>(wa);
    for (int q = 0; q < K; ++q) s[q][j] = FromAcc<T>(sa[q]);
  });
}

}  // namespace

template <typename T>
class ApplyOnDevice<CpuDevice, T> {
 public:
  using Acc = AccType<T>;

  static absl::Status Prepare(tensorflow::OpKernelContext* ctx,
                              tensorflow::Tensor* tensor) {
    return LockedVariables::PrepareOnCpu<T>(ctx, tensor);
  }

  // Plans the chunks and computes the scales (adaptive clipping reads the
  // variables: its scales wait for the lock, in Run).
  absl::Status BeforeLock(tensorflow::OpKernelContext* ctx,
                          const ApplyStep<T>& step) {
    const auto& in = step.in;
    plan_ = std::make_unique<ChunkPlan>(in.grads.sizes);
    if (!in.spec.adaptive) {
      scales_.Compute(ctx, in.spec, *plan_, in.grads, {}, *in.norms, &step.vectors);
    }
    return absl::OkStatus();
  }

  absl::Status Run(tensorflow::OpKernelContext* ctx, const ApplyStep<T>& step) {
    const auto& in = step.in;
    if (in.spec.adaptive) {
      const std::vector<const T*> weights(step.state.begin(),
                                          step.state.begin() + step.n);
      scales_.Compute(ctx, in.spec, *plan_, in.grads, weights, *in.norms,
                      &step.vectors);
    }
    with_rule(step.rule, [&](auto tag) {
      using Rule = typename decltype(tag)::template type<Acc>;
      if constexpr (kIsTrustRatio<Rule>) {
        RunTrustRatio<Rule>(ctx, step);
      } else {
        RunOnePhase<Rule>(ctx, step);
      }
    });
    scales_.RecordedNorms(ctx, step.in.grads,
                          step.grad_norms->template flat<Acc>().data());
    return absl::OkStatus();
  }

 private:
  // A chunk's variable and K slots (the state table is slot-major).
  template <int K>
  struct ChunkState {
    T* w;
    T* slots[K > 0 ? K : 1];
  };

  template <int K>
  static ChunkState<K> StateOf(const ApplyStep<T>& step, const Chunk& ch) {
    ChunkState<K> s{step.state[ch.tensor] + ch.begin, {}};
    for (int q = 0; q < K; ++q) {
      s.slots[q] = step.state[(1 + q) * step.n + ch.tensor] + ch.begin;
    }
    return s;
  }

  // ... and its gradient (a sparse gradient's chunk is gathered,
  // GradList::Elements).
  template <int K>
  struct ChunkData : ChunkState<K> {
    const T* g;
    int64_t len;
  };

  template <int K>
  static ChunkData<K> DataOf(const ApplyStep<T>& step, const Chunk& ch) {
    const int64_t len = ch.end - ch.begin;
    return {StateOf<K>(step, ch),
            step.in.grads.Elements(ch.tensor, ch.begin, len), len};
  }

  template <typename Rule>
  void RunOnePhase(tensorflow::OpKernelContext* ctx, const ApplyStep<T>& step) {
    constexpr int K = Rule::kSlots;
    const Rule rule(step.args);
    const Acc lr = static_cast<Acc>(step.args[0]);
    const Acc* decay = step.in.decay->template flat<Acc>().data();
    const ChunkPlan& plan = *plan_;
    const GradList<T>& grads = step.in.grads;
    ParallelForChunks(ctx, plan, 4 + 3 * K, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const Acc wd = decay[ch.tensor];
      if constexpr (kZeroGradientKeepsState<Rule>) {
        if (grads.sparse[ch.tensor]) {
          if (wd != Acc(0)) {
            UpdatePresentRows<Rule, true>(rule, lr, wd, step, c, ch);
          } else {
            UpdatePresentRows<Rule, false>(rule, lr, wd, step, c, ch);
          }
          return;
        }
      }
      const ChunkData<K> d = DataOf<K>(step, ch);
      const ChunkScales<Acc> s = scales_.Of(c, ch, d.g, d.w);
      if (wd != Acc(0)) {
        ApplyRuleChunk<T, Rule, true>(rule, lr, wd, s, d.w, d.slots, d.g, d.len);
      } else {
        ApplyRuleChunk<T, Rule, false>(rule, lr, wd, s, d.w, d.slots, d.g, d.len);
      }
    });
  }

  // Chunk c of a sparse gradient under a rule that keeps its state for a
  // zero gradient, as Keras's update of one: decay on every row (Keras's
  // _apply_weight_decay), the rule on the present rows only, their gradient
  // read in place; the slots of absent rows are neither read nor written.
  template <typename Rule, bool Decay>
  void UpdatePresentRows(const Rule& rule, Acc lr, Acc wd,
                         const ApplyStep<T>& step, int64_t c,
                         const Chunk& ch) {
    constexpr int K = Rule::kSlots;
    const ChunkState<K> state = StateOf<K>(step, ch);
    T* const w = state.w;
    const ChunkScales<Acc> s = scales_.Of(c, ch, nullptr, w);
    auto piece = [&](int64_t at, const T* g, int64_t n) {
      if (g == nullptr) {  // absent rows: only decayed
        if constexpr (Decay) {
          T* __restrict row = w + at;
          for (int64_t j = 0; j < n; ++j) {
            row[j] = FromAcc<T>(decayed<true>(ToAcc(row[j]), wd, lr));
          }
        }
        return;
      }
      T* row_slots[K > 0 ? K : 1] = {};
      for (int q = 0; q < K; ++q) row_slots[q] = state.slots[q] + at;
      ApplyRuleChunk<T, Rule, Decay>(rule, lr, wd, s, w + at, row_slots, g, n);
    };
    step.in.grads.ForEachRowPiece(ch.tensor, ch.begin, ch.end - ch.begin,
                                  piece);
  }

  // Phase 1 over every chunk, the per-tensor ratios, phase 2 over every chunk.
  template <typename Rule>
  void RunTrustRatio(tensorflow::OpKernelContext* ctx,
                     const ApplyStep<T>& step) {
    constexpr int K = Rule::kSlots;
    const Rule rule(step.args);
    const Acc lr = static_cast<Acc>(step.args[0]);
    const Acc* decay = step.in.decay->template flat<Acc>().data();
    const ChunkPlan& plan = *plan_;
    const int n = step.n;
    std::vector<ChunkScales<Acc>> chunk_scales(plan.size());
    std::vector<TrustSums<Acc>> chunk_sums(plan.size());
    ParallelForChunks(ctx, plan, 4 + 2 * K, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const Acc wd = decay[ch.tensor];
      const ChunkData<K> d = DataOf<K>(step, ch);
      const ChunkScales<Acc> s = chunk_scales[c] = scales_.Of(c, ch, d.g, d.w);
      chunk_sums[c] =
          wd != Acc(0)
              ? TrustSumsChunk<T, Rule, true>(rule, lr, wd, s, d.w, d.slots,
                                              d.g, d.len)
              : TrustSumsChunk<T, Rule, false>(rule, lr, wd, s, d.w, d.slots,
                                               d.g, d.len);
    });
    std::vector<Acc> ratios(n, Acc(1));
    for (int i = 0; i < n; ++i) {
      TrustSums<Acc> sums{Acc(0), Acc(0)};
      for (int64_t c = plan.first[i]; c < plan.first[i + 1]; ++c) {
        sums.w_sq += chunk_sums[c].w_sq;
        sums.u_sq += chunk_sums[c].u_sq;
      }
      ratios[i] = rule.ratio(sums.w_sq, sums.u_sq);
    }
    ParallelForChunks(ctx, plan, 4 + 3 * K, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const Acc wd = decay[ch.tensor];
      const Acc r = ratios[ch.tensor];
      const ChunkData<K> d = DataOf<K>(step, ch);
      if (wd != Acc(0)) {
        TrustUpdateChunk<T, Rule, true>(rule, lr, wd, chunk_scales[c], r, d.w,
                                        d.slots, d.g, d.len);
      } else {
        TrustUpdateChunk<T, Rule, false>(rule, lr, wd, chunk_scales[c], r,
                                         d.w, d.slots, d.g, d.len);
      }
    });
  }

  std::unique_ptr<ChunkPlan> plan_;
  StepScales<T> scales_;
};

namespace {

#define NORMOPT_REGISTER_APPLY_KERNEL(T)                                  \
  REGISTER_KERNEL_BUILDER(                                                \
      Name("NormoptApply").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      ApplyOp<CpuDevice, T>);

NORMOPT_REGISTER_APPLY_KERNEL(Eigen::half)
NORMOPT_REGISTER_APPLY_KERNEL(Eigen::bfloat16)
NORMOPT_REGISTER_APPLY_KERNEL(float)
NORMOPT_REGISTER_APPLY_KERNEL(double)

#undef NORMOPT_REGISTER_APPLY_KERNEL

}  // namespace
}  // namespace normopt
