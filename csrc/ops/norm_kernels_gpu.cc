// GPU kernels of NormoptNorms and NormoptScale (norm_ops.h): the CUDA
// launchers on the op's stream. Scalar hyperparameters live in host memory;
// gradients, norms and outputs on the device.
#if GOOGLE_CUDA

#include <vector>

#include "ops/element_types.h"
#include "ops/launch_tables_gpu.h"
#include "ops/norm_ops.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

using GpuDevice = Eigen::GpuDevice;

template <typename T>
struct NormsOnDevice<GpuDevice, T> {
  static absl::Status Norms(tensorflow::OpKernelContext* ctx, NormKind kind,
                            const GradList<T>& grads, double eps,
                            tensorflow::Tensor* norms) {
    tensorflow::Tensor scales;  // made by the same finish kernel, unused here
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        AccDataType<T>(), tensorflow::TensorShape({2 * grads.size()}),
        &scales));  // TensorScale pairs
    GradLaunch<T> launch(grads);
    TF_RETURN_IF_ERROR(launch.Upload(ctx));
    return launch.NormsAndScales(ctx, kind, ScaleMode::kNormalize, 1.0, eps,
                                 norms->data(), scales.data());
  }

  static absl::Status Scale(tensorflow::OpKernelContext* ctx,
                            const ScaleSpec& spec, const GradList<T>& grads,
                            const tensorflow::Tensor& given_norms,
                            const std::vector<T*>& out,
                            tensorflow::Tensor* grad_norms) {
    GradLaunch<T> launch(grads);
    const size_t outs = launch.AddPointers(out);
    TF_RETURN_IF_ERROR(launch.Upload(ctx));
    tensorflow::Tensor scales;
    TF_RETURN_IF_ERROR(
        launch.Scales(ctx, spec, given_norms, &scales, grad_norms));
    return CudaStatus(
        normopt_cuda_scale(LauncherDtype<T>(), launch.grads(),
                           launch.template Pointers<void>(outs),
                           launch.sizes(), launch.chunk_tensor(),
                           launch.chunk_start(), launch.num_chunks(),
                           kGpuChunkElems, scales.data(), launch.stream()),
        "scale kernel");
  }
};

namespace {

#define NORMOPT_REGISTER_NORM_GPU_KERNELS(T)                  \
  REGISTER_KERNEL_BUILDER(Name("NormoptNorms")                \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("epsilon"),         \
                          NormsOp<GpuDevice, T>);             \
  REGISTER_KERNEL_BUILDER(Name("NormoptScale")                \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("clipnorm")         \
                              .HostMemory("epsilon"),         \
                          ScaleOp<GpuDevice, T>);

NORMOPT_REGISTER_NORM_GPU_KERNELS(Eigen::half)
NORMOPT_REGISTER_NORM_GPU_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_NORM_GPU_KERNELS(float)
NORMOPT_REGISTER_NORM_GPU_KERNELS(double)

#undef NORMOPT_REGISTER_NORM_GPU_KERNELS

}  // namespace
}  // namespace normopt

#endif  // GOOGLE_CUDA
