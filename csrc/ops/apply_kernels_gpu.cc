// GPU kernels of NormoptApplySgd and NormoptApplyAdam.
//
// The CPU kernels' validation (apply_kernels.cc), the same variable locking
// (locked_variables.h, copy-on-write on the device), then on the op's
// stream: one upload of the launch tables, the scales (2 launches for a
// built-in norm, 1 for precomputed norms) and one fused update launch that
// writes the variables and their slots in place. Scalar hyperparameters
// live in host memory; `decay` and `norms` stay on the device.
#if GOOGLE_CUDA

#include <string>
#include <vector>

#include "ops/op_inputs.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/launch_tables_gpu.h"
#include "ops/locked_variables.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class ApplySgdGpuOp : public ApplyOpBase<T> {
 public:
  explicit ApplySgdGpuOp(OpKernelConstruction* ctx) : ApplyOpBase<T>(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("nesterov", &nesterov_));
  }

  void Compute(OpKernelContext* ctx) override {
    int n = 0, n_slots = 0;
    double momentum;
    OP_REQUIRES_OK(ctx, this->ReadSgdInputs(ctx, &n, &momentum, &n_slots));
    typename ApplyOpBase<T>::Inputs in;
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &in));

    LockedVariables locked;
    int count;
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "var", &count));
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "momentum_slot", &count));
    locked.LockAll();
    std::vector<T*> w, m(n, nullptr);
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "var", 0, in.grads, &w,
                                          &PrepareOnGpu));
    if (n_slots > 0) {
      OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "momentum_slot", n, in.grads,
                                            &m, &PrepareOnGpu));
    }

    GradLaunch<T> launch(in.grads);
    const size_t weights = launch.AddPointers(w);
    const size_t momenta = launch.AddPointers(m);
    OP_REQUIRES_OK(ctx, launch.Upload(ctx));
    Tensor scales;
    OP_REQUIRES_OK(ctx, launch.Scales(ctx, this->source_, this->mode_,
                                      in.clipnorm, in.eps, *in.norms,
                                      &scales));
    OP_REQUIRES_OK(
        ctx,
        CudaStatus(
            normopt_cuda_sgd(
                LauncherDtype<T>(), launch.template Pointers<void>(weights),
                n_slots > 0 ? launch.template Pointers<void>(momenta)
                            : nullptr,
                launch.grads(),
                launch.sizes(), launch.chunk_tensor(), launch.chunk_start(),
                launch.num_chunks(), kGpuChunkElems, scales.data(),
                in.decay->data(), in.lr, momentum, nesterov_ ? 1 : 0,
                launch.stream()),
            "SGD kernel"));
  }

 private:
  bool nesterov_;
};

template <typename T>
class ApplyAdamGpuOp : public ApplyOpBase<T> {
 public:
  explicit ApplyAdamGpuOp(OpKernelConstruction* ctx)
      : ApplyOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    typename ApplyOpBase<T>::AdamInputs adam;
    OP_REQUIRES_OK(ctx, this->ReadAdamInputs(ctx, &adam));
    const int n = adam.n;
    const bool amsgrad = adam.amsgrad;
    typename ApplyOpBase<T>::Inputs in;
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &in));

    LockedVariables locked;
    int count;
    for (const char* name : {"var", "m", "v", "vhat"}) {
      OP_REQUIRES_OK(ctx, locked.Add(ctx, name, &count));
    }
    locked.LockAll();
    std::vector<T*> w, m, v, vhat(n, nullptr);
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "var", 0, in.grads, &w,
                                          &PrepareOnGpu));
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "m", n, in.grads, &m,
                                          &PrepareOnGpu));
    OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "v", 2 * n, in.grads, &v,
                                          &PrepareOnGpu));
    if (amsgrad) {
      OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, "vhat", 3 * n, in.grads,
                                            &vhat, &PrepareOnGpu));
    }

    GradLaunch<T> launch(in.grads);
    const size_t weights = launch.AddPointers(w);
    const size_t ms = launch.AddPointers(m);
    const size_t vs = launch.AddPointers(v);
    const size_t vhats = launch.AddPointers(vhat);
    OP_REQUIRES_OK(ctx, launch.Upload(ctx));
    Tensor scales;
    OP_REQUIRES_OK(ctx, launch.Scales(ctx, this->source_, this->mode_,
                                      in.clipnorm, in.eps, *in.norms,
                                      &scales));
    OP_REQUIRES_OK(
        ctx,
        CudaStatus(
            normopt_cuda_adam(
                LauncherDtype<T>(), launch.template Pointers<void>(weights),
                launch.template Pointers<void>(ms),
                launch.template Pointers<void>(vs),
                launch.template Pointers<void>(vhats), launch.grads(),
                launch.sizes(), launch.chunk_tensor(), launch.chunk_start(),
                launch.num_chunks(), kGpuChunkElems, scales.data(),
                in.decay->data(), in.lr, adam.beta_1, adam.beta_2,
                adam.adam_epsilon, adam.step,
                amsgrad ? 1 : 0, launch.stream()),
            "Adam kernel"));
  }
};

#define NORMOPT_REGISTER_APPLY_GPU_KERNELS(T)                 \
  REGISTER_KERNEL_BUILDER(Name("NormoptApplySgd")             \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("var")              \
                              .HostMemory("momentum_slot")    \
                              .HostMemory("lr")               \
                              .HostMemory("momentum")         \
                              .HostMemory("clipnorm")         \
                              .HostMemory("epsilon"),         \
                          ApplySgdGpuOp<T>);                  \
  REGISTER_KERNEL_BUILDER(Name("NormoptApplyAdam")            \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("var")              \
                              .HostMemory("m")                \
                              .HostMemory("v")                \
                              .HostMemory("vhat")             \
                              .HostMemory("lr")               \
                              .HostMemory("beta_1")           \
                              .HostMemory("beta_2")           \
                              .HostMemory("adam_epsilon")     \
                              .HostMemory("step")             \
                              .HostMemory("clipnorm")         \
                              .HostMemory("epsilon"),         \
                          ApplyAdamGpuOp<T>);

NORMOPT_REGISTER_APPLY_GPU_KERNELS(Eigen::half)
NORMOPT_REGISTER_APPLY_GPU_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_APPLY_GPU_KERNELS(float)
NORMOPT_REGISTER_APPLY_GPU_KERNELS(double)

#undef NORMOPT_REGISTER_APPLY_GPU_KERNELS

}  // namespace
}  // namespace normopt

#endif  // GOOGLE_CUDA
