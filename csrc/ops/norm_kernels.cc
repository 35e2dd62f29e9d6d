// CPU kernels of NormoptNorms and NormoptScale (norm_ops.h): the norms of
// the chunks in parallel, merged per tensor; the scaled copies in one
// parallel pass over the chunks, which gathers the statistics of single-chunk
// gradients on the way (StepScales, tensor_scales.h).
#include <vector>

#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "ops/norm_ops.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

using CpuDevice = Eigen::ThreadPoolDevice;

template <typename T>
struct NormsOnDevice<CpuDevice, T> {
  using Acc = AccType<T>;

  static absl::Status Norms(tensorflow::OpKernelContext* ctx, NormKind kind,
                            const GradList<T>& grads, double eps,
                            tensorflow::Tensor* out) {
    const ChunkPlan plan(grads.sizes);
    std::vector<Acc> norms;
    ComputeNorms<T>(ctx, kind, plan, grads.data, static_cast<Acc>(eps), &norms);
    auto flat = out->flat<Acc>();
    for (int i = 0; i < grads.size(); ++i) flat(i) = norms[i];
    return absl::OkStatus();
  }

  static absl::Status Scale(tensorflow::OpKernelContext* ctx,
                            const ScaleSpec& spec, const GradList<T>& grads,
                            const tensorflow::Tensor& given_norms,
                            const std::vector<T*>& out,
                            tensorflow::Tensor* grad_norms) {
    const ChunkPlan plan(grads.sizes);
    StepScales<T> scales;
    scales.Compute(ctx, spec, plan, grads, {}, given_norms);
    ParallelForChunks(ctx, plan, 2, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const T* __restrict g = grads.data[ch.tensor] + ch.begin;
      T* __restrict o = out[ch.tensor] + ch.begin;
      ForEachScaled(scales.Of(c, ch, g, nullptr), ch.end - ch.begin,
                    [&](int64_t j, const TensorScale<Acc>& s) {
                      o[j] = FromAcc<T>(apply_scale(ToAcc(g[j]), s));
                    });
    });
    scales.RecordedNorms(ctx, grads, grad_norms->flat<Acc>().data());
    return absl::OkStatus();
  }
};

namespace {

#define NORMOPT_REGISTER_NORM_KERNELS(T)                                     \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("NormoptNorms").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>( \
          "T"),                                                              \
      NormsOp<CpuDevice, T>);                                                \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("NormoptScale").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>( \
          "T"),                                                              \
      ScaleOp<CpuDevice, T>);

NORMOPT_REGISTER_NORM_KERNELS(Eigen::half)
NORMOPT_REGISTER_NORM_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_NORM_KERNELS(float)
NORMOPT_REGISTER_NORM_KERNELS(double)

#undef NORMOPT_REGISTER_NORM_KERNELS

}  // namespace
}  // namespace normopt
