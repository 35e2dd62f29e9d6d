// GPU kernels of NormoptNorms and NormoptScale: the CPU kernels' validation
// (op_inputs.h), then the CUDA launchers on the op's stream. Scalar
// hyperparameters live in host memory; gradients, norms and outputs on the
// device.
#if GOOGLE_CUDA

#include <vector>

#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/launch_tables_gpu.h"
#include "ops/op_inputs.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {
namespace {

using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

template <typename T>
class NormsGpuOp : public NormsOpBase<T> {
 public:
  explicit NormsGpuOp(OpKernelConstruction* ctx) : NormsOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    GradList<T> grads;
    double eps;
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &grads, &eps));
    Tensor* norms;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({grads.size()}),
                                             &norms));
    Tensor scales;  // made by the same finish kernel, unused here
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(AccDataType<T>(),
                                           TensorShape({2 * grads.size()}),
                                           &scales));  // TensorScale pairs
    GradLaunch<T> launch(grads);
    OP_REQUIRES_OK(ctx, launch.Upload(ctx));
    OP_REQUIRES_OK(ctx, launch.NormsAndScales(ctx, this->kind_,
                                              ScaleMode::kNormalize, 1.0, eps,
                                              norms->data(), scales.data()));
  }
};

template <typename T>
class ScaleGpuOp : public ScalingOpBase<T> {
 public:
  explicit ScaleGpuOp(OpKernelConstruction* ctx) : ScalingOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    GradList<T> grads;
    OP_REQUIRES_OK(ctx, grads.Read(ctx, "grads"));
    double eps, clipnorm;
    const Tensor* norms_in;
    OP_REQUIRES_OK(ctx, this->ReadScaleInputs(ctx, grads.size(), &eps,
                                              &clipnorm, &norms_in));

    tensorflow::OpOutputList outputs;
    OP_REQUIRES_OK(ctx, ctx->output_list("scaled", &outputs));
    std::vector<T*> out(grads.size(), nullptr);
    for (int i = 0; i < grads.size(); ++i) {
      Tensor* t;
      OP_REQUIRES_OK(ctx, outputs.allocate(i, grads.tensors[i].shape(), &t));
      if (grads.sizes[i] > 0) out[i] = t->unaligned_flat<T>().data();
    }

    GradLaunch<T> launch(grads);
    const size_t outs = launch.AddPointers(out);
    OP_REQUIRES_OK(ctx, launch.Upload(ctx));
    Tensor scales;
    OP_REQUIRES_OK(ctx, launch.Scales(ctx, this->source_, this->mode_,
                                      clipnorm, eps, *norms_in, &scales));
    OP_REQUIRES_OK(
        ctx, CudaStatus(normopt_cuda_scale(
                            LauncherDtype<T>(), launch.grads(),
                            launch.template Pointers<void>(outs),
                            launch.sizes(), launch.chunk_tensor(),
                            launch.chunk_start(), launch.num_chunks(),
                            kGpuChunkElems, scales.data(), launch.stream()),
                        "scale kernel"));
  }
};

#define NORMOPT_REGISTER_NORM_GPU_KERNELS(T)                  \
  REGISTER_KERNEL_BUILDER(Name("NormoptNorms")                \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("epsilon"),         \
                          NormsGpuOp<T>);                     \
  REGISTER_KERNEL_BUILDER(Name("NormoptScale")                \
                              .Device(tensorflow::DEVICE_GPU) \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("clipnorm")         \
                              .HostMemory("epsilon"),         \
                          ScaleGpuOp<T>);

NORMOPT_REGISTER_NORM_GPU_KERNELS(Eigen::half)
NORMOPT_REGISTER_NORM_GPU_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_NORM_GPU_KERNELS(float)
NORMOPT_REGISTER_NORM_GPU_KERNELS(double)

#undef NORMOPT_REGISTER_NORM_GPU_KERNELS

}  // namespace
}  // namespace normopt

#endif  // GOOGLE_CUDA
