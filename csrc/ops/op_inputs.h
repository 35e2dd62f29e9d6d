// What the CPU and GPU kernels of the four ops read and check before they
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

// An optional slot list input holds 0 or n variables.
inline absl::Status CheckSlotCount(const char* name, int count, int n) {
  if (count != 0 && count != n) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must hold 0 or " +
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
// (NormoptScale and both applies), and the inputs the scales are made from.
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

// What both apply ops read before locking a variable.
template <typename T>
class ApplyOpBase : public ScalingOpBase<T> {
 public:
  explicit ApplyOpBase(tensorflow::OpKernelConstruction* ctx)
      : ScalingOpBase<T>(ctx) {}

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
    TF_RETURN_IF_ERROR(
        this->ReadScaleInputs(ctx, n, &in->eps, &in->clipnorm, &in->norms));
    TF_RETURN_IF_ERROR(ctx->input("decay", &in->decay));
    return CheckPerTensorInput(*in->decay, "decay", n);
  }

  // NormoptApplySgd's own inputs: `momentum`, the number n of gradients and
  // of momentum slots (0 or n; n whenever momentum != 0), `var` holding n.
  absl::Status ReadSgdInputs(tensorflow::OpKernelContext* ctx, int* n,
                             double* momentum, int* n_slots) const {
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "momentum", momentum));
    int n_vars = 0;
    TF_RETURN_IF_ERROR(ListLength(*this, "grad", n));
    TF_RETURN_IF_ERROR(ListLength(*this, "var", &n_vars));
    TF_RETURN_IF_ERROR(ListLength(*this, "momentum_slot", n_slots));
    TF_RETURN_IF_ERROR(CheckVariableCount("var", n_vars, *n));
    TF_RETURN_IF_ERROR(CheckSlotCount("momentum_slot", *n_slots, *n));
    if (*n_slots == 0 && *momentum != 0.0) {
      return absl::InvalidArgumentError(
          "normopt: momentum != 0 needs one momentum slot per variable, got "
          "none");
    }
    return absl::OkStatus();
  }

  // NormoptApplyAdam's own inputs: the Adam scalars (step = iterations + 1
  // >= 1), the number n of gradients, `var`, `m` and `v` holding n, and
  // `vhat` 0 (Adam) or n (amsgrad) slots.
  struct AdamInputs {
    int n = 0;
    double beta_1 = 0, beta_2 = 0, adam_epsilon = 0, step = 0;
    bool amsgrad = false;
  };

  absl::Status ReadAdamInputs(tensorflow::OpKernelContext* ctx,
                              AdamInputs* in) const {
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "beta_1", &in->beta_1));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "beta_2", &in->beta_2));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "adam_epsilon", &in->adam_epsilon));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "step", &in->step));
    if (!(in->step >= 1.0)) {
      return absl::InvalidArgumentError(
          "normopt: step (iterations + 1) must be >= 1, got " +
          std::to_string(in->step));
    }
    int count = 0;
    TF_RETURN_IF_ERROR(ListLength(*this, "grad", &in->n));
    for (const char* name : {"var", "m", "v"}) {
      TF_RETURN_IF_ERROR(ListLength(*this, name, &count));
      TF_RETURN_IF_ERROR(CheckVariableCount(name, count, in->n));
    }
    TF_RETURN_IF_ERROR(ListLength(*this, "vhat", &count));
    TF_RETURN_IF_ERROR(CheckSlotCount("vhat", count, in->n));
    in->amsgrad = count > 0;
    return absl::OkStatus();
  }
};

}  // namespace normopt

#endif  // NORMOPT_OPS_OP_INPUTS_H_
