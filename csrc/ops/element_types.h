// Element and accumulation types of the CPU kernels.
//
// 16-bit inputs (Eigen::half, Eigen::bfloat16) and float32 accumulate in
// float32, float64 in float64; values are converted on load and rounded back
// to the element type once, on store.
#ifndef NORMOPT_OPS_ELEMENT_TYPES_H_
#define NORMOPT_OPS_ELEMENT_TYPES_H_

#include <type_traits>

#include "tensorflow/core/framework/types.h"

namespace normopt {

template <typename T>
using AccType = std::conditional_t<std::is_same<T, double>::value, double, float>;

template <typename T>
inline AccType<T> ToAcc(T x) {
  return static_cast<AccType<T>>(x);
}

template <typename T>
inline T FromAcc(AccType<T> x) {
  return static_cast<T>(x);
}

// The TF dtype of AccType<T>.
template <typename T>
constexpr tensorflow::DataType AccDataType() {
  return std::is_same<T, double>::value ? tensorflow::DT_DOUBLE
                                        : tensorflow::DT_FLOAT;
}

}  // namespace normopt

#endif  // NORMOPT_OPS_ELEMENT_TYPES_H_
