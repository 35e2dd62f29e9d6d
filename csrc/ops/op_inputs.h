// What the CPU and GPU kernels of the three ops read and check before they
// compute: the attrs, the gradients, the scalar hyperparameters and the
// per-tensor inputs. Device-agnostic: input tensors are only validated here,
// never dereferenced. Device kernels derive from these bases.
#ifndef NORMOPT_OPS_OP_INPUTS_H_
#define NORMOPT_OPS_OP_INPUTS_H_

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

// A variable list input must hold exactly n variables (one per gradient).
inline absl::Status CheckVariableCount(const char* name, int count, int n) {
  if (count != n) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must hold " +
        std::to_string(n) + " variables (one per gradient), got " +
        std::to_string(count));
  }
  return absl::OkStatus();
}

// Attr `kind` of NormoptNorms (built-in kinds only) and its inputs.
template <typename T>
class NormsOpBase : public tensorflow::OpKernel {
 public:
  explicit NormsOpBase(tensorflow::OpKernelConstruction* ctx)
      : tensorflow::OpKernel(ctx) {
    std::string kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    NormSource source;
    OP_REQUIRES_OK(ctx, ParseNormSource(kind, /*allow_precomputed=*/false,
                                        &source));
    kind_ = source.kind;
    OP_REQUIRES_OK(ctx, CheckAccAttr<T>(ctx));
  }

 protected:
  absl::Status ReadInputs(tensorflow::OpKernelContext* ctx,
                          GradList<T>* grads, double* eps) const {
    TF_RETURN_IF_ERROR(grads->Read(ctx, "grads"));
    return ScalarInput(ctx, "epsilon", eps);
  }

  NormKind kind_;
};

// Attrs `kind` (or "precomputed") and `mode` of the ops that scale gradients
// (NormoptScale and NormoptApply), and the inputs the scales are made from.
template <typename T>
class ScalingOpBase : public tensorflow::OpKernel {
 public:
  explicit ScalingOpBase(tensorflow::OpKernelConstruction* ctx)
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
  // epsilon, clipnorm (checked against the mode) and the `norms` input
  // (checked to hold one value per tensor when the kind is precomputed).
  absl::Status ReadScaleInputs(tensorflow::OpKernelContext* ctx, int n,
                               double* eps, double* clipnorm,
                               const tensorflow::Tensor** norms) const {
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "epsilon", eps));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "clipnorm", clipnorm));
    TF_RETURN_IF_ERROR(CheckClipnorm(mode_, *clipnorm));
    TF_RETURN_IF_ERROR(ctx->input("norms", norms));
    if (source_.precomputed) {
      TF_RETURN_IF_ERROR(CheckPerTensorInput(**norms, "norms", n));
    }
    return absl::OkStatus();
  }

  NormSource source_;
  ScaleMode mode_;
};

// The gradients, lr, epsilon, clipnorm and the validated per-tensor inputs
// of the apply op (tensors on the kernel's device).
template <typename T>
struct ApplyInputs {
  GradList<T> grads;
  double lr = 0, eps = 0, clipnorm = 0;
  const tensorflow::Tensor* decay = nullptr;
  const tensorflow::Tensor* norms = nullptr;
};

// What the apply op reads before locking a variable (its rule's own inputs:
// apply_op.h).
template <typename T>
class ApplyOpBase : public ScalingOpBase<T> {
 public:
  explicit ApplyOpBase(tensorflow::OpKernelConstruction* ctx)
      : ScalingOpBase<T>(ctx) {}

 protected:
  using Inputs = ApplyInputs<T>;

  absl::Status ReadInputs(tensorflow::OpKernelContext* ctx, Inputs* in) const {
    TF_RETURN_IF_ERROR(in->grads.Read(ctx, "grad"));
    const int n = in->grads.size();
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "lr", &in->lr));
    TF_RETURN_IF_ERROR(
        this->ReadScaleInputs(ctx, n, &in->eps, &in->clipnorm, &in->norms));
    TF_RETURN_IF_ERROR(ctx->input("decay", &in->decay));
    return CheckPerTensorInput(*in->decay, "decay", n);
  }
};

}  // namespace normopt

#endif  // NORMOPT_OPS_OP_INPUTS_H_
