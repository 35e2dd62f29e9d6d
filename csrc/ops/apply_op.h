// NormoptApply: one op-kernel class template for CPU and GPU.
//
// ApplyOp<Device, T> reads and checks the inputs (op_inputs.h), locks the
// variables and their slots, and hands the step to ApplyOnDevice<Device, T>,
// which apply_kernels.cc (CPU: the chunk loop) and apply_kernels_gpu.cc
// (GPU: the CUDA launcher) specialize, in the way TensorFlow's training ops
// pair one kernel class with per-device functors. The update itself is the
// rule of normopt/update_rules.h named by the `rule` attr.
#ifndef NORMOPT_OPS_APPLY_OP_H_
#define NORMOPT_OPS_APPLY_OP_H_

#include <string>
#include <vector>

#include "normopt/update_rules.h"
#include "ops/grad_list.h"
#include "ops/locked_variables.h"
#include "ops/op_inputs.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace normopt {

// Everything a device needs for one step, variables locked.
template <typename T>
struct ApplyStep {
  RuleId rule = RuleId::k_sgd;
  int n = 0;      // gradients (and variables)
  int slots = 0;  // slots per variable
  ApplyInputs<T> in;  // in.spec: how the gradients are scaled
  // (1 + slots) * n buffers, slot-major: variables, then slot 0 of every
  // variable, ... (null for an empty tensor).
  std::vector<T*> state;
  // [lr, t, hyper...]: what the rule's constructor reads.
  double args[kMaxRuleArgs] = {};
  // Output [n] of the accumulation type on the device: the L2 norm of every
  // gradient as given (before scaling), from the statistics of the step.
  tensorflow::Tensor* grad_norms = nullptr;
  // The persistent vectors of the matrices a matrix norm measures (input
  // spectral_vectors, output new_spectral_vectors; host memory on the CPU).
  SpectralVectors<AccType<T>> vectors;
  int matrices = 0;  // MatrixTensors(in.spec, in.grads).size()
};

// Specialized per device:
//   static absl::Status Prepare(ctx, Tensor*)         LockedVariables::PrepareFn
//   absl::Status BeforeLock(ctx, const ApplyStep<T>&) work that needs no variable
//   absl::Status Run(ctx, const ApplyStep<T>&)        the update, variables locked
template <typename Device, typename T>
class ApplyOnDevice;

template <typename Device, typename T>
class ApplyOp : public ApplyOpBase<T> {
 public:
  explicit ApplyOp(tensorflow::OpKernelConstruction* ctx)
      : ApplyOpBase<T>(ctx) {
    std::string rule;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("rule", &rule));
    if (!parse_rule(rule.c_str(), &rule_)) {
      ctx->CtxFailure(absl::InvalidArgumentError(
          "normopt: unknown update rule '" + rule + "'; expected one of " +
          rule_names()));
      return;
    }
    rule_name_ = rule;
    slot_names_ = SlotNames();
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    ApplyStep<T> step;
    step.rule = rule_;
    step.slots = rule_slots(rule_);
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &step.in));
    OP_REQUIRES_OK(ctx, ReadRuleInputs(ctx, &step));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            "grad_norms", tensorflow::TensorShape({step.n}),
                            &step.grad_norms));
    OP_REQUIRES_OK(ctx, ReadSpectralVectors(ctx, &step));
    ApplyOnDevice<Device, T> device;
    OP_REQUIRES_OK(ctx, device.BeforeLock(ctx, step));

    LockedVariables locked;
    int count;
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "var", &count));
    OP_REQUIRES_OK(ctx, locked.Add(ctx, "slots", &count));
    locked.LockAll();
    const auto prepare = &ApplyOnDevice<Device, T>::Prepare;
    step.state.reserve((1 + step.slots) * step.n);
    std::vector<T*> buffers;
    for (int q = -1; q < step.slots; ++q) {
      const char* role = q < 0 ? "var" : slot_names_[q].c_str();
      OP_REQUIRES_OK(ctx, locked.Buffers<T>(ctx, role, (1 + q) * step.n,
                                            step.in.grads, &buffers, prepare));
      step.state.insert(step.state.end(), buffers.begin(), buffers.end());
    }
    OP_REQUIRES_OK(ctx, device.Run(ctx, step));
  }

 private:
  // The rule's slot names ("m", "v", ...), for error messages.
  std::vector<std::string> SlotNames() const {
    std::vector<std::string> names;
    std::string all = rule_slot_names(rule_);
    size_t begin = 0;
    while (begin < all.size()) {
      const size_t end = all.find(',', begin);
      names.push_back(all.substr(begin, end - begin));
      if (end == std::string::npos) break;
      begin = end + 1;
    }
    return names;
  }

  // step (t >= 1), hyper (the rule's count), and the variable and slot
  // counts: n variables, slots * n slots.
  absl::Status ReadRuleInputs(tensorflow::OpKernelContext* ctx,
                              ApplyStep<T>* step) const {
    double t = 0;
    TF_RETURN_IF_ERROR(ScalarInput(ctx, "step", &t));
    if (!(t >= 1.0)) {
      return absl::InvalidArgumentError(
          "normopt: step (iterations + 1) must be >= 1, got " +
          std::to_string(t));
    }
    const tensorflow::Tensor* hyper;
    TF_RETURN_IF_ERROR(ctx->input("hyper", &hyper));
    const int want = rule_hypers(rule_);
    if (hyper->dims() != 1 || hyper->dim_size(0) != want) {
      return absl::InvalidArgumentError(
          "normopt: rule '" + rule_name_ + "' takes " + std::to_string(want) +
          " hyperparameters in 'hyper', got shape " +
          hyper->shape().DebugString());
    }
    step->args[0] = step->in.lr;
    step->args[1] = t;
    const auto h = hyper->flat<double>();
    for (int i = 0; i < want; ++i) step->args[2 + i] = h(i);

    int n_vars = 0, n_slots = 0;
    TF_RETURN_IF_ERROR(ListLength(*this, "grad", &step->n));
    TF_RETURN_IF_ERROR(ListLength(*this, "var", &n_vars));
    TF_RETURN_IF_ERROR(ListLength(*this, "slots", &n_slots));
    TF_RETURN_IF_ERROR(CheckVariableCount("var", n_vars, step->n));
    if (n_slots != step->slots * step->n) {
      return absl::InvalidArgumentError(
          "normopt: rule '" + rule_name_ + "' takes " +
          std::to_string(step->slots) + " slots per variable (" +
          rule_slot_names(rule_) + "): 'slots' must hold " +
          std::to_string(step->slots * step->n) + " variables, got " +
          std::to_string(n_slots));
    }
    return absl::OkStatus();
  }

  // Input spectral_vectors checked against the matrices the step measures
  // (one vector of the last axis's length each, twice in mode adaptive),
  // and output new_spectral_vectors allocated in their shapes.
  absl::Status ReadSpectralVectors(tensorflow::OpKernelContext* ctx,
                                   ApplyStep<T>* step) const {
    using Acc = AccType<T>;
    const GradList<T>& grads = step->in.grads;
    const std::vector<int> matrices = MatrixTensors(step->in.spec, grads);
    step->matrices = static_cast<int>(matrices.size());
    tensorflow::OpInputList in;
    TF_RETURN_IF_ERROR(ctx->input_list("spectral_vectors", &in));
    const int per = step->in.spec.adaptive ? 2 : 1;
    if (in.size() != per * step->matrices) {
      return absl::InvalidArgumentError(
          "normopt: 'spectral_vectors' must hold " +
          std::to_string(per * step->matrices) + " vectors (one per gradient "
          "of two or more axes a matrix norm measures" +
          (per == 2 ? std::string(", then one per its variable") : std::string()) +
          "), got " + std::to_string(in.size()));
    }
    tensorflow::OpOutputList out;
    TF_RETURN_IF_ERROR(ctx->output_list("new_spectral_vectors", &out));
    for (int k = 0; k < in.size(); ++k) {
      const int i = matrices[k % step->matrices];
      const tensorflow::TensorShape& shape = grads.shapes[i];
      const int64_t cols = shape.dim_size(shape.dims() - 1);
      if (grads.sparse[i]) {
        return absl::InvalidArgumentError(
            "normopt: gradient " + std::to_string(i) + " is sparse; a matrix "
            "norm (spectral) takes dense gradients");
      }
      if (in[k].dims() != 1 || in[k].dim_size(0) != cols) {
        return absl::InvalidArgumentError(
            "normopt: spectral_vectors[" + std::to_string(k) + "] must have "
            "shape [" + std::to_string(cols) + "] (the last axis of gradient " +
            std::to_string(i) + "), got " + in[k].shape().DebugString());
      }
      tensorflow::Tensor* t;
      TF_RETURN_IF_ERROR(out.allocate(k, in[k].shape(), &t));
      step->vectors.in.push_back(in[k].flat<Acc>().data());
      step->vectors.out.push_back(t->flat<Acc>().data());
    }
    return absl::OkStatus();
  }

  RuleId rule_ = RuleId::k_sgd;
  std::string rule_name_;
  std::vector<std::string> slot_names_;
};

}  // namespace normopt

#endif  // NORMOPT_OPS_APPLY_OP_H_
