// The extern "C" entry points of entry_points.cuh by element type, the
// dispatch from the launchers' dtype codes to a type, and the launches of
// one update step, for every host that launches them itself (launchers.cu,
// the host emulation).
//
// DTYPE codes: normopt/dtype_codes.h.
#ifndef NORMOPT_CUDA_ENTRY_TABLE_CUH_
#define NORMOPT_CUDA_ENTRY_TABLE_CUH_

#include "cuda/entry_points.cuh"
#include "normopt/dtype_codes.h"

namespace normopt {
namespace cuda {

// Returned for an unknown dtype code or rule (cudaErrorInvalidValue).
constexpr int kInvalidDtype = 1;

// The entry points of one element type (finish: of its accumulation type).
template <typename T>
struct Entry;

#define NORMOPT_ENTRY(T, SUF, ACC)                                     \
  template <>                                                          \
  struct Entry<T> {                                                    \
    static constexpr auto chunk_stats = &normopt_chunk_stats_##SUF;    \
    static constexpr auto scale = &normopt_scale_##SUF;                \
    static constexpr auto finish = &normopt_finish_##ACC;              \
    static constexpr auto trust_sums = &normopt_trust_sums_##ACC;      \
  };
NORMOPT_ENTRY(__half, f16, f32)
NORMOPT_ENTRY(__nv_bfloat16, bf16, f32)
NORMOPT_ENTRY(float, f32, f32)
NORMOPT_ENTRY(double, f64, f64)
#undef NORMOPT_ENTRY

// The apply entry point of rule `id` for element type T (null: unknown id).
template <typename T>
using ApplyEntry = void (*)(T* const*, int, const T* const*, const int64_t*,
                            const int32_t*, const int64_t*, const int64_t*,
                            int64_t, int64_t,
                            const TensorScale<Acc<T>>*, const int64_t*,
                            const int64_t*, const Acc<T>*, const double*, int,
                            TrustSums<Acc<T>>*, const TrustSums<Acc<T>>*);
template <typename T>
ApplyEntry<T> apply_entry(RuleId id);

#define NORMOPT_APPLY_CASE(name, Rule) \
  case RuleId::k_##name:               \
    return &NORMOPT_APPLY_NAME(name);
#define NORMOPT_APPLY_ENTRY(T, SUF)                          \
  template <>                                                \
  inline ApplyEntry<T> apply_entry<T>(RuleId id) {           \
    switch (id) { NORMOPT_UPDATE_RULES(NORMOPT_APPLY_CASE) } \
    return nullptr;                                          \
  }
#define NORMOPT_APPLY_NAME(name) normopt_apply_##name##_f16
NORMOPT_APPLY_ENTRY(__half, f16)
#undef NORMOPT_APPLY_NAME
#define NORMOPT_APPLY_NAME(name) normopt_apply_##name##_bf16
NORMOPT_APPLY_ENTRY(__nv_bfloat16, bf16)
#undef NORMOPT_APPLY_NAME
#define NORMOPT_APPLY_NAME(name) normopt_apply_##name##_f32
NORMOPT_APPLY_ENTRY(float, f32)
#undef NORMOPT_APPLY_NAME
#define NORMOPT_APPLY_NAME(name) normopt_apply_##name##_f64
NORMOPT_APPLY_ENTRY(double, f64)
#undef NORMOPT_APPLY_NAME
#undef NORMOPT_APPLY_ENTRY
#undef NORMOPT_APPLY_CASE

// Bytes of device workspace one step of rule `id` needs, for `num_chunks`
// chunks and `num_tensors` tensors: the TrustSums of every chunk and tensor
// for a trust-ratio rule, none for a one-phase rule.
template <typename A>
int64_t apply_workspace_bytes(RuleId id, int64_t num_chunks, int num_tensors) {
  if (!rule_trust_ratio(id)) return 0;
  return static_cast<int64_t>(sizeof(TrustSums<A>)) * (num_chunks + num_tensors);
}

// The launches of one step of rule `id` (launchers.h's normopt_cuda_apply):
// one for a one-phase rule; phase 1, trust_sums and phase 2 for a
// trust-ratio rule, in `workspace` (apply_workspace_bytes). `chunk_grad`:
// null, or the sparse gradients' table (tensor_list.cuh). The scales are
// a ScaleTable (scales, scale_first, units; update_kernels.cuh). `launch(grid,
// block, kernel, args...)` enqueues one kernel; `grid` blocks run the chunk
// kernels. Returns kInvalidDtype for an unknown rule, else 0.
template <typename T, typename Launch>
int launch_apply(const Launch& launch, RuleId id, unsigned grid,
                 unsigned finish_threads, T* const* state, int num_tensors,
                 const T* const* grads, const int64_t* sizes,
                 const int32_t* chunk_tensor, const int64_t* chunk_start,
                 const int64_t* chunk_grad, const int64_t* first_chunk,
                 int64_t num_chunks, int64_t chunk_size,
                 const TensorScale<Acc<T>>* scales,
                 const int64_t* scale_first, const int64_t* units,
                 const Acc<T>* decay, const double* args, void* workspace) {
  using A = Acc<T>;
  const ApplyEntry<T> kernel = apply_entry<T>(id);
  if (kernel == nullptr) return kInvalidDtype;
  if (num_chunks <= 0) return 0;
  const auto apply = [&](int phase, TrustSums<A>* chunk_sums,
                         const TrustSums<A>* tensor_sums) {
    launch(grid, kThreads, kernel, state, num_tensors, grads, sizes,
           chunk_tensor, chunk_start, chunk_grad, num_chunks, chunk_size, scales,
           scale_first, units, decay, args, phase, chunk_sums, tensor_sums);
  };
  if (!rule_trust_ratio(id)) {
    apply(0, nullptr, nullptr);
    return 0;
  }
  auto* chunk_sums = static_cast<TrustSums<A>*>(workspace);
  TrustSums<A>* tensor_sums = chunk_sums + num_chunks;
  apply(1, chunk_sums, nullptr);
  launch((num_tensors + finish_threads - 1) / finish_threads, finish_threads,
         Entry<T>::trust_sums, static_cast<const TrustSums<A>*>(chunk_sums),
         first_chunk, num_tensors, tensor_sums);
  apply(2, nullptr, tensor_sums);
  return 0;
}

// Calls f(T{}) with T the element type of dtype code `dtype`.
template <typename F>
int dispatch(int dtype, F f) {
  switch (dtype) {
    case kDtypeFloat16: return f(__half{});
    case kDtypeBFloat16: return f(__nv_bfloat16{});
    case kDtypeFloat32: return f(float{});
    case kDtypeFloat64: return f(double{});
  }
  return kInvalidDtype;
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_ENTRY_TABLE_CUH_
