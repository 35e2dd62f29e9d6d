// CPU kernels of NormoptNorms and NormoptScale.
#include <vector>

#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
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
class NormsOp : public NormsOpBase<T> {
 public:
  explicit NormsOp(OpKernelConstruction* ctx) : NormsOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    using Acc = AccType<T>;
    GradList<T> grads;
    double eps;
    OP_REQUIRES_OK(ctx, this->ReadInputs(ctx, &grads, &eps));
    const ChunkPlan plan(grads.sizes);
    std::vector<Acc> norms;
    ComputeNorms<T>(ctx, this->kind_, plan, grads.data, static_cast<Acc>(eps),
                    &norms);
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({grads.size()}), &out));
    auto flat = out->flat<Acc>();
    for (int i = 0; i < grads.size(); ++i) flat(i) = norms[i];
  }
};

template <typename T>
class ScaleOp : public ScalingOpBase<T> {
 public:
  explicit ScaleOp(OpKernelConstruction* ctx) : ScalingOpBase<T>(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    using Acc = AccType<T>;
    GradList<T> grads;
    OP_REQUIRES_OK(ctx, grads.Read(ctx, "grads"));
    double eps, clipnorm;
    const Tensor* norms_in;
    OP_REQUIRES_OK(ctx, this->ReadScaleInputs(ctx, grads.size(), &eps,
                                              &clipnorm, &norms_in));

    const ChunkPlan plan(grads.sizes);
    std::vector<TensorScale<Acc>> scales;
    ComputeScales<T>(ctx, this->source_, this->mode_, plan, grads.data, eps,
                     clipnorm, *norms_in, &scales);

    tensorflow::OpOutputList outputs;
    OP_REQUIRES_OK(ctx, ctx->output_list("scaled", &outputs));
    std::vector<T*> out(grads.size(), nullptr);
    for (int i = 0; i < grads.size(); ++i) {
      Tensor* t;
      OP_REQUIRES_OK(ctx, outputs.allocate(i, grads.tensors[i].shape(), &t));
      if (grads.sizes[i] > 0) out[i] = t->unaligned_flat<T>().data();
    }
    ParallelForChunks(ctx, plan, 2, [&](int64_t c) {
      const Chunk& ch = plan.chunks[c];
      const T* __restrict g = grads.data[ch.tensor];
      T* __restrict o = out[ch.tensor];
      const TensorScale<Acc> s = scales[ch.tensor];
      for (int64_t j = ch.begin; j < ch.end; ++j) {
        o[j] = FromAcc<T>(apply_scale(ToAcc(g[j]), s));
      }
    });
  }
};

#define NORMOPT_REGISTER_NORM_KERNELS(T)                                     \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("NormoptNorms").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>( \
          "T"),                                                              \
      NormsOp<T>);                                                           \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("NormoptScale").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>( \
          "T"),                                                              \
      ScaleOp<T>);

NORMOPT_REGISTER_NORM_KERNELS(Eigen::half)
NORMOPT_REGISTER_NORM_KERNELS(Eigen::bfloat16)
NORMOPT_REGISTER_NORM_KERNELS(float)
NORMOPT_REGISTER_NORM_KERNELS(double)

#undef NORMOPT_REGISTER_NORM_KERNELS

}  // namespace
}  // namespace normopt
