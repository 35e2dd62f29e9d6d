// What the CPU and GPU kernels of both apply ops read and check before they
// touch a variable: the attrs, the gradients, the scalar hyperparameters and
// the per-tensor inputs. Device-agnostic: input tensors are only validated
// here, never dereferenced.
#ifndef NORMOPT_OPS_APPLY_INPUTS_H_
#define NORMOPT_OPS_APPLY_INPUTS_H_

#include <string>

#include "ops/grad_list.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

// The number of inputs of list input `name`.
inline absl::Status ListLength(const tensorflow::OpKernel& op,
                               const char* name, int* count) {
  int start, stop;
  TF_RETURN_IF_ERROR(op.InputRange(name, &start, &stop));
  *count = stop - start;
  return absl::OkStatus();
}

// What both apply ops share: attrs, and the inputs read before locking.
// Device kernels derive from it.
template <typename T>
class ApplyOpBase : public tensorflow::OpKernel {
 public:
  explicit ApplyOpBase(tensorflow::OpKernelConstruction* ctx)
      : tensorflow::OpKernel(ctx) {
    std::string kind, mode;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mode", &mode));
    OP_REQUIRES_OK(ctx, ParseNormSource(kind, /*allow_precomputed=*/true,
                                        &source_));
    OP_REQUIRES_OK(ctx, ParseMode(mode, &mode_));
    OP_REQUIRES_OK(ctx, CheckAccAttr<T>(ctx));
  }

 protected:
  // The gradients, lr, epsilon, clipnorm and the validated per-tensor
  // inputs (tensors on the kernel's device).
  struct Inputs {
    GradList<T> grads;
    double lr = 0, eps = 0, clipnorm = 0;
    const tensorflow::Tensor* decay = nullptr;
    const tensorflow::Tensor* norms = nullptr;
  };

  absl::Status ReadInputs(tensorflow::OpKernelContext* ctx, Inputs* in) const {
    TF_RETURN_IF_ERROR(in->grads.Read(ctx, "grad"));
    const int n = in->grads.size();
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "lr", &in->lr));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "epsilon", &in->eps));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "clipnorm", &in->clipnorm));
    TF_RETURN_IF_ERROR(CheckClipnorm(mode_, in->clipnorm));
    TF_RETURN_IF_ERROR(ctx->input("decay", &in->decay));
    TF_RETURN_IF_ERROR(ctx->input("norms", &in->norms));
    TF_RETURN_IF_ERROR(CheckPerTensorInput(*in->decay, "decay", n));
    if (source_.precomputed) {
      TF_RETURN_IF_ERROR(CheckPerTensorInput(*in->norms, "norms", n));
    }
    return absl::OkStatus();
  }

  NormSource source_;
  ScaleMode mode_;
};

}  // namespace normopt

#endif  // NORMOPT_OPS_APPLY_INPUTS_H_
