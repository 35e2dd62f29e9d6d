// Reading the gradient list input shared by every op.
#ifndef NORMOPT_OPS_GRAD_LIST_H_
#define NORMOPT_OPS_GRAD_LIST_H_

#include <string>
#include <vector>

#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

// The N gradients of list input `name`: pointers, element counts, and the
// fixed chunk plan over them. units[i] is the size of the last axis of a
// gradient of two or more axes (its units, granularity "unit"), else 1.
template <typename T>
struct GradList {
  tensorflow::OpInputList tensors;
  std::vector<const T*> data;
  std::vector<int64_t> sizes;
  std::vector<int64_t> units;

  absl::Status Read(tensorflow::OpKernelContext* ctx, const char* name) {
    TF_RETURN_IF_ERROR(ctx->input_list(name, &tensors));
    data.reserve(tensors.size());
    sizes.reserve(tensors.size());
    for (int i = 0; i < tensors.size(); ++i) {
      const tensorflow::Tensor& t = tensors[i];
      sizes.push_back(t.NumElements());
      units.push_back(t.dims() >= 2 ? t.dim_size(t.dims() - 1) : 1);
      data.push_back(t.NumElements() > 0 ? t.unaligned_flat<T>().data()
                                         : nullptr);
    }
    return absl::OkStatus();
  }

  int size() const { return tensors.size(); }
};

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

}  // namespace normopt

#endif  // NORMOPT_OPS_GRAD_LIST_H_
