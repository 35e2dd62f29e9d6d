// CPU kernels of NormoptNorms and NormoptScale.
#include <string>
#include <vector>

#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

template <typename T>
class NormsOp : public OpKernel {
 public:
  explicit NormsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string kind;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    NormSource source;
    OP_REQUIRES_OK(ctx, ParseNormSource(kind, /*allow_precomputed=*/false,
                                        &source));
    kind_ = source.kind;
    OP_REQUIRES_OK(ctx, CheckAccAttr<T>(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    using Acc = AccType<T>;
    GradList<T> grads;
    OP_REQUIRES_OK(ctx, grads.Read(ctx, "grads"));
    double eps;
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, "epsilon", &eps));
    const ChunkPlan plan(grads.sizes);
    std::vector<Acc> norms;
    ComputeNorms<T>(ctx, kind_, plan, grads.data, static_cast<Acc>(eps),
                    &norms);
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({grads.size()}), &out));
    auto flat = out->flat<Acc>();
    for (int i = 0; i < grads.size(); ++i) flat(i) = norms[i];
  }

 private:
  NormKind kind_;
};

template <typename T>
class ScaleOp : public OpKernel {
 public:
  explicit ScaleOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string kind, mode;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kind", &kind));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mode", &mode));
    OP_REQUIRES_OK(ctx, ParseNormSource(kind, /*allow_precomputed=*/true,
                                        &source_));
    OP_REQUIRES_OK(ctx, ParseMode(mode, &mode_));
    OP_REQUIRES_OK(ctx, CheckAccAttr<T>(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    using Acc = AccType<T>;
    GradList<T> grads;
    OP_REQUIRES_OK(ctx, grads.Read(ctx, "grads"));
    double eps, clipnorm;
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, "epsilon", &eps));
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, "clipnorm", &clipnorm));
    OP_REQUIRES_OK(ctx, CheckClipnorm(mode_, clipnorm));
    const Tensor* norms_in;
    OP_REQUIRES_OK(ctx, ctx->input("norms", &norms_in));
    if (source_.precomputed) {
      OP_REQUIRES_OK(ctx, CheckPerTensorInput(*norms_in, "norms", grads.size()));
    }

    const ChunkPlan plan(grads.sizes);
    std::vector<Acc> scales;
    ComputeScales<T>(ctx, source_, mode_, plan, grads.data, eps, clipnorm,
                     *norms_in, &scales);

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
      const Acc s = scales[ch.tensor];
      for (int64_t j = ch.begin; j < ch.end; ++j) {
        o[j] = FromAcc<T>(ToAcc(g[j]) * s);
      }
    });
  }

 private:
  NormSource source_;
  ScaleMode mode_;
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
