// CPU kernel of NormoptApply: the generic multi-tensor apply on the CPU.
//
// Before any lock, the statistics of the gradients that span several chunks
// (or the given norms) become per-tensor scales; then one parallel pass over
// the fixed chunks (chunk_plan.h) scales each gradient on the fly and applies
// the rule (normopt/update_rules.h) to the variable and its slots in place. A
// gradient of one chunk gets its statistics in that same pass, on the chunk
// it is about to update (StepScales in tensor_scales.h). The same
// statistics give the L2 norm of every gradient, output `grad_norms`.

// PrepareToUpdateVariable copies on the CPU (ThreadPoolDevice) with Eigen.
#define EIGEN_USE_THREADS

#include <memory>

#include "normopt/update_rules.h"
#include "ops/apply_op.h"
#include "ops/chunk_plan.h"
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

}  // namespace

template <typename T>
class ApplyOnDevice<CpuDevice, T> {
 public:
  using Acc = AccType<T>;

  static absl::Status Prepare(tensorflow::OpKernelContext* ctx,
                              tensorflow::Tensor* tensor,
                              bool copy_on_read_mode) {
    return LockedVariables::PrepareOnCpu<T>(ctx, tensor, copy_on_read_mode);
  }

  // Plans the chunks and computes the scales (adaptive clipping reads the
  // variables: its scales wait for the lock, in Run).
  absl::Status BeforeLock(tensorflow::OpKernelContext* ctx,
                          const ApplyStep<T>& step) {
    const auto& in = step.in;
    plan_ = std::make_unique<ChunkPlan>(in.grads.sizes);
    if (!in.spec.adaptive) {
      scales_.Compute(ctx, in.spec, *plan_, in.grads, {}, *in.norms);
    }
    return absl::OkStatus();
  }

  absl::Status Run(tensorflow::OpKernelContext* ctx, const ApplyStep<T>& step) {
    const auto& in = step.in;
    if (in.spec.adaptive) {
      const std::vector<const T*> weights(step.state.begin(),
                                          step.state.begin() + step.n);
      scales_.Compute(ctx, in.spec, *plan_, in.grads, weights, *in.norms);
    }
    with_rule(step.rule, [&](auto tag) {
      using Rule = typename decltype(tag)::template type<Acc>;
      constexpr int K = Rule::kSlots;
      const Rule rule(step.args);
      const Acc lr = static_cast<Acc>(step.args[0]);
      const Acc* decay = step.in.decay->template flat<Acc>().data();
      const ChunkPlan& plan = *plan_;
      const int n = step.n;
      ParallelForChunks(ctx, plan, 4 + 3 * K, [&](int64_t c) {
        const Chunk& ch = plan.chunks[c];
        const int i = ch.tensor;
        T* slots[K > 0 ? K : 1] = {};
        for (int q = 0; q < K; ++q) slots[q] = step.state[(1 + q) * n + i] + ch.begin;
        T* w = step.state[i] + ch.begin;
        const T* g = step.in.grads.data[i] + ch.begin;
        const ChunkScales<Acc> s = scales_.Of(c, ch, g, w);
        const int64_t len = ch.end - ch.begin;
        if (decay[i] != Acc(0)) {
          ApplyRuleChunk<T, Rule, true>(rule, lr, decay[i], s, w, slots, g, len);
        } else {
          ApplyRuleChunk<T, Rule, false>(rule, lr, decay[i], s, w, slots, g, len);
        }
      });
    });
    scales_.RecordedNorms(ctx, step.in.grads.data,
                          step.grad_norms->template flat<Acc>().data());
    return absl::OkStatus();
  }

 private:
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
