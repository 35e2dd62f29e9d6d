// The per-step scalars of the fused updates, formed once per step on the host
// in the accumulation type Acc (float for 16/32-bit variables, double for
// float64), the way Keras 3 forms them in the variable's dtype:
//
//   SGD    lr, momentum                     (Python floats cast to Acc)
//   Adam   lr
//          alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
//                                           (in Acc, as Keras: in float32,
//                                            1 - 0.999^t is off by ~1e-5 of
//                                            its value at t = 1)
//          1 - beta_1, 1 - beta_2           (formed in double, then cast:
//                                            Keras computes them in Python)
//          epsilon
//
// (in the order the CUDA entry points take them)
//
// Used by the CPU op (csrc/ops) and the CUDA launchers (csrc/cuda), so both
// hosts give the kernels the same bits. Plain C++17, host code only.
#ifndef NORMOPT_UPDATE_SCALARS_H_
#define NORMOPT_UPDATE_SCALARS_H_

#include <cmath>

namespace normopt {

template <typename Acc>
struct SgdScalars {
  Acc lr;
  Acc momentum;
};

template <typename Acc>
inline SgdScalars<Acc> sgd_scalars(double lr, double momentum) {
  return {static_cast<Acc>(lr), static_cast<Acc>(momentum)};
}

// alpha carries the bias correction of step t (t = iterations + 1 >= 1).
template <typename Acc>
struct AdamScalars {
  Acc lr;
  Acc alpha;
  Acc one_minus_beta_1;
  Acc one_minus_beta_2;
  Acc epsilon;
};

template <typename Acc>
inline AdamScalars<Acc> adam_scalars(double lr, double beta_1, double beta_2,
                                     double epsilon, double step) {
  const Acc b1 = static_cast<Acc>(beta_1);
  const Acc b2 = static_cast<Acc>(beta_2);
  const Acc t = static_cast<Acc>(step);
  const Acc alpha = static_cast<Acc>(lr) *
                    std::sqrt(Acc(1) - std::pow(b2, t)) /
                    (Acc(1) - std::pow(b1, t));
  return {static_cast<Acc>(lr), alpha, static_cast<Acc>(1.0 - beta_1),
          static_cast<Acc>(1.0 - beta_2), static_cast<Acc>(epsilon)};
}

}  // namespace normopt

#endif  // NORMOPT_UPDATE_SCALARS_H_
