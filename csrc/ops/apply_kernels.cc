// CPU kernels of NormoptApplySgd and NormoptApplyAdam.
//
// One step: validate, gather the statistics of the gradients that span
// several chunks (or take the precomputed norms), lock the variables, then
// one parallel pass over the fixed chunks that scales the gradient on the fly
// and updates the variable and its slots in place (update_rules.h). A
// gradient of one chunk gets its statistics in that same pass, on the chunk
// it is about to update (DeferredScales in tensor_scales.h).

// PrepareToUpdateVariable copies on the CPU (ThreadPoolDevice) with Eigen.
#define EIGEN_USE_THREADS

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "ops/op_inputs.h"
#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/locked_variables.h"
#include "ops/tensor_scales.h"
#include "ops/update_rules.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

// The CPU side of what both apply ops share (ApplyOpBase in
// op_inputs.h): per-tensor scales and weight decay, made before any lock.
template <typename T>
class ApplyCpuOpBase : public ApplyOpBase<T> {
 public:
  using Acc = AccType<T>;
  using Inputs = typename ApplyOpBase<T>::Inputs;

  explicit ApplyCpuOpBase(OpKernelConstruction* ctx) : ApplyOpBase<T>(ctx) {}

 protected:
  // Everything a step needs that needs no variable.
  struct Prepared {
    Inputs in;
    std::unique_ptr<ChunkPlan> plan;
    DeferredScales<T> scales;
    const Acc* decay = nullptr;  // weight decay per tensor (the `decay` input)
  };

  // Reads and checks the inputs, then plans the chunks and computes the scales.
  absl::Status Prepare(OpKernelContext* ctx, Prepared* p) {
    TF_RETURN_IF_ERROR(this->ReadInputs(ctx, &p->in));
    p->decay = p->in.decay->template flat<Acc>().data();
    p->plan = std::make_unique<ChunkPlan>(p->in.grads.sizes);
    p->scales.Compute(ctx, this->source_, this->mode_, *p->plan,
                      p->in.grads.data, p->in.eps, p->in.clipnorm,
                      *p->in.norms);
    return absl::OkStatus();
  }
};

template <typename T>
class ApplySgdOp : public ApplyCpuOpBase<T> {
 public:
  using Acc = AccType<T>;

  explicit ApplySgdOp(OpKernelConstruction* ctx) : ApplyCpuOpBase<T>(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov_));
  }

  void Compute(OpKernelContext* ctx) override {
    int n = 0, n_slots = 0;
    double momentum;
    OP_REQUIRES_OK(ctx, this->ReadSgdInputs(ctx, &n, &momentum, &n_slots));
    typename ApplyCpuOpBase<T>::Prepared prep;
    OP_REQUIRES_OK(ctx, this->Prepare(ctx, &prep));
    const GradList<T>& grads = prep.in.grads;
    const double lr = prep.in.lr;
    const Acc* decay = prep.decay;
    const DeferredScales<T>& scales = prep.scales;

    LockedVariables locked;
    int count;
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "var", &count));
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "momentum_slot", &count));
    locked.LockAll();
    std::vector<T*> w, m;
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "var", 0, grads, &w));
    if (n_slots > 0) {
      OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "momentum_slot", n, grads, &m));
    } else {
      m.assign(n, nullptr);
    }

    const SgdScalars<Acc> k = sgd_scalars<Acc>(lr, momentum);
    const int variant = n_slots == 0 ? 0 : (nesterov_ ? 2 : 1);
    const ChunkPlan& plan = *prep.plan;
    ParallelForChunks(ctx, plan, 3, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const int i = ch.tensor;
      const int64_t len = ch.end - ch.begin;
      T* wi = w[i] + ch.begin;
      T* mi = m[i] == nullptr ? nullptr : m[i] + ch.begin;
      const T* gi = grads.data[i] + ch.begin;
      const bool decays = decay[i] != Acc(0);
      const TensorScale<Acc> s = scales.Of(ch, gi);
#define NORMOPT_SGD(V, D) \
  SgdChunk<T, V, D>(wi, mi, gi, len, s, decay[i], k)
      switch (variant * 2 + (decays ? 1 : 0)) {
        case 0: NORMOPT_SGD(0, false); break;
        case 1: NORMOPT_SGD(0, true); break;
        case 2: NORMOPT_SGD(1, false); break;
        case 3: NORMOPT_SGD(1, true); break;
        case 4: NORMOPT_SGD(2, false); break;
        default: NORMOPT_SGD(2, true); break;
      }
#undef NORMOPT_SGD
    });
  }

 private:
  bool nesterov_;
};

template <typename T>
class ApplyAdamOp : public ApplyCpuOpBase<T> {
 public:
  using Acc = AccType<T>;

  explicit ApplyAdamOp(OpKernelConstruction* ctx) : ApplyCpuOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    typename ApplyOpBase<T>::AdamInputs adam;
    OP_REQUIRES_OK(ctx, this->ReadAdamInputs(ctx, &adam));
    const int n = adam.n;
    const bool amsgrad = adam.amsgrad;

    typename ApplyCpuOpBase<T>::Prepared prep;
    OP_REQUIRES_OK(ctx, this->Prepare(ctx, &prep));
    const GradList<T>& grads = prep.in.grads;
    const double lr = prep.in.lr;
    const Acc* decay = prep.decay;
    const DeferredScales<T>& scales = prep.scales;

    LockedVariables locked;
    int count;
    for (const char* name : {"var", "m", "v", "vhat"}) {
      OP_REQUIRES_OK(ctx, locked.Add(ctx, name, &count));
    }
    locked.LockAll();
    std::vector<T*> w, m, v, vhat;
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "var", 0, grads, &w));
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "m", n, grads, &m));
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "v", 2 * n, grads, &v));
    if (amsgrad) {
      OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "vhat", 3 * n, grads, &vhat));
    } else {
      vhat.assign(n, nullptr);
    }

    const AdamScalars<Acc> k =
        adam_scalars<Acc>(lr, adam.beta_1, adam.beta_2, adam.adam_epsilon,
                          adam.step);
    const ChunkPlan& plan = *prep.plan;
    ParallelForChunks(ctx, plan, 10, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const int i = ch.tensor;
      const int64_t len = ch.end - ch.begin;
      T* wi = w[i] + ch.begin;
      T* mi = m[i] + ch.begin;
      T* vi = v[i] + ch.begin;
      T* hi = vhat[i] == nullptr ? nullptr : vhat[i] + ch.begin;
      const T* gi = grads.data[i] + ch.begin;
      const bool decays = decay[i] != Acc(0);
      const TensorScale<Acc> s = scales.Of(ch, gi);
#define NORMOPT_ADAM(A, D) \
  AdamChunk<T, A, D>(wi, mi, vi, hi, gi, len, s, decay[i], k)
      switch ((amsgrad ? 2 : 0) + (decays ? 1 : 0)) {
        case 0: NORMOPT_ADAM(false, false); break;
        case 1: NORMOPT_ADAM(false, true); break;
        case 2: NORMOPT_ADAM(true, false); break;
        default: NORMOPT_ADAM(true, true); break;
      }
#undef NORMOPT_ADAM
    });
  }
};

#define NORMOPT_REGISTER_APPLY_KERNELS(T)                                   \
  REGISTER_KERNEL_BUILDER(Name("NormoptApplySgd")                           \
                              .Device(tensorflow::DEVICE_CPU)               \
                              .TypeConstraint<T>("T"),                      \
                          ApplySgdOp<T>);                                   \
  REGISTER_KERNEL_BUILDER(Name("NormoptApplyAdam")                          \
                              .Device(tensorflow::DEVICE_CPU)               \
                              .TypeConstraint<T>("T"),                      \
                          ApplyAdamOp<T>);

NORMOPT_REGISTER_APPLY_KERNELS(Eigen::half)
NORMOPT_REGISTER_APPLY_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_APPLY_KERNELS(float)
NORMOPT_REGISTER_APPLY_KERNELS(double)

#undef NORMOPT_REGISTER_APPLY_KERNELS

}  // namespace
}  // namespace normopt
