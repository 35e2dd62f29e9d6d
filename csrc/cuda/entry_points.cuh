// The kernels' entry points: extern "C" __global__ functions with plain
// names, one per operation and dtype, so every host finds them the same way
// (launchers.cu by symbol, CuPy by name with either NVRTC or nvcc, no C++
// name mangling involved). Suffixes: f16 (__half), bf16 (__nv_bfloat16),
// f32, f64; the finish/scales kernels exist per accumulation type (f32, f64).
//
//   normopt_chunk_stats_SUF   grid: one block per chunk, kThreads threads
//   normopt_finish_ACC        grid: one thread per tensor; also given the
//                             tensors, sizes, zeros and dtype code (the
//                             rescue pass) and grad_norms (L2 norms, or null)
// chunk_grad (chunk_stats, apply) and zeros (finish, global_finish) are null
// when every gradient is dense; with sparse gradients they come from
// chunk_table.h's build_sparse_chunk_table (tensor_list.cuh).
//   normopt_global_finish_ACC  one thread
//   normopt_unit_stats_SUF     grid: one block per unit task, kThreads threads
//   normopt_unit_finish_ACC    grid: one thread per unit
// scales are TensorScale {pre, mult} pairs (norm_stats.h), found through a
// ScaleTable (scales, scale_first, units; update_kernels.cuh): scale_first
// null means one scale per tensor, in order.
//   normopt_scales_from_norms_ACC
//   normopt_scale_SUF                    (kThreads threads)
//   normopt_apply_RULE_SUF               (kThreads threads) for every RULE of
//                                        NORMOPT_UPDATE_RULES (update_rules.h);
//                                        `phase` 0 for a one-phase rule, 1
//                                        then 2 for a trust-ratio rule
//   normopt_trust_sums_ACC               grid: one thread per tensor, between
//                                        the phases of a trust-ratio rule
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
          const int64_t* chunk_grad, int64_t num_chunks, int64_t chunk_size,  \
          unsigned needed, normopt::NormStats<normopt::cuda::Acc<T>>* out) {  \
    normopt::cuda::chunk_stats<T>(tensors, sizes, chunk_tensor, chunk_start,  \
                                  chunk_grad, num_chunks, chunk_size, needed, \
                                  out);                                       \
  }                                                                           \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_scale_##SUF(const T* const* grads, T* const* outs,              \
                          const int64_t* sizes, const int32_t* chunk_tensor,  \
                          const int64_t* chunk_start, int64_t num_chunks,     \
                          int64_t chunk_size,                                 \
                          const normopt::TensorScale<normopt::cuda::Acc<T>>* scales, \
                          const int64_t* scale_first, const int64_t* units) { \
    normopt::cuda::scale_chunks<T>(grads, outs, sizes, chunk_tensor,          \
                                   chunk_start, num_chunks, chunk_size,       \
                                   {scales, scale_first, units});             \
  }                                                                           \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_unit_stats_##SUF(                                               \
          const T* const* tensors, const int64_t* sizes,                      \
          const int64_t* units, const int32_t* task_tensor,                   \
          const int64_t* task_u0, const int64_t* task_r0, int64_t num_tasks,  \
          int64_t rows_per_task, unsigned needed,                             \
          normopt::NormStats<normopt::cuda::Acc<T>>* out) {                   \
    normopt::cuda::unit_stats<T>(tensors, sizes, units, task_tensor, task_u0, \
                                 task_r0, num_tasks, rows_per_task, needed,   \
                                 out);                                        \
  }

// normopt_apply_<name>_<SUF>: one step of update rule `name` (update_rules.h).
#define NORMOPT_APPLY_ENTRY_POINT(T, SUF, name, Rule)                        \
  extern "C" __global__ void __launch_bounds__(normopt::cuda::kThreads)       \
      normopt_apply_##name##_##SUF(                                           \
          T* const* state, int num_tensors, const T* const* grads,            \
          const int64_t* sizes, const int32_t* chunk_tensor,                  \
          const int64_t* chunk_start, const int64_t* chunk_grad,              \
          int64_t num_chunks, int64_t chunk_size,                             \
          const normopt::TensorScale<normopt::cuda::Acc<T>>* scales,          \
          const int64_t* scale_first, const int64_t* units,                   \
          const normopt::cuda::Acc<T>* decay, const double* args, int phase,  \
          normopt::TrustSums<normopt::cuda::Acc<T>>* chunk_sums,              \
          const normopt::TrustSums<normopt::cuda::Acc<T>>* tensor_sums) {     \
    normopt::cuda::apply_rule_chunks<T, normopt::Rule>(                       \
        state, num_tensors, grads, sizes, chunk_tensor, chunk_start,          \
        chunk_grad, num_chunks, chunk_size, {scales, scale_first, units},     \
        decay, args, phase, chunk_sums, tensor_sums);                         \
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
      const void* const* tensors, const int64_t* sizes,                       \
      const int64_t* zeros, int dtype, A* norms,                              \
      normopt::TensorScale<A>* scales, A* grad_norms) {                       \
    normopt::cuda::finish<A>(stats, first_chunk, num_tensors, kind, mode,     \
                             clipnorm, eps, tensors, sizes, zeros, dtype,     \
                             norms, scales, grad_norms);                      \
  }                                                                           \
  extern "C" __global__ void normopt_scales_from_norms_##SUF(                 \
      const A* norms, const A* weight_norms, int num_scaled, int num_total,   \
      int mode, A clipnorm, A weight_eps, normopt::TensorScale<A>* scales) {  \
    normopt::cuda::scales_from_norms<A>(norms, weight_norms, num_scaled,      \
                                        num_total, mode, clipnorm,            \
                                        weight_eps, scales);                  \
  }                                                                           \
  extern "C" __global__ void normopt_global_finish_##SUF(                     \
      const normopt::NormStats<A>* stats, const int64_t* first_chunk,         \
      const int32_t* members, int num_members, int kind, A eps,               \
      const void* const* tensors, const int64_t* sizes,                       \
      const int64_t* zeros, int dtype, A* norms) {                            \
    normopt::cuda::global_finish<A>(stats, first_chunk, members, num_members, \
                                    kind, eps, tensors, sizes, zeros, dtype,  \
                                    norms);                                   \
  }                                                                           \
  extern "C" __global__ void normopt_unit_finish_##SUF(                       \
      const normopt::NormStats<A>* stats, const int32_t* unit_tensor,         \
      const int64_t* unit_index, int64_t num_units,                           \
      const int64_t* task_first, const int64_t* row_blocks,                   \
      const int64_t* scale_first, int kind, A eps,                            \
      const void* const* tensors, const int64_t* sizes, const int64_t* units, \
      int dtype, A* norms) {                                                  \
    normopt::cuda::unit_finish<A>(stats, unit_tensor, unit_index, num_units,  \
                                  task_first, row_blocks, scale_first, kind,  \
                                  eps, tensors, sizes, units, dtype, norms);  \
  }                                                                           \
  extern "C" __global__ void normopt_trust_sums_##SUF(                        \
      const normopt::TrustSums<A>* chunk_sums, const int64_t* first_chunk,    \
      int num_tensors, normopt::TrustSums<A>* tensor_sums) {                  \
    normopt::cuda::trust_sums<A>(chunk_sums, first_chunk, num_tensors,        \
                                 tensor_sums);                                \
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
