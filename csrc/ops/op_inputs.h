// What the CPU and GPU kernels of the three ops read and check before they
// compute: the attrs, the gradients, the scalar hyperparameters and the
// per-tensor inputs. Device-agnostic: input tensors are only validated here,
// never dereferenced. Device kernels derive from these bases. Every attr
// and scalar input is parsed and checked here (kind, mode, granularity,
// Tacc, the scalars and the per-tensor inputs), into the types of
// tensor_scales.h (NormSource, ScaleMode, Granularity, ScaleSpec).
#ifndef NORMOPT_OPS_OP_INPUTS_H_
#define NORMOPT_OPS_OP_INPUTS_H_

#include <cmath>
#include <string>

#include "ops/grad_list.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"

namespace normopt {

// ---- attrs and scalar inputs: parsing and checks ----

constexpr char kPrecomputed[] = "precomputed";

// Attr `kind`: a built-in norm, or (where allowed) "precomputed".
inline absl::Status ParseNormSource(const std::string& name,
                                    bool allow_precomputed, NormSource* out) {
  if (allow_precomputed && name == kPrecomputed) {
    out->precomputed = true;
    return absl::OkStatus();
  }
  out->precomputed = false;
  if (parse_norm_kind(name.c_str(), &out->kind)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      "normopt: unknown norm kind '" + name + "'; expected one of " +
      accepted_norm_names() +
      (allow_precomputed ? std::string(" or ") + kPrecomputed : std::string()));
}

// Attr `mode`: normalize or clip ("adaptive": ScalingOpBase).
inline absl::Status ParseMode(const std::string& name, ScaleMode* out) {
  if (parse_scale_mode(name.c_str(), out)) return absl::OkStatus();
  return absl::InvalidArgumentError("normopt: unknown scale mode '" + name +
                                    "'; expected normalize or clip");
}

// The value of a float64 scalar input.
inline absl::Status ScalarInput(tensorflow::OpKernelContext* ctx,
                                const char* name, double* out) {
  const tensorflow::Tensor* t;
  TF_RETURN_IF_ERROR(ctx->input(name, &t));
  if (!tensorflow::TensorShapeUtils::IsScalar(t->shape())) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must be a scalar, got shape " +
        t->shape().DebugString());
  }
  *out = t->scalar<double>()();
  return absl::OkStatus();
}

// Input `clipnorm` in clip mode: finite and >= 0.
inline absl::Status CheckClipnorm(ScaleMode mode, double clipnorm) {
  if (mode == ScaleMode::kClip && !(std::isfinite(clipnorm) && clipnorm >= 0)) {
    return absl::InvalidArgumentError(
        "normopt: clipnorm must be finite and >= 0 in clip mode, got " +
        std::to_string(clipnorm));
  }
  return absl::OkStatus();
}

// A 1-D input of `n` values of the accumulation type (norms, decay).
inline absl::Status CheckPerTensorInput(const tensorflow::Tensor& t,
                                        const char* name, int64_t n) {
  if (t.dims() != 1 || t.dim_size(0) != n) {
    return absl::InvalidArgumentError(
        std::string("normopt: '") + name + "' must have shape [" +
        std::to_string(n) + "] (one value per tensor), got " +
        t.shape().DebugString());
  }
  return absl::OkStatus();
}

// Attr `granularity`: tensor, unit or global.
inline absl::Status ParseGranularity(const std::string& name,
                                     Granularity* out) {
  if (name == "tensor") {
    *out = Granularity::kTensor;
  } else if (name == "unit") {
    *out = Granularity::kUnit;
  } else if (name == "global") {
    *out = Granularity::kGlobal;
  } else {
    return absl::InvalidArgumentError("normopt: unknown granularity '" + name +
                                      "'; expected tensor, unit or global");
  }
  return absl::OkStatus();
}

// The op's Tacc attr must be the accumulation type of T.
template <typename T>
absl::Status CheckAccAttr(tensorflow::OpKernelConstruction* ctx) {
  tensorflow::DataType acc;
  TF_RETURN_IF_ERROR(ctx->GetAttr("Tacc", &acc));
  if (acc != AccDataType<T>()) {
    return absl::InvalidArgumentError(
        "normopt: Tacc must be " +
        tensorflow::DataTypeString(AccDataType<T>()) + " for gradients of " +
        tensorflow::DataTypeString(tensorflow::DataTypeToEnum<T>::v()) +
        ", got " + tensorflow::DataTypeString(acc));
  }
  return absl::OkStatus();
}

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
    OP_REQUIRES(ctx, !is_matrix_norm(source.kind),
                absl::InvalidArgumentError(
                    "normopt: NormoptNorms takes norms made of statistics; '" +
                    kind + "' measures the matrix view of a tensor (the apply "
                    "op takes it)"));
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

// Attrs `kind` (or "precomputed"), `mode`, `granularity` and `excluded` of
// the ops that scale gradients (NormoptScale and NormoptApply), and the
// inputs the scales are made from. Mode "adaptive" needs the variables, so
// only the apply op takes it (`allow_adaptive`).
template <typename T>
class ScalingOpBase : public tensorflow::OpKernel {
 public:
  ScalingOpBase(tensorflow::OpKernelConstruction* ctx, bool allow_adaptive)
      : tensorflow::OpKernel(ctx) {
    std::string kind, mode, granularity;
    std::vector<std::string> kinds;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kinds", &kinds));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mode", &mode));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("granularity", &granularity));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("excluded", &spec_.excluded));
    OP_REQUIRES_OK(ctx, ParseNormSource(kind, /*allow_precomputed=*/true,
                                        &spec_.source));
    OP_REQUIRES(ctx, kinds.empty() || !spec_.source.precomputed,
                absl::InvalidArgumentError(
                    "normopt: 'kinds' (a norm per gradient) does not go with "
                    "kind 'precomputed'"));
    for (const std::string& name : kinds) {
      NormSource one;
      OP_REQUIRES_OK(ctx, ParseNormSource(name, /*allow_precomputed=*/false, &one));
      spec_.kinds.push_back(one.kind);
    }
    if (allow_adaptive && mode == "adaptive") {
      spec_.mode = ScaleMode::kClip;
      spec_.adaptive = true;
    } else {
      OP_REQUIRES_OK(ctx, ParseMode(mode, &spec_.mode));
    }
    OP_REQUIRES_OK(ctx, ParseGranularity(granularity, &spec_.granularity));
    std::vector<NormKind> all = spec_.kinds;
    if (all.empty()) all.push_back(spec_.source.kind);
    for (NormKind k : all) {
      OP_REQUIRES(ctx,
                  spec_.source.precomputed || !is_matrix_norm(k) ||
                      spec_.granularity == Granularity::kTensor,
                  absl::InvalidArgumentError(
                      "normopt: a matrix norm (spectral) takes granularity "
                      "'tensor'"));
      OP_REQUIRES(ctx,
                  spec_.granularity != Granularity::kGlobal || k == all[0],
                  absl::InvalidArgumentError(
                      "normopt: a global norm takes one kind for every "
                      "gradient ('kinds' must all be equal)"));
    }
    OP_REQUIRES(ctx,
                !spec_.source.precomputed ||
                    (spec_.granularity == Granularity::kTensor && !spec_.adaptive),
                absl::InvalidArgumentError(
                    "normopt: precomputed norms are per tensor: they take "
                    "granularity 'tensor' and mode normalize or clip"));
    OP_REQUIRES_OK(ctx, CheckAccAttr<T>(ctx));
  }

 protected:
  // The spec with epsilon and clipnorm (checked against the mode; the clip
  // factor in the adaptive mode), the excluded indices checked against the
  // n gradients, and the `norms` input (checked to hold one value per tensor
  // when the kind is precomputed).
  absl::Status ReadScaleInputs(tensorflow::OpKernelContext* ctx, int n,
                               ScaleSpec* spec,
                               const tensorflow::Tensor** norms) const {
    *spec = spec_;
    if (spec->kinds.empty()) {
      spec->kinds.assign(n, spec->source.kind);
    } else if (static_cast<int>(spec->kinds.size()) != n) {
      return absl::InvalidArgumentError(
          "normopt: 'kinds' must hold one norm per gradient (" +
          std::to_string(n) + "), got " + std::to_string(spec->kinds.size()));
    }
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "epsilon", &spec->eps));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "clipnorm", &spec->clipnorm));
    if (spec->adaptive) {
      if (!(std::isfinite(spec->clipnorm) && spec->clipnorm > 0)) {
        return absl::InvalidArgumentError(
            "normopt: the clip factor (input 'clipnorm' in adaptive mode) "
            "must be finite and > 0, got " + std::to_string(spec->clipnorm));
      }
    } else {
      TF_RETURN_IF_ERROR(CheckClipnorm(spec->mode, spec->clipnorm));
    }
    for (int i : spec->excluded) {
      if (i < 0 || i >= n) {
        return absl::InvalidArgumentError(
            "normopt: 'excluded' holds " + std::to_string(i) +
            ", not the index of one of the " + std::to_string(n) +
            " gradients");
      }
    }
    TF_RETURN_IF_ERROR(ctx->input("norms", norms));
    if (spec->source.precomputed) {
      TF_RETURN_IF_ERROR(CheckPerTensorInput(**norms, "norms", n));
    }
    return absl::OkStatus();
  }

  ScaleSpec spec_;
};

// The gradients, lr, the scale spec and the validated per-tensor inputs of
// the apply op (tensors on the kernel's device).
template <typename T>
struct ApplyInputs {
  GradList<T> grads;
  double lr = 0;
  ScaleSpec spec;
  const tensorflow::Tensor* decay = nullptr;
  const tensorflow::Tensor* norms = nullptr;
};

// What the apply op reads before locking a variable (its rule's own inputs:
// apply_op.h).
template <typename T>
class ApplyOpBase : public ScalingOpBase<T> {
 public:
  explicit ApplyOpBase(tensorflow::OpKernelConstruction* ctx)
      : ScalingOpBase<T>(ctx, /*allow_adaptive=*/true) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sparse", &sparse_));
    OP_REQUIRES(ctx,
                sparse_.empty() ||
                    this->spec_.granularity != Granularity::kUnit,
                absl::InvalidArgumentError(
                    "normopt: granularity 'unit' takes dense gradients only "
                    "('sparse' must be empty)"));
  }

 protected:
  using Inputs = ApplyInputs<T>;

  absl::Status ReadInputs(tensorflow::OpKernelContext* ctx, Inputs* in) const {
    TF_RETURN_IF_ERROR(in->grads.Read(ctx, "grad"));
    TF_RETURN_IF_ERROR(in->grads.AddRows(ctx, "indices", "dense_rows", sparse_));
    const int n = in->grads.size();
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "lr", &in->lr));
    TF_RETURN_IF_ERROR(this->ReadScaleInputs(ctx, n, &in->spec, &in->norms));
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "weight_eps", &in->spec.weight_eps));
    if (in->spec.adaptive && !(in->spec.weight_eps >= 0)) {
      return absl::InvalidArgumentError(
          "normopt: weight_eps must be >= 0, got " +
          std::to_string(in->spec.weight_eps));
    }
    TF_RETURN_IF_ERROR(ctx->input("decay", &in->decay));
    return CheckPerTensorInput(*in->decay, "decay", n);
  }

 private:
  std::vector<int> sparse_;  // indices of the gradients given as rows
};

}  // namespace normopt

#endif  // NORMOPT_OPS_OP_INPUTS_H_
