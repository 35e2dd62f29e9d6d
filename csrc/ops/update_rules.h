// Element-wise Keras 3 update rules over one chunk, gradient scaled on the fly.
//
// Each loop reads the gradient and the state once, computes in the
// accumulation type and rounds each stored value once. Options are template
// parameters so every loop is branch-free and vectorizable. With
// g' = (g * s.pre) * s.mult (`apply_scale` of normopt/norm_stats.h):
//
//   decay (decoupled):  w = w - w * wd * lr            (as Keras, in Acc)
//   SGD:                w = w - lr * g'
//   SGD momentum:       m = momentum * m - lr * g';  w = w + m
//   SGD nesterov:       m = momentum * m - lr * g';  w = w + momentum * m - lr * g'
//   Adam:               m = m + (g' - m) * (1 - beta_1)
//                       v = v + (g'^2 - v) * (1 - beta_2)
//                       amsgrad: vhat = max(vhat, v), used in place of v
//                       w = w - (m * alpha) / (sqrt(v) + adam_epsilon)
//
// The per-step scalars (alpha, 1 - beta, ...) come from normopt/update_scalars.h.
#ifndef NORMOPT_OPS_UPDATE_RULES_H_
#define NORMOPT_OPS_UPDATE_RULES_H_

#include <cmath>
#include <cstdint>

#include "normopt/norm_stats.h"
#include "normopt/update_scalars.h"
#include "ops/element_types.h"

namespace normopt {

// Momentum: 0 none, 1 heavy ball, 2 nesterov.
template <typename T, int Momentum, bool Decay>
void SgdChunk(T* __restrict w, T* __restrict m, const T* __restrict g,
              int64_t n, TensorScale<AccType<T>> scale, AccType<T> wd,
              SgdScalars<AccType<T>> k) {
  using Acc = AccType<T>;
  for (int64_t j = 0; j < n; ++j) {
    const Acc gs = apply_scale(ToAcc(g[j]), scale);
    Acc wj = ToAcc(w[j]);
    if (Decay) wj = wj - wj * wd * k.lr;
    if (Momentum == 0) {
      wj = wj - k.lr * gs;
    } else {
      const Acc mj = k.momentum * ToAcc(m[j]) - k.lr * gs;
      m[j] = FromAcc<T>(mj);
      wj = Momentum == 1 ? wj + mj : wj + (k.momentum * mj - k.lr * gs);
    }
    w[j] = FromAcc<T>(wj);
  }
}

template <typename T, bool Amsgrad, bool Decay>
void AdamChunk(T* __restrict w, T* __restrict m, T* __restrict v,
               T* __restrict vhat, const T* __restrict g, int64_t n,
               TensorScale<AccType<T>> scale, AccType<T> wd,
               AdamScalars<AccType<T>> k) {
  using Acc = AccType<T>;
  for (int64_t j = 0; j < n; ++j) {
    const Acc gs = apply_scale(ToAcc(g[j]), scale);
    Acc wj = ToAcc(w[j]);
    if (Decay) wj = wj - wj * wd * k.lr;
    Acc mj = ToAcc(m[j]);
    Acc vj = ToAcc(v[j]);
    mj = mj + (gs - mj) * k.one_minus_beta_1;
    vj = vj + (gs * gs - vj) * k.one_minus_beta_2;
    m[j] = FromAcc<T>(mj);
    v[j] = FromAcc<T>(vj);
    Acc denom_v = vj;
    if (Amsgrad) {
      const Acc h = ToAcc(vhat[j]);
      denom_v = h > vj ? h : vj;
      vhat[j] = FromAcc<T>(denom_v);
    }
    wj = wj - (mj * k.alpha) / (std::sqrt(denom_v) + k.epsilon);
    w[j] = FromAcc<T>(wj);
  }
}

}  // namespace normopt

#endif  // NORMOPT_OPS_UPDATE_RULES_H_
