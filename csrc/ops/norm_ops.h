// NormoptNorms and NormoptScale: one op-kernel class template each, for CPU
// and GPU.
//
// The op classes read and check the inputs (op_inputs.h) and allocate the
// outputs; NormsOnDevice<Device, T> computes them, specialized by
// norm_kernels.cc (CPU: the chunk loop) and norm_kernels_gpu.cc (GPU: the
// CUDA launchers), as ApplyOp pairs with ApplyOnDevice (apply_op.h).
#ifndef NORMOPT_OPS_NORM_OPS_H_
#define NORMOPT_OPS_NORM_OPS_H_

#include <vector>

#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/op_inputs.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

// Specialized per device:
//   static absl::Status Norms(ctx, kind, grads, eps, Tensor* norms)
//       norms: [N] of the accumulation type, allocated
//   static absl::Status Scale(ctx, const ScaleSpec& spec, grads,
//                             const Tensor& given_norms, std::vector<T*> out,
//                             Tensor* grad_norms)
//       out[i]: the output buffer of gradient i (null when empty);
//       grad_norms: [N] of the accumulation type, allocated: the L2 norm of
//       every gradient, from the reads that make the scales
template <typename Device, typename T>
struct NormsOnDevice;

template <typename Device, typename T>
class NormsOp : public NormsOpBase<T> {
 public:
  explicit NormsOp(tensorflow::OpKernelConstruction* ctx)
      : NormsOpBase<T>(ctx) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    GradList<T> grads;
    double eps;
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &grads, &eps));
    tensorflow::Tensor* norms;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, tensorflow::TensorShape({grads.size()}), &norms));
    OP_REQUIRES_OK(ctx, (NormsOnDevice<Device, T>::Norms(ctx, this->kind_, grads,
                                                          eps, norms)));
  }
};

template <typename Device, typename T>
class ScaleOp : public ScalingOpBase<T> {
 public:
  explicit ScaleOp(tensorflow::OpKernelConstruction* ctx)
      : ScalingOpBase<T>(ctx, /*allow_adaptive=*/false) {}

  void Compute(tensorflow::OpKernelContext* ctx) override {
    GradList<T> grads;
    OP_REQUIRES_OK(ctx, grads.Read(ctx, "grads"));
    ScaleSpec spec;
    const tensorflow::Tensor* given_norms;
    OP_REQUIRES_OK(ctx, this->ReadScaleInputs(ctx, grads.size(), &spec,
                                              &given_norms));
    OP_REQUIRES(ctx, MatrixTensors(spec, grads).empty(),
                absl::InvalidArgumentError(
                    "normopt: NormoptScale takes norms made of statistics; a "
                    "matrix norm (spectral) of a gradient of two or more axes "
                    "needs NormoptApply"));
    tensorflow::OpOutputList outputs;
    OP_REQUIRES_OK(ctx, ctx->output_list("scaled", &outputs));
    std::vector<T*> out(grads.size(), nullptr);
    for (int i = 0; i < grads.size(); ++i) {
      tensorflow::Tensor* t;
      OP_REQUIRES_OK(ctx, outputs.allocate(i, grads.tensors[i].shape(), &t));
      if (grads.sizes[i] > 0) out[i] = t->unaligned_flat<T>().data();
    }
    tensorflow::Tensor* grad_norms;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            "grad_norms", tensorflow::TensorShape({grads.size()}),
                            &grad_norms));
    OP_REQUIRES_OK(ctx, (NormsOnDevice<Device, T>::Scale(
                            ctx, spec, grads, *given_norms, out, grad_norms)));
  }
};

}  // namespace normopt

#endif  // NORMOPT_OPS_NORM_OPS_H_
