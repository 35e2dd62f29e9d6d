// C-callable launchers (see launchers.h): grid sizes over
// the extern "C" entry points (entry_table.cuh dispatches on the dtype and
// the update rule).
#include "cuda/entry_table.cuh"
#include "cuda/launchers.h"
#include "normopt/update_rules.h"

namespace normopt {
namespace cuda {
namespace {

// Grid-stride loops cover any number of chunks; more blocks than this only
// adds scheduling overhead.
constexpr int64_t kMaxBlocks = 1 << 20;
constexpr int kFinishThreads = 128;

unsigned grid_for(int64_t num_chunks) {
  return static_cast<unsigned>(num_chunks < kMaxBlocks ? num_chunks
                                                       : kMaxBlocks);
}

int last_error() { return static_cast<int>(cudaGetLastError()); }

static_assert(kInvalidDtype == static_cast<int>(cudaErrorInvalidValue),
              "an unknown dtype reads as cudaErrorInvalidValue");

}  // namespace
}  // namespace cuda
}  // namespace normopt

using normopt::cuda::Acc;
using normopt::cuda::dispatch;
using normopt::cuda::Entry;
using normopt::cuda::grid_for;
using normopt::cuda::kFinishThreads;
using normopt::cuda::kThreads;
using normopt::cuda::last_error;

extern "C" int64_t normopt_cuda_stats_workspace_bytes(int dtype,
                                                      int64_t num_chunks) {
  const int64_t per = dtype == normopt::kDtypeFloat64
                          ? sizeof(normopt::NormStats<double>)
                          : sizeof(normopt::NormStats<float>);
  return per * (num_chunks > 0 ? num_chunks : 1);
}

extern "C" int normopt_cuda_norms(
    int dtype, const void* const* tensors, const int64_t* sizes,
    const int64_t* zeros, int num_tensors, const int32_t* chunk_tensor,
    const int64_t* chunk_start, const int64_t* chunk_grad,
    const int64_t* first_chunk, int64_t num_chunks, int64_t chunk_size,
    int kind, int mode, double clipnorm, double eps, void* workspace,
    void* norms, void* scales, void* grad_norms, cudaStream_t stream) {
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    auto* stats = static_cast<normopt::NormStats<A>*>(workspace);
    if (num_chunks > 0) {
      Entry<T>::chunk_stats<<<grid_for(num_chunks), kThreads, 0, stream>>>(
          reinterpret_cast<const T* const*>(tensors), sizes, chunk_tensor,
          chunk_start, chunk_grad, num_chunks, chunk_size,
          normopt::stats_needed(static_cast<normopt::NormKind>(kind)), stats);
    }
    if (num_tensors > 0) {
      Entry<T>::finish<<<(num_tensors + kFinishThreads - 1) / kFinishThreads,
                         kFinishThreads, 0, stream>>>(
          stats, first_chunk, num_tensors, kind, mode, A(clipnorm), A(eps),
          tensors, sizes, zeros, dtype, static_cast<A*>(norms),
          static_cast<normopt::TensorScale<A>*>(scales),
          static_cast<A*>(grad_norms));
    }
    return last_error();
  });
}

extern "C" int normopt_cuda_scales_from_norms(int dtype, const void* norms,
                                              int num_tensors, int mode,
                                              double clipnorm, void* scales,
                                              cudaStream_t stream) {
  if (num_tensors <= 0) return 0;
  const unsigned blocks = (num_tensors + kFinishThreads - 1) / kFinishThreads;
  if (dtype == normopt::kDtypeFloat64) {
    normopt_scales_from_norms_f64<<<blocks, kFinishThreads, 0, stream>>>(
        static_cast<const double*>(norms), nullptr, num_tensors, num_tensors,
        mode, clipnorm, 0.0,
        static_cast<normopt::TensorScale<double>*>(scales));
  } else {
    normopt_scales_from_norms_f32<<<blocks, kFinishThreads, 0, stream>>>(
        static_cast<const float*>(norms), nullptr, num_tensors, num_tensors,
        mode, static_cast<float>(clipnorm), 0.0f,
        static_cast<normopt::TensorScale<float>*>(scales));
  }
  return last_error();
}

extern "C" int normopt_cuda_scale(int dtype, const void* const* grads,
                                  void* const* outs, const int64_t* sizes,
                                  const int32_t* chunk_tensor,
                                  const int64_t* chunk_start,
                                  int64_t num_chunks, int64_t chunk_size,
                                  const void* scales, cudaStream_t stream) {
  if (num_chunks <= 0) return 0;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    Entry<T>::scale<<<grid_for(num_chunks), kThreads, 0, stream>>>(
        reinterpret_cast<const T* const*>(grads),
        reinterpret_cast<T* const*>(outs), sizes, chunk_tensor, chunk_start,
        num_chunks, chunk_size,
        static_cast<const normopt::TensorScale<Acc<T>>*>(scales), nullptr,
        nullptr);
    return last_error();
  });
}

extern "C" int64_t normopt_cuda_apply_workspace_bytes(int dtype, int rule,
                                                      int64_t num_chunks,
                                                      int num_tensors) {
  const auto id = static_cast<normopt::RuleId>(rule);
  return dtype == normopt::kDtypeFloat64
             ? normopt::cuda::apply_workspace_bytes<double>(id, num_chunks,
                                                            num_tensors)
             : normopt::cuda::apply_workspace_bytes<float>(id, num_chunks,
                                                           num_tensors);
}

extern "C" int normopt_cuda_apply(int dtype, int rule, void* const* state,
                                  int num_tensors, const void* const* grads,
                                  const int64_t* sizes,
                                  const int32_t* chunk_tensor,
                                  const int64_t* chunk_start,
                                  const int64_t* chunk_grad,
                                  const int64_t* first_chunk,
                                  int64_t num_chunks, int64_t chunk_size,
                                  const void* scales, const void* decay,
                                  const double* args, void* workspace,
                                  cudaStream_t stream) {
  const auto launch = [stream](unsigned grid, unsigned block, auto kernel,
                               auto... kernel_args) {
    kernel<<<grid, block, 0, stream>>>(kernel_args...);
  };
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    const int rc = normopt::cuda::launch_apply<T>(
        launch, static_cast<normopt::RuleId>(rule), grid_for(num_chunks),
        kFinishThreads, reinterpret_cast<T* const*>(state), num_tensors,
        reinterpret_cast<const T* const*>(grads), sizes, chunk_tensor,
        chunk_start, chunk_grad, first_chunk, num_chunks, chunk_size,
        static_cast<const normopt::TensorScale<A>*>(scales), nullptr, nullptr,
        static_cast<const A*>(decay), args, workspace);
    return rc != 0 ? rc : last_error();
  });
}
