// Resource variables of an apply op, looked up, locked and made writable.
//
// Like TF's ResourceApply* kernels (training_op_helpers.h): every distinct
// variable mutex is locked once, in address order (so two ops never
// deadlock), and each buffer gets PrepareToUpdateVariable (copy-on-write when
// a reader still holds it) before it is updated in place. TF's own
// MaybeLockVariableInputMutexesInOrder dedups in O(n^2), too slow for
// hundreds of variables, hence this class.
#ifndef NORMOPT_OPS_LOCKED_VARIABLES_H_
#define NORMOPT_OPS_LOCKED_VARIABLES_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ops/grad_list.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace normopt {

class LockedVariables {
 public:
  // Looks up the variables of list input `name`; returns how many.
  absl::Status Add(tensorflow::OpKernelContext* ctx, const char* name,
                   int* count) {
    int start, stop;
    TF_RETURN_IF_ERROR(ctx->op_kernel().InputRange(name, &start, &stop));
    for (int i = start; i < stop; ++i) {
      tensorflow::Var* var = nullptr;
      TF_RETURN_IF_ERROR(tensorflow::LookupResource(
          ctx, tensorflow::HandleFromInput(ctx, i), &var));
      vars_.emplace_back(var);
    }
    *count = stop - start;
    return absl::OkStatus();
  }

  // Locks every distinct variable mutex, in address order.
  void LockAll() {
    std::vector<tsl::mutex*> mutexes;
    mutexes.reserve(vars_.size());
    for (const auto& var : vars_) mutexes.push_back(var->mu());
    std::sort(mutexes.begin(), mutexes.end());
    mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
    locks_.reserve(mutexes.size());
    for (tsl::mutex* mu : mutexes) locks_.emplace_back(*mu);
  }

  // Makes a variable's tensor writable in place, on the device that holds
  // it: a copy only when a reader still holds its buffer.
  //
  // Not also when the variable is in TF's copy-on-read mode, as TF's
  // PrepareToUpdateVariable copies then. TF sets that mode at the first
  // sparse access (a scatter, as Keras's sparse updates make, or a
  // ResourceGather: tf.gather or tf.nn.embedding_lookup on the variable
  // itself) and keeps it; from then on no tensor may alias the variable's
  // buffer (reads copy), and the only in-place users hold its lock, shared.
  // This op holds every lock exclusively (LockAll), so with the buffer
  // unshared nobody can see the update happen, and copying would cost a
  // pass over the whole table every step.
  using PrepareFn = absl::Status (*)(tensorflow::OpKernelContext* ctx,
                                     tensorflow::Tensor* tensor);

  template <typename T>
  static absl::Status PrepareOnCpu(tensorflow::OpKernelContext* ctx,
                                   tensorflow::Tensor* tensor) {
    return tensorflow::PrepareToUpdateVariable<Eigen::ThreadPoolDevice, T>(
        ctx, tensor, /*copy_on_read_mode=*/false);
  }

  // Writable buffers of variables [first, first + grads.size()), each
  // checked against its gradient (initialized, same dtype and shape) and
  // made writable by `prepare`.
  template <typename T>
  absl::Status Buffers(tensorflow::OpKernelContext* ctx, const char* role,
                       int first, const GradList<T>& grads,
                       std::vector<T*>* out,
                       PrepareFn prepare = &PrepareOnCpu<T>) {
    out->assign(grads.size(), nullptr);
    for (int i = 0; i < grads.size(); ++i) {
      tensorflow::Var* var = vars_[first + i].get();
      tensorflow::Tensor* t = var->tensor();
      // Built only for an error message (hundreds of variables per step).
      auto what = [&] {
        return std::string("normopt: ") + role + "[" + std::to_string(i) + "]";
      };
      if (!var->is_initialized || !t->IsInitialized()) {
        return absl::FailedPreconditionError(what() + " is not initialized");
      }
      if (t->dtype() != tensorflow::DataTypeToEnum<T>::v()) {
        return absl::InvalidArgumentError(
            what() + " has dtype " + tensorflow::DataTypeString(t->dtype()) +
            " but the gradients are " +
            tensorflow::DataTypeString(tensorflow::DataTypeToEnum<T>::v()));
      }
      if (t->shape() != grads.shapes[i]) {
        return absl::InvalidArgumentError(
            what() + " has shape " + t->shape().DebugString() +
            " but its gradient has shape " + grads.shapes[i].DebugString());
      }
      TF_RETURN_IF_ERROR(prepare(ctx, t));
      if (t->NumElements() > 0) (*out)[i] = t->unaligned_flat<T>().data();
    }
    return absl::OkStatus();
  }

 private:
  // Declared before locks_ so the locks are released before the unrefs.
  std::vector<tensorflow::core::RefCountPtr<tensorflow::Var>> vars_;
  std::vector<tsl::mutex_lock> locks_;
};

}  // namespace normopt

#endif  // NORMOPT_OPS_LOCKED_VARIABLES_H_
