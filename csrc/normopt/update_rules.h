// The one definition of every fused update rule (Keras 3's update_step).
//
// A rule updates one element. The generic multi-tensor apply (the CPU op's
// chunk loop in csrc/ops/apply_kernels.cc, the CUDA kernel template in
// csrc/cuda/update_kernels.cuh, which the host emulation also runs) loads
// the variable w, the rule's slots s[0..kSlots) and the gradient g into the
// accumulation type A (float for 16/32-bit data, double for float64), forms
// g' = (g * pre) * mult (`apply_scale`, norm_stats.h), applies decoupled
// weight decay when the variable has one,
//
//   w = w - w * wd * lr                       (Keras's _apply_weight_decay)
//
// then calls the rule and rounds each stored value once. A rule is a struct
// template over A with
//
//   static constexpr int kSlots, kHypers;
//   static constexpr const char* kSlotNames;   "m,v": the slots' names
//   explicit Rule(const double* args)   args = [lr, t, hyper[0..kHypers)],
//                                       t = iterations + 1 >= 1; forms the
//                                       step's scalars in A as Keras forms
//                                       them (once per step on the CPU,
//                                       once per thread in CUDA)
//   void operator()(A& w, A* s, A g) const
//
// Variants are compile-time template arguments, so every loop is branch-free.
// The rules, their slots in the order of the op's slot list, and their
// hyperparameters (after lr and t):
//
//   sgd            -                        w -= lr*g
//   sgd_momentum   momentum | mu            m = mu*m - lr*g;  w += m
//   sgd_nesterov   momentum | mu            m = mu*m - lr*g;  w += mu*m - lr*g
//   adam           m, v | beta_1, beta_2, epsilon
//                    alpha = lr*sqrt(1 - b2^t)/(1 - b1^t)            (in A)
//                    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
//                                          (1 - b formed in double: Keras
//                                           computes them in Python)
//                    w -= m*alpha/(sqrt(v) + epsilon)
//   adam_amsgrad   m, v, vhat | as adam     vhat = max(vhat, v) replaces v
//   rmsprop        velocity | rho, epsilon
//                    v = rho*v + (1 - rho)*g^2;  w -= lr*g/sqrt(v + epsilon)
//   rmsprop_momentum  velocity, momentum | rho, epsilon, momentum
//                    inc = lr*g/sqrt(v + epsilon); mom = momentum*mom + inc;
//                    w -= mom
//   rmsprop_centered  velocity, average_gradient | rho, epsilon
//                    a = rho*a + (1 - rho)*g; inc = lr*g/sqrt(v - a^2 + epsilon)
//   rmsprop_centered_momentum  velocity, average_gradient, momentum
//                  | rho, epsilon, momentum
//   adagrad        accumulator | epsilon    acc += g^2;
//                                           w -= lr*g/sqrt(acc + epsilon)
//   adamax         m, u | beta_1, beta_2, epsilon
//                    m += (g - m)(1 - b1);  u = max(b2*u, |g|)
//                    w -= lr*m/((1 - b1^t)(u + epsilon))
//   nadam          m, v | beta_1, beta_2, epsilon, u_product
//                    u_t = b1(1 - 0.5*0.96^t), u_t1 = b1(1 - 0.5*0.96^(t+1)),
//                    u_product = prod_{s<=t} u_s (Keras's _u_product after
//                    this step's update), u_product1 = u_product*u_t1
//                    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)   (in A)
//                    m_hat = u_t1*m/(1 - u_product1) + (1 - u_t)*g/(1 - u_product)
//                    w -= m_hat*lr/(sqrt(v/(1 - b2^t)) + epsilon)
//   adadelta       accumulated_grad, accumulated_delta_var | rho, epsilon
//                    a = rho*a + (1 - rho)*g^2
//                    delta = -sqrt(d + epsilon)*g/sqrt(a + epsilon)
//                    d = rho*d + (1 - rho)*delta^2;  w += lr*delta
//   ftrl           accumulator, linear | lr_power, l1, l2, l2_shrinkage, beta
//                    g2 = g + 2*l2_shrinkage*w;  n = acc + g^2
//                    linear += g2 - (n^-p - acc^-p)/lr*w      (p = lr_power)
//                    q = n^-p/lr + 2*(l2 + beta/(2*lr))       (in A, as Keras)
//                    w = (clip(linear, -l1, l1) - linear)/q;  acc = n
//   ftrl_sqrt      ftrl with lr_power = -0.5 (Keras's default): x^0.5 as
//                  sqrt, which vectorizes (pow is a scalar call per element)
//   lion           m | beta_1, beta_2
//                    w -= lr*sign(m*b1 + g*(1 - b1));  m = m*b2 + g*(1 - b2)
//                                                           (1 - b in A)
//   schedule_free_adamw  momentum, velocity | beta_1, beta_2, epsilon,
//                  warmup_steps      (w is Keras's y, momentum its z; in A)
//                    lr' = lr*min(t/warmup_steps, 1) if warmup_steps > 0
//                    v += (g^2 - v)(1 - b2)
//                    z -= lr'*g/(sqrt(v/(1 - b2^t)) + epsilon)
//                    x = (w - (1 - b1)*z)/b1                    (z after)
//                    x = (1 - 1/t)*x + (1/t)*z
//                    w = (1 - b1)*z + b1*x
//                  (decay, when set, uses lr, not lr'). x comes from the
//                  updated z, as in Keras on TensorFlow: its
//                  `momentum_old = momentum.value` is the tf.Variable
//                  itself, read after the assign_sub.
//
// Trust-ratio rules scale each tensor's step by a ratio of two norms over the
// whole tensor, r = f(sum w^2, sum u^2) with w the variable (after decay) and
// u the rule's update direction. Such a rule declares
//
//   static constexpr bool kTrustRatio = true;
//   void moments(A* s, A g) const       the slots' update
//   A direction(const A* s) const       u, from the updated slots
//   A ratio(A w_sq, A u_sq) const       r, from the tensor's sums
//   void operator()(A& w, const A* s, A r) const   the variable's, given r
//
// (a rule without kTrustRatio is one-phase) and the generic apply runs it in
// two passes over the chunks, in one op call:
//
//   phase 1    decay w, moments(s, g'), u = direction(s), all in A and
//              nothing stored; the chunk's sums of w^2 and u^2 in a fixed
//              order
//   per tensor the chunks' sums added in chunk order (no atomics: the sums,
//              hence r, depend only on the chunking), r = ratio(...)
//   phase 2    the same decay and moments again (the same bits), then
//              rule(w, s, r); w and s stored
//
// so the norms are those of the very w and u of the step, and every stored
// value is rounded once, as with a one-phase rule:
//
//   lamb           m, v | beta_1, beta_2, epsilon
//                    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
//                                          (1 - b formed in double, as adam)
//                    u = (m/(1 - b1^t))/(sqrt(v/(1 - b2^t)) + epsilon)  (in A)
//                    r = ||w||/||u|| if ||w|| > 0 and ||u|| > 0, else 1
//                    w -= (r*lr)*u
//
// NORMOPT_UPDATE_RULES is the table of them: adding a rule is a struct here
// and a row there; the op's `rule` attr, the CUDA entry points and the host
// emulation all come from the table. NORMOPT_TRUST_RATIO_RULES and
// NORMOPT_ZERO_GRADIENT_RULES name the trust-ratio rows and the rows that
// keep their state for a zero gradient again, for readers of this file's
// text (the CuPy front end, normopt/header_tables.py's test); static_asserts
// hold them to the rules' kTrustRatio and kZeroGradientKeepsState.
//
// Plain C++17 for host code and CUDA device code (NVRTC included), like
// norm_stats.h.
#ifndef NORMOPT_UPDATE_RULES_H_
#define NORMOPT_UPDATE_RULES_H_

#include "normopt/norm_stats.h"

#if defined(__CUDACC__)
#define NORMOPT_POW(x, y) ::pow(x, y)
#else
#define NORMOPT_POW(x, y) std::pow(x, y)
#endif

namespace normopt {

// The most args any rule reads: lr, t and up to 6 hyperparameters.
constexpr int kMaxRuleArgs = 8;

// Keras's decoupled weight decay, w - w * wd * lr, when the variable has one.
template <bool MayDecay, typename A>
NORMOPT_HD A decayed(A w, A wd, A lr) {
  return MayDecay && wd != A(0) ? w - w * wd * lr : w;
}

// Decay, then the rule, on one element already in A (g unscaled).
template <bool MayDecay, typename Rule, typename A>
NORMOPT_HD void update_element(const Rule& rule, A lr, A wd,
                               const TensorScale<A>& scale, A& w, A* s, A g) {
  const A gs = apply_scale(g, scale);
  w = decayed<MayDecay>(w, wd, lr);
  rule(w, s, gs);
}

// Whether Rule is a trust-ratio rule (declares kTrustRatio = true).
template <typename Rule, typename = void>
struct TrustRatioOf {
  static constexpr bool value = false;
};
template <typename Rule>
struct TrustRatioOf<Rule, decltype(void(Rule::kTrustRatio))> {
  static constexpr bool value = Rule::kTrustRatio;
};
template <typename Rule>
constexpr bool kIsTrustRatio = TrustRatioOf<Rule>::value;

// Whether Rule leaves w and every slot exactly as they are for a zero
// gradient (declares kZeroGradientKeepsState = true: sgd, adagrad), given a
// finite lr and, for Adagrad, acc + epsilon > 0 (Keras's default
// accumulator 0.1 and epsilon 1e-7 keep it so). Keras's updates of these
// write only the indexed rows of a sparse gradient, and so does the CPU op
// (decay still moves every row, as Keras's). Where acc + epsilon is 0 or
// NaN, Keras's sparse divide writes NaN into w on that row too; the op
// leaves it.
template <typename Rule, typename = void>
struct ZeroGradientKeepsStateOf {
  static constexpr bool value = false;
};
template <typename Rule>
struct ZeroGradientKeepsStateOf<
    Rule, decltype(void(Rule::kZeroGradientKeepsState))> {
  static constexpr bool value = Rule::kZeroGradientKeepsState;
};
template <typename Rule>
constexpr bool kZeroGradientKeepsState = ZeroGradientKeepsStateOf<Rule>::value;

// Phase 1 sums of a trust-ratio rule over a chunk or a tensor: sum w^2 (w
// after decay) and sum u^2. One per chunk, then one per tensor.
template <typename A>
struct TrustSums {
  A w_sq;
  A u_sq;
};

// Momentum: 0 none, 1 heavy ball, 2 nesterov.
template <typename A, int Momentum>
struct SgdRule {
  static constexpr int kSlots = Momentum == 0 ? 0 : 1;
  static constexpr const char* kSlotNames = Momentum == 0 ? "" : "momentum";
  static constexpr int kHypers = Momentum == 0 ? 0 : 1;
  static constexpr bool kZeroGradientKeepsState = Momentum == 0;  // w - lr*0
  A lr, mu;
  NORMOPT_HD explicit SgdRule(const double* args)
      : lr(A(args[0])), mu(Momentum == 0 ? A(0) : A(args[2])) {}
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    if (Momentum == 0) {
      w = w - lr * g;
      return;
    }
    const A m = mu * s[0] - lr * g;
    s[0] = m;
    w = Momentum == 1 ? w + m : w + (mu * m - lr * g);
  }
};
template <typename A>
using Sgd = SgdRule<A, 0>;
template <typename A>
using SgdMomentum = SgdRule<A, 1>;
template <typename A>
using SgdNesterov = SgdRule<A, 2>;

template <typename A, bool Amsgrad>
struct AdamRule {
  static constexpr int kSlots = Amsgrad ? 3 : 2;
  static constexpr const char* kSlotNames = Amsgrad ? "m,v,vhat" : "m,v";
  static constexpr int kHypers = 3;
  A alpha, one_minus_b1, one_minus_b2, epsilon;
  NORMOPT_HD explicit AdamRule(const double* args)
      : one_minus_b1(A(1.0 - args[2])),
        one_minus_b2(A(1.0 - args[3])),
        epsilon(A(args[4])) {
    const A t = A(args[1]);
    alpha = A(args[0]) * NORMOPT_SQRT(A(1) - NORMOPT_POW(A(args[3]), t)) /
            (A(1) - NORMOPT_POW(A(args[2]), t));
  }
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = s[0] + (g - s[0]) * one_minus_b1;
    s[1] = s[1] + (g * g - s[1]) * one_minus_b2;
    A v = s[1];
    if (Amsgrad) {
      v = s[2] > v ? s[2] : v;
      s[2] = v;
    }
    w = w - (s[0] * alpha) / (NORMOPT_SQRT(v) + epsilon);
  }
};
template <typename A>
using Adam = AdamRule<A, false>;
template <typename A>
using AdamAmsgrad = AdamRule<A, true>;

// Slots: velocity, [average_gradient], [momentum].
template <typename A, bool Centered, bool Momentum>
struct RmspropRule {
  static constexpr int kSlots = 1 + (Centered ? 1 : 0) + (Momentum ? 1 : 0);
  static constexpr const char* kSlotNames =
      Centered ? (Momentum ? "velocity,average_gradient,momentum"
                           : "velocity,average_gradient")
               : (Momentum ? "velocity,momentum" : "velocity");
  static constexpr int kHypers = Momentum ? 3 : 2;
  A lr, rho, one_minus_rho, epsilon, momentum;
  NORMOPT_HD explicit RmspropRule(const double* args)
      : lr(A(args[0])),
        rho(A(args[2])),
        one_minus_rho(A(1.0 - args[2])),
        epsilon(A(args[3])),
        momentum(Momentum ? A(args[4]) : A(0)) {}
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = rho * s[0] + one_minus_rho * (g * g);
    A denominator = s[0] + epsilon;
    if (Centered) {
      s[1] = rho * s[1] + one_minus_rho * g;
      denominator = s[0] - s[1] * s[1] + epsilon;
    }
    const A increment = (lr * g) / NORMOPT_SQRT(denominator);
    if (Momentum) {
      A& mom = s[Centered ? 2 : 1];
      mom = momentum * mom + increment;
      w = w - mom;
    } else {
      w = w - increment;
    }
  }
};
template <typename A>
using Rmsprop = RmspropRule<A, false, false>;
template <typename A>
using RmspropMomentum = RmspropRule<A, false, true>;
template <typename A>
using RmspropCentered = RmspropRule<A, true, false>;
template <typename A>
using RmspropCenteredMomentum = RmspropRule<A, true, true>;

template <typename A>
struct Adagrad {
  static constexpr int kSlots = 1;
  static constexpr const char* kSlotNames = "accumulator";
  static constexpr int kHypers = 1;
  // acc + 0*0, w - (lr*0)/sqrt(acc + epsilon)
  static constexpr bool kZeroGradientKeepsState = true;
  A lr, epsilon;
  NORMOPT_HD explicit Adagrad(const double* args)
      : lr(A(args[0])), epsilon(A(args[2])) {}
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = s[0] + g * g;
    w = w - (lr * g) / NORMOPT_SQRT(s[0] + epsilon);
  }
};

template <typename A>
struct Adamax {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "m,u";
  static constexpr int kHypers = 3;
  A lr, one_minus_b1, b2, epsilon, one_minus_b1_power;
  NORMOPT_HD explicit Adamax(const double* args)
      : lr(A(args[0])),
        one_minus_b1(A(1.0 - args[2])),
        b2(A(args[3])),
        epsilon(A(args[4])),
        one_minus_b1_power(A(1) - NORMOPT_POW(A(args[2]), A(args[1]))) {}
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = s[0] + (g - s[0]) * one_minus_b1;
    s[1] = max_keep_nan(b2 * s[1], g < A(0) ? -g : g);
    w = w - (lr * s[0]) / (one_minus_b1_power * (s[1] + epsilon));
  }
};

template <typename A>
struct Nadam {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "m,v";
  static constexpr int kHypers = 4;
  A lr, one_minus_b1, one_minus_b2, epsilon, u_t1, one_minus_u_t;
  A one_minus_u_product, one_minus_u_product1, one_minus_b2_power;
  NORMOPT_HD explicit Nadam(const double* args)
      : lr(A(args[0])), epsilon(A(args[4])) {
    const A t = A(args[1]);
    const A b1 = A(args[2]);
    const A b2 = A(args[3]);
    // 0.96 rounded through float32, as Keras's ops.cast(0.96, dtype) does.
    const A decay = A(0.96f);
    const A u_t = b1 * (A(1) - A(0.5) * NORMOPT_POW(decay, t));
    u_t1 = b1 * (A(1) - A(0.5) * NORMOPT_POW(decay, t + A(1)));
    const A u_product = A(args[5]);
    one_minus_b1 = A(1) - b1;
    one_minus_b2 = A(1) - b2;
    one_minus_u_t = A(1) - u_t;
    one_minus_u_product = A(1) - u_product;
    one_minus_u_product1 = A(1) - u_product * u_t1;
    one_minus_b2_power = A(1) - NORMOPT_POW(b2, t);
  }
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = s[0] + (g - s[0]) * one_minus_b1;
    s[1] = s[1] + (g * g - s[1]) * one_minus_b2;
    const A m_hat = (u_t1 * s[0]) / one_minus_u_product1 +
                    (one_minus_u_t * g) / one_minus_u_product;
    const A v_hat = s[1] / one_minus_b2_power;
    w = w - (m_hat * lr) / (NORMOPT_SQRT(v_hat) + epsilon);
  }
};

template <typename A>
struct Adadelta {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "accumulated_grad,accumulated_delta_var";
  static constexpr int kHypers = 2;
  A lr, rho, one_minus_rho, epsilon;
  NORMOPT_HD explicit Adadelta(const double* args)
      : lr(A(args[0])),
        rho(A(args[2])),
        one_minus_rho(A(1.0 - args[2])),
        epsilon(A(args[3])) {}
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[0] = rho * s[0] + one_minus_rho * (g * g);
    const A delta = -((NORMOPT_SQRT(s[1] + epsilon) * g) / NORMOPT_SQRT(s[0] + epsilon));
    s[1] = rho * s[1] + one_minus_rho * (delta * delta);
    w = w + lr * delta;
  }
};

// SqrtPower: lr_power is -0.5 (the adapter picks ftrl_sqrt only then).
template <typename A, bool SqrtPower>
struct FtrlRule {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "accumulator,linear";
  static constexpr int kHypers = 5;
  A lr, neg_power, l1, two_l2_reg, two_shrinkage;
  NORMOPT_HD explicit FtrlRule(const double* args)
      : lr(A(args[0])),
        neg_power(A(-args[2])),
        l1(A(args[3])),
        two_l2_reg(A(2) * (A(args[4]) + A(args[6]) / (A(2) * A(args[0])))),
        two_shrinkage(A(2 * args[5])) {}
  NORMOPT_HD A power(A x) const {
    if constexpr (SqrtPower) {
      return NORMOPT_SQRT(x);
    } else {
      return NORMOPT_POW(x, neg_power);
    }
  }
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    const A g2 = g + two_shrinkage * w;
    const A n = s[0] + g * g;
    const A n_pow = power(n);
    s[1] = s[1] + (g2 - ((n_pow - power(s[0])) / lr) * w);
    const A quadratic = n_pow / lr + two_l2_reg;
    const A clipped = s[1] < -l1 ? -l1 : (s[1] > l1 ? l1 : s[1]);
    w = (clipped - s[1]) / quadratic;
    s[0] = n;
  }
};

template <typename A>
using Ftrl = FtrlRule<A, false>;
template <typename A>
using FtrlSqrt = FtrlRule<A, true>;

template <typename A>
struct Lion {
  static constexpr int kSlots = 1;
  static constexpr const char* kSlotNames = "m";
  static constexpr int kHypers = 2;
  A lr, b1, one_minus_b1, b2, one_minus_b2;
  NORMOPT_HD explicit Lion(const double* args)
      : lr(A(args[0])),
        b1(A(args[2])),
        one_minus_b1(A(1) - A(args[2])),
        b2(A(args[3])),
        one_minus_b2(A(1) - A(args[3])) {}
  // sign(x), NaN kept (as tf.sign).
  NORMOPT_HD static A sign(A x) {
    return x > A(0) ? A(1) : (x < A(0) ? A(-1) : x);
  }
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    w = w - lr * sign(s[0] * b1 + g * one_minus_b1);
    s[0] = s[0] * b2 + g * one_minus_b2;
  }
};

// Keras's ScheduleFreeAdamW. The variable is the interpolation y; the
// averaged iterate x is not stored but recovered from y and z (the updated
// z, as Keras on TensorFlow reads it; see the table at the top).
template <typename A>
struct ScheduleFreeAdamW {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "momentum,velocity";
  static constexpr int kHypers = 4;
  A lr, b1, one_minus_b1, one_minus_b2, one_minus_b2_power, epsilon, weight,
      one_minus_weight;
  NORMOPT_HD explicit ScheduleFreeAdamW(const double* args)
      : lr(A(args[0])), b1(A(args[2])), epsilon(A(args[4])) {
    const A t = A(args[1]);
    if (args[5] > 0) {
      const A ramp = t / A(args[5]);
      lr = lr * (ramp < A(1) ? ramp : A(1));
    }
    one_minus_b1 = A(1) - b1;
    one_minus_b2 = A(1) - A(args[3]);
    one_minus_b2_power = A(1) - NORMOPT_POW(A(args[3]), t);
    weight = A(1) / t;
    one_minus_weight = A(1) - weight;
  }
  NORMOPT_HD void operator()(A& w, A* s, A g) const {
    s[1] = s[1] + (g * g - s[1]) * one_minus_b2;
    const A denominator = NORMOPT_SQRT(s[1] / one_minus_b2_power) + epsilon;
    s[0] = s[0] - (lr * g) / denominator;
    const A x_old = (w - one_minus_b1 * s[0]) / b1;
    const A x_new = one_minus_weight * x_old + weight * s[0];
    w = one_minus_b1 * s[0] + b1 * x_new;
  }
};

// Keras's Lamb, a trust-ratio rule (see the top of this file).
template <typename A>
struct Lamb {
  static constexpr int kSlots = 2;
  static constexpr const char* kSlotNames = "m,v";
  static constexpr int kHypers = 3;
  static constexpr bool kTrustRatio = true;
  A lr, one_minus_b1, one_minus_b2, epsilon, one_minus_b1_power,
      one_minus_b2_power;
  NORMOPT_HD explicit Lamb(const double* args)
      : lr(A(args[0])),
        one_minus_b1(A(1.0 - args[2])),
        one_minus_b2(A(1.0 - args[3])),
        epsilon(A(args[4])) {
    const A t = A(args[1]);
    one_minus_b1_power = A(1) - NORMOPT_POW(A(args[2]), t);
    one_minus_b2_power = A(1) - NORMOPT_POW(A(args[3]), t);
  }
  NORMOPT_HD void moments(A* s, A g) const {
    s[0] = s[0] + (g - s[0]) * one_minus_b1;
    s[1] = s[1] + (g * g - s[1]) * one_minus_b2;
  }
  NORMOPT_HD A direction(const A* s) const {
    return (s[0] / one_minus_b1_power) /
           (NORMOPT_SQRT(s[1] / one_minus_b2_power) + epsilon);
  }
  // ||w|| / ||u|| where both are > 0 (a NaN norm gives 1, as Keras's
  // where(greater(norm, 0), ...) does).
  NORMOPT_HD A ratio(A w_sq, A u_sq) const {
    const A w_norm = NORMOPT_SQRT(w_sq);
    const A u_norm = NORMOPT_SQRT(u_sq);
    return w_norm > A(0) && u_norm > A(0) ? w_norm / u_norm : A(1);
  }
  NORMOPT_HD void operator()(A& w, const A* s, A r) const {
    w = w - (r * lr) * direction(s);
  }
};

// The table: X(name, Rule template).
#define NORMOPT_UPDATE_RULES(X)                          \
  X(sgd, Sgd)                                            \
  X(sgd_momentum, SgdMomentum)                           \
  X(sgd_nesterov, SgdNesterov)                           \
  X(adam, Adam)                                          \
  X(adam_amsgrad, AdamAmsgrad)                           \
  X(rmsprop, Rmsprop)                                    \
  X(rmsprop_momentum, RmspropMomentum)                   \
  X(rmsprop_centered, RmspropCentered)                   \
  X(rmsprop_centered_momentum, RmspropCenteredMomentum)  \
  X(adagrad, Adagrad)                                    \
  X(adamax, Adamax)                                      \
  X(nadam, Nadam)                                        \
  X(adadelta, Adadelta)                                  \
  X(ftrl, Ftrl)                                          \
  X(ftrl_sqrt, FtrlSqrt)                                 \
  X(lion, Lion)                                          \
  X(lamb, Lamb)                                          \
  X(schedule_free_adamw, ScheduleFreeAdamW)

// The rows of NORMOPT_UPDATE_RULES whose rule has kTrustRatio: X(name).
#define NORMOPT_TRUST_RATIO_RULES(X) X(lamb)

// The rows of NORMOPT_UPDATE_RULES whose rule has kZeroGradientKeepsState:
// X(name).
#define NORMOPT_ZERO_GRADIENT_RULES(X) X(sgd) X(adagrad)

enum class RuleId : int {
#define NORMOPT_RULE_ID(name, Rule) k_##name,
  NORMOPT_UPDATE_RULES(NORMOPT_RULE_ID)
#undef NORMOPT_RULE_ID
};

// Whether rule `id` is listed in NORMOPT_TRUST_RATIO_RULES.
constexpr bool listed_trust_ratio(RuleId id) {
#define NORMOPT_TRUST_LISTED(name) \
  if (id == RuleId::k_##name) return true;
  NORMOPT_TRUST_RATIO_RULES(NORMOPT_TRUST_LISTED)
#undef NORMOPT_TRUST_LISTED
  return false;
}
#define NORMOPT_TRUST_CHECK(name, Rule)                                       \
  static_assert(kIsTrustRatio<Rule<float>> ==                                 \
                    listed_trust_ratio(RuleId::k_##name),                     \
                "rule " #name                                                 \
                ": kTrustRatio and NORMOPT_TRUST_RATIO_RULES disagree");
NORMOPT_UPDATE_RULES(NORMOPT_TRUST_CHECK)
#undef NORMOPT_TRUST_CHECK

// Whether rule `id` is listed in NORMOPT_ZERO_GRADIENT_RULES.
constexpr bool listed_zero_gradient(RuleId id) {
#define NORMOPT_ZERO_LISTED(name) \
  if (id == RuleId::k_##name) return true;
  NORMOPT_ZERO_GRADIENT_RULES(NORMOPT_ZERO_LISTED)
#undef NORMOPT_ZERO_LISTED
  return false;
}
#define NORMOPT_ZERO_CHECK(name, Rule)                                        \
  static_assert(kZeroGradientKeepsState<Rule<float>> ==                       \
                    listed_zero_gradient(RuleId::k_##name),                   \
                "rule " #name                                                 \
                ": kZeroGradientKeepsState and NORMOPT_ZERO_GRADIENT_RULES "  \
                "disagree");
NORMOPT_UPDATE_RULES(NORMOPT_ZERO_CHECK)
#undef NORMOPT_ZERO_CHECK

// A rule template as a value: f(RuleTag<Rule>{}) sees Rule as a template.
template <template <typename> class Rule>
struct RuleTag {
  template <typename A>
  using type = Rule<A>;
};

#if !defined(__CUDACC_RTC__)
// Calls f(RuleTag<Rule>{}) for the rule `id` (host code); returns f's result.
template <typename F>
inline auto with_rule(RuleId id, F f) -> decltype(f(RuleTag<Sgd>{})) {
  switch (id) {
#define NORMOPT_RULE_CASE(name, Rule) \
  case RuleId::k_##name:              \
    return f(RuleTag<Rule>{});
    NORMOPT_UPDATE_RULES(NORMOPT_RULE_CASE)
#undef NORMOPT_RULE_CASE
  }
  return f(RuleTag<Sgd>{});  // unreachable: every RuleId has a case
}

// Host-side name lookup; false for an unknown name.
inline bool parse_rule(const char* name, RuleId* out) {
  struct Entry {
    const char* name;
    RuleId id;
  };
  static const Entry kEntries[] = {
#define NORMOPT_RULE_ENTRY(rule_name, Rule) {#rule_name, RuleId::k_##rule_name},
      NORMOPT_UPDATE_RULES(NORMOPT_RULE_ENTRY)
#undef NORMOPT_RULE_ENTRY
  };
  for (const Entry& e : kEntries) {
    const char* a = e.name;
    const char* b = name;
    while (*a != '\0' && *a == *b) ++a, ++b;
    if (*a == *b) {
      *out = e.id;
      return true;
    }
  }
  return false;
}

// "sgd, sgd_momentum, ..., lamb", for error messages.
inline const char* rule_names() {
  static const char kNames[] =
#define NORMOPT_RULE_NAME(name, Rule) ", " #name
      NORMOPT_UPDATE_RULES(NORMOPT_RULE_NAME)
#undef NORMOPT_RULE_NAME
      ;
  return kNames + 2;
}

// Slot names ("m,v"), slot and hyperparameter counts of rule `id`, and
// its kTrustRatio and kZeroGradientKeepsState.
inline const char* rule_slot_names(RuleId id) {
  return with_rule(id, [](auto tag) {
    return decltype(tag)::template type<float>::kSlotNames;
  });
}
inline int rule_slots(RuleId id) {
  return with_rule(id, [](auto tag) {
    return decltype(tag)::template type<float>::kSlots;
  });
}
inline int rule_hypers(RuleId id) {
  return with_rule(id, [](auto tag) {
    return decltype(tag)::template type<float>::kHypers;
  });
}
inline bool rule_trust_ratio(RuleId id) {
  return with_rule(id, [](auto tag) {
    return kIsTrustRatio<typename decltype(tag)::template type<float>>;
  });
}
inline bool rule_zero_gradient_keeps_state(RuleId id) {
  return with_rule(id, [](auto tag) {
    return kZeroGradientKeepsState<typename decltype(tag)::template type<float>>;
  });
}
#endif

}  // namespace normopt

#endif  // NORMOPT_UPDATE_RULES_H_
