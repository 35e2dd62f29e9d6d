// The extern "C" entry points of entry_points.cuh by element type, and the
// dispatch from the launchers' dtype codes to a type, for every host that
// launches them itself (launchers.cu, the host emulation).
//
// DTYPE codes: normopt/dtype_codes.h.
#ifndef NORMOPT_CUDA_ENTRY_TABLE_CUH_
#define NORMOPT_CUDA_ENTRY_TABLE_CUH_

#include "cuda/entry_points.cuh"
#include "normopt/dtype_codes.h"

namespace normopt {
namespace cuda {

// Returned for an unknown dtype code (cudaErrorInvalidValue).
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
  };
NORMOPT_ENTRY(__half, f16, f32)
NORMOPT_ENTRY(__nv_bfloat16, bf16, f32)
NORMOPT_ENTRY(float, f32, f32)
NORMOPT_ENTRY(double, f64, f64)
#undef NORMOPT_ENTRY

// The apply entry point of rule `id` for element type T (null: unknown id).
template <typename T>
using ApplyEntry = void (*)(T* const*, int, const T* const*, const int64_t*,
                            const int32_t*, const int64_t*, int64_t, int64_t,
                            const TensorScale<Acc<T>>*, const int64_t*,
                            const int64_t*, const Acc<T>*, const double*);
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
