// The kernels' entry points: extern "C" __global__ functions with plain
// names, one per operation and dtype, so every host finds them the same way
// (launchers.cu by symbol, CuPy by name with either NVRTC or nvcc, no C++
// name mangling involved). Suffixes: f16 (__half), bf16 (__nv_bfloat16),
// f32, f64; the finish/scales kernels exist per accumulation type (f32, f64).
//
//   normopt_chunk_stats_SUF   grid: one block per chunk, kThreads threads
//   normopt_finish_ACC        grid: one thread per tensor; also given the
//                             tensors, sizes and dtype code (the rescue pass)
//                             and grad_norms (L2 norms, or null)
// scales are TensorScale {pre, mult} pairs (norm_stats.h), one per tensor.
//   normopt_scales_from_norms_ACC
//   normopt_scale_SUF                    (kThreads threads)
//   normopt_apply_RULE_SUF               (kThreads threads) for every RULE of
//                                        NORMOPT_UPDATE_RULES (update_rules.h)
//
// Include this header in exactly one translation unit of a program.
#ifndef NORMOPT_CUDA_ENTRY_POINTS_CUH_
#define NORMOPT_CUDA_ENTRY_POINTS_CUH_

#include "cuda/norm_kernels.cuh"
#include "cuda/update_kernels.cuh"

#define NORMOPT_ENTRY_POINTS(T, SUF)                                          \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_chunk_stats_##SUF(                                              \
          const T* const* tensors, const int64_t* sizes,                      \
          const int32_t* chunk_tensor, const int64_t* chunk_start,            \
          int64_t num_chunks, int64_t chunk_size, unsigned needed,            \
          normopt::NormStats<normopt::cuda::Acc<T>>* out) {                   \
    normopt::cuda::chunk_stats<T>(tensors, sizes, chunk_tensor, chunk_start,  \
                                  num_chunks, chunk_size, needed, out);       \
  }                                                                           \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_scale_##SUF(const T* const* grads, T* const* outs,              \
                          const int64_t* sizes, const int32_t* chunk_tensor,  \
                          const int64_t* chunk_start, int64_t num_chunks,     \
                          int64_t chunk_size,                                 \
                          const normopt::TensorScale<normopt::cuda::Acc<T>>* scales) {              \
    normopt::cuda::scale_chunks<T>(grads, outs, sizes, chunk_tensor,          \
                                   chunk_start, num_chunks, chunk_size,       \
                                   scales);                                   \
  }

// normopt_apply_<name>_<SUF>: one step of update rule `name` (update_rules.h).
#define NORMOPT_APPLY_ENTRY_POINT(T, SUF, name, Rule)                        \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_apply_##name##_##SUF(                                           \
          T* const* state, int num_tensors, const T* const* grads,            \
          const int64_t* sizes, const int32_t* chunk_tensor,                  \
          const int64_t* chunk_start, int64_t num_chunks, int64_t chunk_size, \
          const normopt::TensorScale<normopt::cuda::Acc<T>>* scales,          \
          const normopt::cuda::Acc<T>* decay, const double* args) {           \
    normopt::cuda::apply_rule_chunks<T, normopt::Rule>(                       \
        state, num_tensors, grads, sizes, chunk_tensor, chunk_start,          \
        num_chunks, chunk_size, scales, decay, args);                         \
  }
#define NORMOPT_APPLY_F16(name, Rule) NORMOPT_APPLY_ENTRY_POINT(__half, f16, name, Rule)
#define NORMOPT_APPLY_BF16(name, Rule) \
  NORMOPT_APPLY_ENTRY_POINT(__nv_bfloat16, bf16, name, Rule)
#define NORMOPT_APPLY_F32(name, Rule) NORMOPT_APPLY_ENTRY_POINT(float, f32, name, Rule)
#define NORMOPT_APPLY_F64(name, Rule) NORMOPT_APPLY_ENTRY_POINT(double, f64, name, Rule)

#define NORMOPT_FINISH_ENTRY_POINTS(A, SUF)                                   \
  extern "C" __global__ void normopt_finish_##SUF(                            \
      const normopt::NormStats<A>* stats, const int64_t* first_chunk,         \
      int num_tensors, int kind, int mode, A clipnorm, A eps,                 \
      const void* const* tensors, const int64_t* sizes, int dtype, A* norms,  \
      normopt::TensorScale<A>* scales, A* grad_norms) {                       \
    normopt::cuda::finish<A>(stats, first_chunk, num_tensors, kind, mode,     \
                             clipnorm, eps, tensors, sizes, dtype, norms,     \
                             scales, grad_norms);                             \
  }                                                                           \
  extern "C" __global__ void normopt_scales_from_norms_##SUF(                 \
      const A* norms, int num_tensors, int mode, A clipnorm,                  \
      normopt::TensorScale<A>* scales) {                                      \
    normopt::cuda::scales_from_norms<A>(norms, num_tensors, mode, clipnorm,   \
                                        scales);                              \
  }

NORMOPT_ENTRY_POINTS(__half, f16)
NORMOPT_ENTRY_POINTS(__nv_bfloat16, bf16)
NORMOPT_ENTRY_POINTS(float, f32)
NORMOPT_ENTRY_POINTS(double, f64)
NORMOPT_FINISH_ENTRY_POINTS(float, f32)
NORMOPT_FINISH_ENTRY_POINTS(double, f64)
NORMOPT_UPDATE_RULES(NORMOPT_APPLY_F16)
NORMOPT_UPDATE_RULES(NORMOPT_APPLY_BF16)
NORMOPT_UPDATE_RULES(NORMOPT_APPLY_F32)
NORMOPT_UPDATE_RULES(NORMOPT_APPLY_F64)

#undef NORMOPT_ENTRY_POINTS
#undef NORMOPT_FINISH_ENTRY_POINTS
#undef NORMOPT_APPLY_F16
#undef NORMOPT_APPLY_BF16
#undef NORMOPT_APPLY_F32
#undef NORMOPT_APPLY_F64

#endif  // NORMOPT_CUDA_ENTRY_POINTS_CUH_
