// GPU kernel of NormoptApply: ApplyOp (apply_op.h) with the CUDA launcher.
//
// The CPU kernel's validation and variable locking (copy-on-write on the
// device), then on the op's stream (a sparse gradient's rows read in place,
// its absent rows as zeros: launch_tables_gpu.h, GradChunkTable): one upload
// of the launch tables (the gradient and state pointers, the chunk table and
// the rule's args), the scales and the gradients' L2 norms (2 launches for a
// built-in norm, 3 for precomputed norms) and one launch of the rule's apply
// kernel, which writes the variables and their slots in place (3 launches
// and a device workspace for a trust-ratio rule). Scalar inputs live in host memory; `decay` and
// `norms` stay on the device.
#if GOOGLE_CUDA

#include <vector>

#include "ops/apply_op.h"
#include "ops/element_types.h"
#include "ops/launch_tables_gpu.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

using GpuDevice = Eigen::GpuDevice;

template <typename T>
class ApplyOnDevice<GpuDevice, T> {
 public:
  static absl::Status Prepare(tensorflow::OpKernelContext* ctx,
                              tensorflow::Tensor* tensor) {
    return PrepareOnGpu(ctx, tensor);
  }

  // Nothing before the lock: the launch tables (with a sparse gradient's
  // rows, GradChunkTable) are built in Run.
  absl::Status BeforeLock(tensorflow::OpKernelContext*, const ApplyStep<T>&) {
    return absl::OkStatus();
  }

  absl::Status Run(tensorflow::OpKernelContext* ctx, const ApplyStep<T>& step) {
    const auto& in = step.in;
    GradLaunch<T> launch(in.grads);
    const size_t state = launch.AddPointers(step.state);
    const size_t args = launch.AddArray(
        std::vector<double>(step.args, step.args + kMaxRuleArgs));
    TF_RETURN_IF_ERROR(launch.Upload(ctx));
    tensorflow::Tensor scales;
    TF_RETURN_IF_ERROR(
        launch.Scales(ctx, in.spec, *in.norms, &scales, step.grad_norms));
    constexpr int dtype = LauncherDtype<T>();
    const int rule = static_cast<int>(step.rule);
    const int64_t bytes = normopt_cuda_apply_workspace_bytes(
        dtype, rule, launch.num_chunks(), step.n);
    tensorflow::Tensor workspace;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8,
                                          tensorflow::TensorShape({bytes}),
                                          &workspace));
    return CudaStatus(
        normopt_cuda_apply(
            dtype, rule, launch.template Pointers<void>(state), step.n,
            launch.grads(), launch.sizes(), launch.chunk_tensor(),
            launch.chunk_start(), launch.chunk_grad(), launch.first_chunk(),
            launch.num_chunks(),
            kGpuChunkElems, scales.data(), in.decay->data(),
            launch.template Array<double>(args),
            bytes > 0 ? workspace.data() : nullptr, launch.stream()),
        "apply kernel");
  }
};

namespace {

#define NORMOPT_REGISTER_APPLY_GPU_KERNEL(T)                  \
  REGISTER_KERNEL_BUILDER(Name("NormoptApply")                \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("var")              \
                              .HostMemory("slots")            \
                              .HostMemory("indices")          \
                              .HostMemory("dense_rows")       \
                              .HostMemory("lr")               \
                              .HostMemory("step")             \
                              .HostMemory("hyper")            \
                              .HostMemory("clipnorm")         \
                              .HostMemory("epsilon"),         \
                          ApplyOp<GpuDevice, T>);

NORMOPT_REGISTER_APPLY_GPU_KERNEL(Eigen::half)
NORMOPT_REGISTER_APPLY_GPU_KERNEL(Eigen::bfloat16)
NORMOPT_REGISTER_APPLY_GPU_KERNEL(float)
NORMOPT_REGISTER_APPLY_GPU_KERNEL(double)

#undef NORMOPT_REGISTER_APPLY_GPU_KERNEL

}  // namespace
}  // namespace normopt

#endif  // GOOGLE_CUDA
