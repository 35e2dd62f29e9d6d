"""The element rules of the fused updates, for the Numba kernels.

One plain-Python element function per optimizer family (its variants as
flags), which `numba_cpu` compiles with `@njit` and `numba_cuda` with
`@cuda.jit(device=True)`, so both run one statement of each rule (as
`_finalize` does for the norms); `rule_element(jit)` compiles them with a
dispatcher on the rule's code for the generic multi-tensor apply. Element
arguments are in the accumulation type A (float32 for 16/32-bit data,
float64 for float64) and the rules return A values: the generic kernel loads
each element into A, applies the decoupled decay and the rule, and stores the
returned values, rounding each once to the element type. The rules hold no
numeric literal (a Python float would promote float32 arithmetic to float64
in Numba): every constant is a step scalar, formed on the host in A by the
rule's `*_scalars` function (Keras 3 forms them in the variable's dtype,
`1 - beta` of a Python float in double).

With g = g' = (g * pre[t]) * mult[t], the scaled gradient, and t = step:

    decay (decoupled, when wd != 0)   w = w - w * wd * lr     (before the rule)

    rule                       slots                       hyper
    sgd                        -                           -
    sgd_momentum               momentum                    momentum
    sgd_nesterov               momentum                    momentum
    adam                       m, v                        beta_1, beta_2, epsilon
    adam_amsgrad               m, v, vhat                  beta_1, beta_2, epsilon
    rmsprop                    velocity                    rho, epsilon
    rmsprop_momentum           velocity, momentum          rho, epsilon, momentum
    rmsprop_centered           velocity, average_gradient  rho, epsilon
    rmsprop_centered_momentum  velocity, average_gradient, rho, epsilon, momentum
                               momentum
    adagrad                    accumulator                 epsilon
    adamax                     m, u                        beta_1, beta_2, epsilon
    nadam                      m, v                        beta_1, beta_2, epsilon,
                                                           u_product
    adadelta                   accumulated_grad,           rho, epsilon
                               accumulated_delta_var
    ftrl                       accumulator, linear         lr_power, l1, l2,
                                                           l2_shrinkage, beta
    lion                       m                           beta_1, beta_2
    lamb (trust ratio)         m, v                        beta_1, beta_2, epsilon

(formulas: each element function's and `*_scalars` function's docstring;
they are Keras 3's `update_step`s, keras/src/optimizers/*.py).

A trust-ratio rule (Rule.trust_ratio) scales each tensor's step by a ratio
of the norms of the whole variable and of the rule's update direction u, so
the generic apply runs it in two passes with a per-tensor step between them
(`trust_elements`): phase 1 stores nothing and sums, per chunk, w^2 (w after
the decay) and u^2 (`direction` of the slots updated by `moments`); the
chunks' sums, added per tensor in chunk order, give the ratio r (`ratio`);
phase 2 makes the same decay and `moments` again, then the step (`step`),
and stores w and the slots.
"""

import collections
import math

import numpy as np

from normopt import header_tables

# ---- element rules (compiled by Numba; no literals, all arguments in A) ----


def decay_element(w, wd, lr):
    """Decoupled weight decay, applied before the rule when wd != 0:
    w = w - w * wd * lr."""
    return w - w * wd * lr


def sgd_element(w, m, g, lr, mu, use_momentum, nesterov):
    """Keras SGD; returns (w, m), m as given without momentum.

        sgd           w = w - lr * g
        momentum      m = mu * m - lr * g;  w = w + m
        nesterov      m = mu * m - lr * g;  w = w + (mu * m - lr * g)
    """
    if not use_momentum:
        return w - lr * g, m
    m = mu * m - lr * g
    if nesterov:
        return w + (mu * m - lr * g), m
    return w + m, m


def adam_element(w, m, v, vhat, g, alpha, one_minus_b1, one_minus_b2, eps, amsgrad):
    """Keras Adam (and amsgrad); returns (w, m, v, vhat), vhat as given
    without amsgrad. alpha = lr * sqrt(1 - b2^t) / (1 - b1^t) (`adam_scalars`):

        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        amsgrad: vhat = max(vhat, v), used in place of v below
        w = w - (m * alpha) / (sqrt(v) + eps)
    """
    m = m + (g - m) * one_minus_b1
    v = v + (g * g - v) * one_minus_b2
    denom = v
    if amsgrad:
        vhat = vhat if vhat > v else v
        denom = vhat
    return w - (m * alpha) / (math.sqrt(denom) + eps), m, v, vhat


def rmsprop_element(w, v, ag, mom, g, lr, rho, one_minus_rho, eps, momentum,
                    centered, use_momentum):
    """Keras RMSprop; returns (w, v, ag, mom), ag / mom as given when not
    centered / without momentum:

        v   = rho * v + (1 - rho) * (g * g)
        centered: ag = rho * ag + (1 - rho) * g
                  inc = (lr * g) / sqrt(v - ag * ag + eps)
        else:     inc = (lr * g) / sqrt(v + eps)
        momentum: mom = momentum * mom + inc;  w = w - mom
        else:     w = w - inc
    """
    v = rho * v + one_minus_rho * (g * g)
    if centered:
        ag = rho * ag + one_minus_rho * g
        denom = v - ag * ag + eps
    else:
        denom = v + eps
    inc = (lr * g) / math.sqrt(denom)
    if use_momentum:
        mom = momentum * mom + inc
        return w - mom, v, ag, mom
    return w - inc, v, ag, mom


def adagrad_element(w, acc, g, lr, eps):
    """Keras Adagrad; returns (w, acc):

        acc = acc + g * g
        w   = w - (lr * g) / sqrt(acc + eps)
    """
    acc = acc + g * g
    return w - (lr * g) / math.sqrt(acc + eps), acc


def adamax_element(w, m, u, g, lr, one_minus_b1, b2, one_minus_b1p, eps):
    """Keras Adamax; returns (w, m, u). b1p = b1^t (`adamax_scalars`):

        m = m + (g - m) * (1 - b1)
        u = max(b2 * u, |g|)
        w = w - (lr * m) / ((1 - b1p) * (u + eps))
    """
    m = m + (g - m) * one_minus_b1
    bu = b2 * u
    ag = abs(g)
    u = bu if (bu > ag or bu != bu) else ag  # a NaN stays
    return w - (lr * m) / (one_minus_b1p * (u + eps)), m, u


def nadam_element(w, m, v, g, lr, one_minus_b1, one_minus_b2, u_t1, one_minus_up1,
                  one_minus_u_t, one_minus_up, one_minus_b2p, eps):
    """Keras Nadam; returns (w, m, v). u_t, u_t1, up, up1, b2p: `nadam_scalars`:

        m     = m + (g - m) * (1 - b1)
        v     = v + (g * g - v) * (1 - b2)
        m_hat = (u_t1 * m) / (1 - up1) + ((1 - u_t) * g) / (1 - up)
        v_hat = v / (1 - b2p)
        w     = w - (m_hat * lr) / (sqrt(v_hat) + eps)
    """
    m = m + (g - m) * one_minus_b1
    v = v + (g * g - v) * one_minus_b2
    m_hat = (u_t1 * m) / one_minus_up1 + (one_minus_u_t * g) / one_minus_up
    v_hat = v / one_minus_b2p
    return w - (m_hat * lr) / (math.sqrt(v_hat) + eps), m, v


def lion_element(w, m, g, lr, b1, one_minus_b1, b2, one_minus_b2):
    """Keras Lion; returns (w, m). sign(0) = 0, sign(NaN) = NaN:

        w = w - lr * sign(m * b1 + g * (1 - b1))
        m = m * b2 + g * (1 - b2)
    """
    c = m * b1 + g * one_minus_b1
    # lr * sign(c), without a literal: lr * 1 = lr exactly, c * lr is 0 or NaN
    step = lr if c > 0 else (-lr if c < 0 else c * lr)
    return w - step, m * b2 + g * one_minus_b2


def adadelta_element(w, ag, ad, g, lr, rho, one_minus_rho, eps):
    """Keras Adadelta; returns (w, accumulated_grad, accumulated_delta_var):

        ag = rho * ag + (1 - rho) * g^2
        delta = -(sqrt(ad + eps) * g / sqrt(ag + eps))
        ad = rho * ad + (1 - rho) * delta^2
        w = w + lr * delta
    """
    ag = rho * ag + one_minus_rho * (g * g)
    delta = -((math.sqrt(ad + eps) * g) / math.sqrt(ag + eps))
    ad = rho * ad + one_minus_rho * (delta * delta)
    return w + lr * delta, ag, ad


def schedule_free_adamw_element(w, z, v, g, lr_t, b1, one_minus_b1, one_minus_b2,
                                one_minus_b2p, eps, weight, one_minus_weight):
    """Keras ScheduleFreeAdamW; returns (w, momentum z, velocity v). w is
    Keras's y; lr_t the lr after warm-up (`schedule_free_adamw_scalars`):

        v = v + (g * g - v) * (1 - b2)
        z = z - lr_t * g / (sqrt(v / (1 - b2p)) + eps)
        x = (w - (1 - b1) * z) / b1          (the updated z, as Keras on TF)
        x = (1 - 1/t) * x + (1/t) * z
        w = (1 - b1) * z + b1 * x
    """
    v = v + (g * g - v) * one_minus_b2
    z = z - (lr_t * g) / (math.sqrt(v / one_minus_b2p) + eps)
    x_old = (w - one_minus_b1 * z) / b1
    x_new = one_minus_weight * x_old + weight * z
    return one_minus_b1 * z + b1 * x_new, z, v


def ftrl_element(w, acc, linear, g, lr, neg_power, l1, neg_l1, two_l2_reg, two_shrinkage):
    """Keras Ftrl; returns (w, accumulator, linear), p = lr_power:

        g2 = g + 2 * l2_shrinkage * w;  n = acc + g^2
        linear = linear + (g2 - (n^-p - acc^-p) / lr * w)
        q = n^-p / lr + 2 * (l2 + beta / (2 * lr))
        w = (clip(linear, -l1, l1) - linear) / q;  acc = n
    """
    g2 = g + two_shrinkage * w
    n = acc + g * g
    n_pow = n**neg_power
    linear = linear + (g2 - ((n_pow - acc**neg_power) / lr) * w)
    quadratic = n_pow / lr + two_l2_reg
    clipped = neg_l1 if linear < neg_l1 else (l1 if linear > l1 else linear)
    return (clipped - linear) / quadratic, n, linear


def lamb_moments_element(m, v, g, one_minus_b1, one_minus_b2):
    """Keras Lamb's slots; returns (m, v):

        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
    """
    return m + (g - m) * one_minus_b1, v + (g * g - v) * one_minus_b2


def lamb_direction_element(m, v, one_minus_b1p, one_minus_b2p, eps):
    """Keras Lamb's update direction from the slots (b1p = b1^t, b2p = b2^t):

        u = (m / (1 - b1p)) / (sqrt(v / (1 - b2p)) + eps)
    """
    return (m / one_minus_b1p) / (math.sqrt(v / one_minus_b2p) + eps)


def lamb_ratio_element(w_sq, u_sq, one):
    """Keras Lamb's trust ratio of a tensor from its sums of w^2 and u^2:
    ||w|| / ||u|| where both are > 0, else 1 (a NaN norm gives 1)."""
    w_norm = math.sqrt(w_sq)
    u_norm = math.sqrt(u_sq)
    if w_norm > 0 and u_norm > 0:
        return w_norm / u_norm
    return one


def lamb_step_element(w, u, r, lr):
    """Keras Lamb's step, given the tensor's ratio: w = w - (r * lr) * u."""
    return w - (r * lr) * u


# ---- rule table and dispatcher ---------------------------------------------

(SGD, SGD_MOMENTUM, SGD_NESTEROV, ADAM, ADAM_AMSGRAD, RMSPROP, RMSPROP_MOMENTUM,
 RMSPROP_CENTERED, RMSPROP_CENTERED_MOMENTUM, ADAGRAD, ADAMAX, NADAM, LION,
 ADADELTA, FTRL, LAMB, SCHEDULE_FREE_ADAMW) = range(17)

# The dispatchers' refusal of a code no rule has (a constant: Numba raises
# it from compiled code).
UNKNOWN_CODE = "unknown update rule code: not the code of a rule of _updates.RULES"

# Most step scalars of any rule (nadam's); sc[0] is always lr.
NUM_SCALARS = 9
MAX_SLOTS = 3

Rule = collections.namedtuple("Rule", "name code slots hyper scalars trust_ratio")
Rule.__doc__ = ("name; code (the dispatcher's); slots: slot names in order; "
                "hyper: hyperparameter names in order; scalars(lr, step, hyper, acc) "
                "-> tuple of step scalars in numpy type acc, lr first; trust_ratio: "
                "a two-phase rule (`trust_elements`), not one of `rule_element`. "
                "slots, hyper and trust_ratio are the rule's row of "
                "normopt.header_tables.RULES.")


def _rule(name, code, scalars):
    """The Rule of `name`: its dispatcher code and scalars, its facts from
    the header's table."""
    facts = header_tables.RULES[name]
    return Rule(name, code, facts.slots, facts.hyper, scalars, facts.trust_ratio)


def sgd_scalars(lr, step, hyper, acc):
    """(lr,) of plain SGD."""
    return (acc(lr),)


def momentum_scalars(lr, step, hyper, acc):
    """(lr, mu) of SGD with momentum / nesterov: the Python floats cast to A."""
    (momentum,) = hyper
    return acc(lr), acc(momentum)


def adam_scalars(lr, step, hyper, acc):
    """(lr, alpha, 1 - b1, 1 - b2, eps) of Adam / amsgrad: 1 - b in double then
    cast; alpha = lr * sqrt(1 - b2^t) / (1 - b1^t) in A, b and t cast to A
    (as AdamRule's constructor in csrc/normopt/update_rules.h)."""
    beta_1, beta_2, epsilon = hyper
    one, b1, b2, t = acc(1), acc(beta_1), acc(beta_2), acc(step)
    alpha = acc(lr) * np.sqrt(one - b2**t) / (one - b1**t)
    return acc(lr), acc(alpha), acc(1.0 - beta_1), acc(1.0 - beta_2), acc(epsilon)


def rmsprop_scalars(lr, step, hyper, acc):
    """(lr, rho, 1 - rho, eps, momentum) of every RMSprop variant: 1 - rho in
    double then cast, the rest cast to A (momentum 0 when the variant has none)."""
    rho, epsilon = hyper[:2]
    momentum = hyper[2] if len(hyper) > 2 else 0.0
    return acc(lr), acc(rho), acc(1.0 - rho), acc(epsilon), acc(momentum)


def adagrad_scalars(lr, step, hyper, acc):
    """(lr, eps) of Adagrad."""
    (epsilon,) = hyper
    return acc(lr), acc(epsilon)


def adamax_scalars(lr, step, hyper, acc):
    """(lr, 1 - b1, b2, 1 - b1p, eps) of Adamax: 1 - b1 in double then cast;
    b1p = A(b1)^A(t) and 1 - b1p in A."""
    beta_1, beta_2, epsilon = hyper
    one, b1, t = acc(1), acc(beta_1), acc(step)
    return acc(lr), acc(1.0 - beta_1), acc(beta_2), one - b1**t, acc(epsilon)


def nadam_scalars(lr, step, hyper, acc):
    """(lr, 1 - b1, 1 - b2, u_t1, 1 - up1, 1 - u_t, 1 - up, 1 - b2p, eps) of
    Nadam, all in A from b1 = A(beta_1), b2 = A(beta_2), t = A(step):

        u_t  = b1 * (1 - 0.5 * d^t)          u_t1 = b1 * (1 - 0.5 * d^(t+1))
        d    = A(float32(0.96))              (Keras casts 0.96 through float32)
        up   = A(u_product)                  up1  = up * u_t1
        b2p  = b2^t                          1 - b1, 1 - b2 in A

    u_product is Keras's `_u_product` after this step's update: the product
    over steps s <= t of beta_1 * (1 - 0.5 * 0.96^s).
    """
    beta_1, beta_2, epsilon, u_product = hyper
    # numpy scalars of one type: every operation below stays in A
    # 0.96 rounded through float32, as Keras's ops.cast(0.96, dtype) does.
    one, half, decay = acc(1), acc(0.5), acc(np.float32(0.96))
    b1, b2, t, t1 = acc(beta_1), acc(beta_2), acc(step), acc(step + 1)
    u_t = b1 * (one - half * decay**t)
    u_t1 = b1 * (one - half * decay**t1)
    up = acc(u_product)
    up1 = up * u_t1
    return (acc(lr), one - b1, one - b2, u_t1, one - up1, one - u_t, one - up,
            one - b2**t, acc(epsilon))


def lion_scalars(lr, step, hyper, acc):
    """(lr, b1, 1 - b1, b2, 1 - b2) of Lion: b = A(beta), 1 - b in A."""
    beta_1, beta_2 = hyper
    one, b1, b2 = acc(1), acc(beta_1), acc(beta_2)
    return acc(lr), b1, one - b1, b2, one - b2


def adadelta_scalars(lr, step, hyper, acc):
    """(lr, rho, 1 - rho, eps) of Adadelta, 1 - rho in double (Keras: Python)."""
    rho, epsilon = hyper
    return acc(lr), acc(rho), acc(1.0 - rho), acc(epsilon)


def ftrl_scalars(lr, step, hyper, acc):
    """(lr, -lr_power, l1, -l1, 2 * (l2 + beta / (2 * lr)), 2 * l2_shrinkage) of
    Ftrl: l2 + beta / (2 lr) in A (Keras: with the lr tensor), 2 * shrinkage
    in double (Keras: Python)."""
    lr_power, l1, l2, shrinkage, beta = hyper
    two, a_lr = acc(2), acc(lr)
    return (a_lr, acc(-lr_power), acc(l1), -acc(l1),
            two * (acc(l2) + acc(beta) / (two * a_lr)), acc(2 * shrinkage))


def lamb_scalars(lr, step, hyper, acc):
    """(lr, 1 - b1, 1 - b2, 1 - b1p, 1 - b2p, eps, 1) of Lamb: 1 - b in
    double then cast (Keras: Python); b1p = A(b1)^A(t), b2p likewise and
    1 - b1p, 1 - b2p in A (Keras: in the variable's dtype)."""
    beta_1, beta_2, epsilon = hyper
    one, t = acc(1), acc(step)
    return (acc(lr), acc(1.0 - beta_1), acc(1.0 - beta_2), one - acc(beta_1)**t,
            one - acc(beta_2)**t, acc(epsilon), one)


def schedule_free_adamw_scalars(lr, step, hyper, acc):
    """(lr, lr_t, b1, 1 - b1, 1 - b2, 1 - b2p, eps, 1/t, 1 - 1/t) of
    ScheduleFreeAdamW, all in A as Keras forms them in the variable's dtype:
    lr_t = lr * min(t / warmup_steps, 1) when warmup_steps > 0, b2p = b2^t.
    lr (unwarmed) stays first: the decay uses it."""
    beta_1, beta_2, epsilon, warmup_steps = hyper
    one, t, a_lr, b1, b2 = acc(1), acc(step), acc(lr), acc(beta_1), acc(beta_2)
    lr_t = a_lr * min(t / acc(warmup_steps), one) if warmup_steps > 0 else a_lr
    weight = one / t
    return (a_lr, lr_t, b1, one - b1, one - b2, one - b2**t, acc(epsilon), weight,
            one - weight)


RULES = {r.name: r for r in (
    _rule("sgd", SGD, sgd_scalars),
    _rule("sgd_momentum", SGD_MOMENTUM, momentum_scalars),
    _rule("sgd_nesterov", SGD_NESTEROV, momentum_scalars),
    _rule("adam", ADAM, adam_scalars),
    _rule("adam_amsgrad", ADAM_AMSGRAD, adam_scalars),
    _rule("rmsprop", RMSPROP, rmsprop_scalars),
    _rule("rmsprop_momentum", RMSPROP_MOMENTUM, rmsprop_scalars),
    _rule("rmsprop_centered", RMSPROP_CENTERED, rmsprop_scalars),
    _rule("rmsprop_centered_momentum", RMSPROP_CENTERED_MOMENTUM, rmsprop_scalars),
    _rule("adagrad", ADAGRAD, adagrad_scalars),
    _rule("adamax", ADAMAX, adamax_scalars),
    _rule("nadam", NADAM, nadam_scalars),
    _rule("lion", LION, lion_scalars),
    _rule("adadelta", ADADELTA, adadelta_scalars),
    _rule("ftrl", FTRL, ftrl_scalars),
    # the C++ rule's sqrt variant (lr_power -0.5); the reference keeps **
    _rule("ftrl_sqrt", FTRL, ftrl_scalars),
    _rule("lamb", LAMB, lamb_scalars),
    _rule("schedule_free_adamw", SCHEDULE_FREE_ADAMW, schedule_free_adamw_scalars),
)}
RULE_NAMES = tuple(RULES)


def get_rule(rule):
    """The Rule of a rule name; ValueError naming the known ones."""
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"unknown update rule {rule!r}; expected one of {list(RULE_NAMES)}")
    return RULES[rule]


def step_scalars(rule, lr, step, hyper, acc):
    """Checks `step` and `hyper` for rule `rule` (a name) and returns (Rule,
    its step scalars): a tuple of NUM_SCALARS numpy `acc` scalars, zero-padded,
    which the kernels take by value (no device copy per launch)."""
    spec = get_rule(rule)
    try:
        hyper = tuple(hyper)
    except TypeError:
        raise ValueError(f"rule {rule!r}: hyper must be a sequence "
                         f"{spec.hyper}, got {hyper!r}") from None
    if len(hyper) != len(spec.hyper):
        raise ValueError(f"rule {rule!r} takes {len(spec.hyper)} hyperparameters "
                         f"{spec.hyper}, got {len(hyper)}: {hyper!r}")
    try:
        hyper = tuple(float(h) for h in hyper)
    except (TypeError, ValueError):
        raise ValueError(f"rule {rule!r}: hyperparameters {spec.hyper} must be "
                         f"numbers, got {hyper!r}") from None
    if isinstance(step, (bool, np.bool_)) or not _is_integral(step) or step < 1:
        raise ValueError(f"rule {rule!r}: step must be an integer >= 1 "
                         f"(iterations + 1), got {step!r}")
    values = tuple(acc(x) for x in spec.scalars(float(lr), int(step), hyper, acc))
    return spec, values + (acc(0),) * (NUM_SCALARS - len(values))


def _is_integral(x):
    try:
        return float(x) == int(x)
    except (TypeError, ValueError, OverflowError):
        return False


def rule_element(jit):
    """element(code, w, s0, s1, s2, g, sc) -> (w, s0, s1, s2): the rule of
    `code` on one element, slots in the rule's order (unused ones returned as
    given), sc its step scalars (`step_scalars`); any other code (a
    trust-ratio rule's included) is a ValueError. Compiled, with the family
    rules, by `jit`: numba.njit for numba_cpu, cuda.jit(device=True) for
    numba_cuda."""
    sgd, adam, rmsprop = jit(sgd_element), jit(adam_element), jit(rmsprop_element)
    adagrad, adamax = jit(adagrad_element), jit(adamax_element)
    nadam, lion, adadelta = jit(nadam_element), jit(lion_element), jit(adadelta_element)
    ftrl, schedule_free_adamw = jit(ftrl_element), jit(schedule_free_adamw_element)

    def element(code, w, s0, s1, s2, g, sc):
        if code < SGD:
            raise ValueError(UNKNOWN_CODE)
        if code <= SGD_NESTEROV:
            w, s0 = sgd(w, s0, g, sc[0], sc[1], code != SGD, code == SGD_NESTEROV)
        elif code <= ADAM_AMSGRAD:
            w, s0, s1, s2 = adam(w, s0, s1, s2, g, sc[1], sc[2], sc[3], sc[4],
                                 code == ADAM_AMSGRAD)
        elif code <= RMSPROP_CENTERED_MOMENTUM:
            centered = code == RMSPROP_CENTERED or code == RMSPROP_CENTERED_MOMENTUM
            use_momentum = code == RMSPROP_MOMENTUM or code == RMSPROP_CENTERED_MOMENTUM
            # slots: (velocity, [average_gradient], [momentum])
            ag = s1 if centered else s0
            mom = s2 if centered else s1
            w, s0, ag, mom = rmsprop(w, s0, ag, mom, g, sc[0], sc[1], sc[2], sc[3], sc[4],
                                     centered, use_momentum)
            if centered:
                s1 = ag
                s2 = mom
            else:
                s1 = mom
        elif code == ADAGRAD:
            w, s0 = adagrad(w, s0, g, sc[0], sc[1])
        elif code == ADAMAX:
            w, s0, s1 = adamax(w, s0, s1, g, sc[0], sc[1], sc[2], sc[3], sc[4])
        elif code == NADAM:
            w, s0, s1 = nadam(w, s0, s1, g, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5],
                              sc[6], sc[7], sc[8])
        elif code == LION:
            w, s0 = lion(w, s0, g, sc[0], sc[1], sc[2], sc[3], sc[4])
        elif code == ADADELTA:
            w, s0, s1 = adadelta(w, s0, s1, g, sc[0], sc[1], sc[2], sc[3])
        elif code == SCHEDULE_FREE_ADAMW:
            w, s0, s1 = schedule_free_adamw(w, s0, s1, g, sc[1], sc[2], sc[3], sc[4], sc[5],
                                            sc[6], sc[7], sc[8])
        elif code == FTRL:
            w, s0, s1 = ftrl(w, s0, s1, g, sc[0], sc[1], sc[2], sc[3], sc[4], sc[5])
        else:
            raise ValueError(UNKNOWN_CODE)
        return w, s0, s1, s2

    return jit(element)


def trust_elements(jit):
    """(moments, direction, ratio, step) of the trust-ratio rules, each
    dispatched on the rule's code and compiled, with the family rules, by
    `jit`; slots in the rule's order (unused ones returned as given), sc the
    step scalars (`step_scalars`):

        moments(code, s0, s1, s2, g, sc) -> (s0, s1, s2)   the slots' update
        direction(code, s0, s1, s2, sc) -> u               of the updated slots
        ratio(code, w_sq, u_sq, sc) -> r                   from a tensor's sums
        step(code, w, s0, s1, s2, r, sc) -> w              w decayed, s updated

    A code of no trust-ratio rule is a ValueError.
    """
    lamb_moments, lamb_direction = jit(lamb_moments_element), jit(lamb_direction_element)
    lamb_ratio, lamb_step = jit(lamb_ratio_element), jit(lamb_step_element)

    def moments(code, s0, s1, s2, g, sc):
        if code != LAMB:
            raise ValueError(UNKNOWN_CODE)
        s0, s1 = lamb_moments(s0, s1, g, sc[1], sc[2])
        return s0, s1, s2

    def direction(code, s0, s1, s2, sc):
        if code != LAMB:
            raise ValueError(UNKNOWN_CODE)
        return lamb_direction(s0, s1, sc[3], sc[4], sc[5])

    direction = jit(direction)

    def ratio(code, w_sq, u_sq, sc):
        if code != LAMB:
            raise ValueError(UNKNOWN_CODE)
        return lamb_ratio(w_sq, u_sq, sc[6])

    def step(code, w, s0, s1, s2, r, sc):
        if code != LAMB:
            raise ValueError(UNKNOWN_CODE)
        return lamb_step(w, direction(code, s0, s1, s2, sc), r, sc[0])

    return jit(moments), direction, jit(ratio), jit(step)
