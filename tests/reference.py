"""Independent NumPy float64 reference, written from the formulas.

Nothing here imports normopt: these are the definitions in DESIGN.md and the
Keras 3 update rules, spelled out directly, so every path of the library is
checked against the math rather than against itself.
"""

import numpy as np

# norm(g) without eps of a non-empty float64 vector g, a = |g|: the DESIGN.md
# table, one formula per built-in (tests check that these are exactly the
# header's norms).
_FORMULAS = {
    "l1": lambda g, a: a.sum(),
    "l2": lambda g, a: np.sqrt((g * g).sum()),
    "l1_l2": lambda g, a: (a.sum() + np.sqrt((g * g).sum())) / 2,
    "avg_l1": lambda g, a: a.mean(),
    "avg_l2": lambda g, a: np.sqrt((g * g).mean()),
    "avg_l1_l2": lambda g, a: (a.mean() + np.sqrt((g * g).mean())) / 2,
    "max": lambda g, a: a.max(),
    "min_max": lambda g, a: (a.max() + a.min()) / 2,
    "std": lambda g, a: np.sqrt(((g - g.mean()) ** 2).mean()),
}
NORM_NAMES = tuple(_FORMULAS)
ALIASES = {"linf": "max"}
# Norms of the matrix view of a tensor (`spectral`), not functions of its
# elements as a vector: not in NORM_NAMES, which the statistics tests take.
MATRIX_NORM_NAMES = ("spectral",)


def spectral(g, eps=1e-7):
    """The largest singular value of g seen as a matrix (all axes but the
    last as rows, the last as columns) + eps; the l2 norm for at most one
    axis (numpy.linalg.norm(matrix, 2), in float64)."""
    g = np.asarray(g, dtype=np.float64)
    if g.ndim < 2:
        return np.sqrt((g * g).sum()) + eps
    if g.size == 0:
        return eps
    return np.linalg.norm(g.reshape(-1, g.shape[-1]), 2) + eps


def norm(g, name, eps=1e-7):
    """norm(g) + eps for one tensor, as in the DESIGN.md table."""
    g = np.asarray(g, dtype=np.float64).ravel()
    formula = _FORMULAS[ALIASES.get(name, name)]
    if g.size == 0:
        return eps
    return formula(g, np.abs(g)) + eps


def normalize(g, n):
    """NormalizedOptimizer: g / norm(g)."""
    return np.asarray(g, np.float64) / n


def clip(g, n, clipnorm):
    """ClippedOptimizer: g * clipnorm / norm(g) where norm >= clipnorm."""
    g = np.asarray(g, np.float64)
    return g * clipnorm / n if n >= clipnorm else g


def transform(g, name, mode="normalize", clipnorm=1.0, eps=1e-7, norm_fn=None):
    n = norm_fn(g) if norm_fn is not None else norm(g, name, eps)
    return normalize(g, n) if mode == "normalize" else clip(g, n, clipnorm)


class SGD:
    """Keras 3 SGD: m = momentum*m - lr*g; w += m (nesterov: w += momentum*m - lr*g)."""

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=None):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay
        self.m = {}

    def step(self, i, w, g, lr=None):
        lr = self.lr if lr is None else lr
        w = np.asarray(w, np.float64)
        if self.weight_decay:
            w = w - w * self.weight_decay * lr
        if self.momentum == 0:
            return w - lr * g
        m = self.m.get(i, np.zeros_like(w))
        m = self.momentum * m - lr * g
        self.m[i] = m
        if self.nesterov:
            return w + self.momentum * m - lr * g
        return w + m


class Adam:
    """Keras 3 Adam/AdamW (decoupled decay w -= w*wd*lr before the step).

    alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
    m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); vhat = max(vhat, v)
    w -= alpha * m / (sqrt(v or vhat) + epsilon)
    """

    def __init__(self, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None):
        self.lr, self.b1, self.b2, self.eps = lr, beta_1, beta_2, epsilon
        self.amsgrad, self.weight_decay = amsgrad, weight_decay
        self.m, self.v, self.vhat, self.t = {}, {}, {}, {}

    def step(self, i, w, g, lr=None):
        lr = self.lr if lr is None else lr
        w = np.asarray(w, np.float64)
        if self.weight_decay:
            w = w - w * self.weight_decay * lr
        t = self.t.get(i, 0) + 1
        self.t[i] = t
        m = self.m.get(i, np.zeros_like(w))
        v = self.v.get(i, np.zeros_like(w))
        m = m + (g - m) * (1 - self.b1)
        v = v + (g * g - v) * (1 - self.b2)
        self.m[i], self.v[i] = m, v
        if self.amsgrad:
            v = np.maximum(self.vhat.get(i, np.zeros_like(w)), v)
            self.vhat[i] = v
        alpha = lr * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        return w - alpha * m / (np.sqrt(v) + self.eps)


class RMSprop:
    """Keras 3 RMSprop without momentum or centering:
    v = rho*v + (1 - rho)*g^2;  w -= lr * g / sqrt(v + epsilon)."""

    def __init__(self, lr, rho=0.9, epsilon=1e-7):
        self.lr, self.rho, self.eps = lr, rho, epsilon
        self.v = {}

    def step(self, i, w, g, lr=None):
        lr = self.lr if lr is None else lr
        v = self.rho * self.v.get(i, np.zeros_like(g)) + (1 - self.rho) * g * g
        self.v[i] = v
        return np.asarray(w, np.float64) - lr * g / np.sqrt(v + self.eps)


# ---- every update rule of normopt.kernels' generic apply, one step -------
#
# Per rule: its slots (RULE_SLOTS), the hyperparameters the kernel tests use
# (RULE_HYPER: exactly representable in float32, as in helpers.py; nadam's
# u_product is added per step), the Keras optimizer that runs it under a
# wrapper (RULE_KERAS, for tests/test_fused_rules.py) and one float64 step
# (rule_step) of one whole tensor (lamb's trust ratio reads all of it).

RULE_SLOTS = {
    "sgd": (),
    "sgd_momentum": ("momentum",),
    "sgd_nesterov": ("momentum",),
    "adam": ("m", "v"),
    "adam_amsgrad": ("m", "v", "vhat"),
    "rmsprop": ("velocity",),
    "rmsprop_momentum": ("velocity", "momentum"),
    "rmsprop_centered": ("velocity", "average_gradient"),
    "rmsprop_centered_momentum": ("velocity", "average_gradient", "momentum"),
    "adagrad": ("accumulator",),
    "adamax": ("m", "u"),
    "nadam": ("m", "v"),
    "lion": ("m",),
    "adadelta": ("accumulated_grad", "accumulated_delta_var"),
    "ftrl": ("accumulator", "linear"),
    "ftrl_sqrt": ("accumulator", "linear"),
    "lamb": ("m", "v"),
    "schedule_free_adamw": ("momentum", "velocity"),
}


# Slots that hold sums of squares (never negative).
NONNEGATIVE_SLOTS = {"v", "vhat", "u", "velocity", "accumulator", "accumulated_grad",
                     "accumulated_delta_var"}

_B1, _B2, _RHO, _MU, _RMS_MOMENTUM, _LION_B2 = 0.875, 0.998046875, 0.875, 0.875, 0.75, 0.9921875
RULE_HYPER = {
    "sgd": (),
    "sgd_momentum": (_MU,),
    "sgd_nesterov": (_MU,),
    "adam": (_B1, _B2, 1e-7),
    "adam_amsgrad": (_B1, _B2, 1e-7),
    "rmsprop": (_RHO, 1e-7),
    "rmsprop_momentum": (_RHO, 1e-7, _RMS_MOMENTUM),
    "rmsprop_centered": (_RHO, 1e-7),
    "rmsprop_centered_momentum": (_RHO, 1e-7, _RMS_MOMENTUM),
    "adagrad": (1e-7,),
    "adamax": (_B1, _B2, 1e-7),
    "nadam": (_B1, _B2, 1e-7),
    "lion": (_B1, _LION_B2),
    "adadelta": (_RHO, 1e-7),
    "ftrl": (-0.25, 2.0**-10, 2.0**-8, 2.0**-9, 0.25),
    "ftrl_sqrt": (-0.5, 2.0**-10, 2.0**-8, 2.0**-9, 0.25),
    "lamb": (_B1, _B2, 1e-7),
    "schedule_free_adamw": (_B1, _B2, 1e-7, 4.0),
}

# Keras configurations, hyperparameters exactly representable in float32:
# Keras rounds Python floats through float32 in places (ops.cast of a Python
# float), which float64 parity cannot afford.
_K_B1, _K_B2, _K_RHO, _K_EPS, _K_WD = 0.875, 0.96875, 0.75, 2.0**-20, 2.0**-7
RULE_KERAS = {
    "sgd": lambda k: k.SGD(0.05),
    "sgd_momentum": lambda k: k.SGD(0.05, momentum=_K_B1, weight_decay=_K_WD),
    "sgd_nesterov": lambda k: k.SGD(0.05, momentum=_K_B1, nesterov=True),
    "adam": lambda k: k.Adam(0.01, _K_B1, _K_B2, _K_EPS, weight_decay=_K_WD),
    "adam_amsgrad": lambda k: k.AdamW(0.01, beta_1=_K_B1, beta_2=_K_B2, epsilon=_K_EPS,
                                      amsgrad=True),
    "rmsprop": lambda k: k.RMSprop(0.01, rho=_K_RHO, epsilon=_K_EPS),
    "rmsprop_momentum": lambda k: k.RMSprop(0.01, rho=_K_RHO, momentum=0.5, epsilon=_K_EPS,
                                            weight_decay=_K_WD),
    "rmsprop_centered": lambda k: k.RMSprop(0.01, rho=_K_RHO, epsilon=_K_EPS, centered=True),
    "rmsprop_centered_momentum": lambda k: k.RMSprop(0.01, rho=_K_RHO, momentum=0.5,
                                                     epsilon=_K_EPS, centered=True),
    "adagrad": lambda k: k.Adagrad(0.05, epsilon=_K_EPS, weight_decay=_K_WD),
    "adamax": lambda k: k.Adamax(0.01, _K_B1, _K_B2, _K_EPS),
    "nadam": lambda k: k.Nadam(0.01, _K_B1, _K_B2, _K_EPS, weight_decay=_K_WD),
    "lion": lambda k: k.Lion(1e-3, _K_B1, _K_B2, weight_decay=_K_WD),
    "adadelta": lambda k: k.Adadelta(0.5, rho=_K_RHO, epsilon=_K_EPS, weight_decay=_K_WD),
    "ftrl": lambda k: k.Ftrl(0.25, learning_rate_power=-0.25, initial_accumulator_value=0.125,
                             l1_regularization_strength=2.0**-10,
                             l2_regularization_strength=2.0**-8,
                             l2_shrinkage_regularization_strength=2.0**-9, beta=0.25),
    "ftrl_sqrt": lambda k: k.Ftrl(0.25, initial_accumulator_value=0.125,
                                  l1_regularization_strength=2.0**-10,
                                  l2_regularization_strength=2.0**-8,
                                  l2_shrinkage_regularization_strength=2.0**-9, beta=0.25),
    "lamb": lambda k: k.Lamb(0.01, _K_B1, _K_B2, _K_EPS, weight_decay=_K_WD),
    "schedule_free_adamw": lambda k: k.ScheduleFreeAdamW(0.01, _K_B1, _K_B2, _K_EPS,
                                                         warmup_steps=4, weight_decay=_K_WD),
}


# rule -> terms(w, slots, g, lr, step, hyper): the magnitudes of the sums a
# rule forms that its result does not show (a difference of large terms),
# as (terms of w, [terms of each slot]); the tests' error bounds add them.
RULE_TERMS = {
    # linear += g2 - (n^-p - acc^-p) / lr * w: two large powers cancel
    "ftrl": lambda w, s, g, lr, step, h: (
        0.0, [0.0, (np.abs(s[0] + g * g) ** -h[0] + np.abs(s[0]) ** -h[0]) / lr * np.abs(w)]),
}
RULE_TERMS["ftrl_sqrt"] = RULE_TERMS["ftrl"]


# w = (1 - b1) z' + b1 x, x recovered as (w - (1 - b1) z') / b1: the terms
# are w / b1 and both z, whatever w comes out as
def _schedule_free_terms(w, s, g, lr, step, hyper):
    _, (z_new, _) = rule_step("schedule_free_adamw", w, s, g, lr, step, hyper)
    return np.abs(w) / hyper[0] + np.abs(s[0]) + np.abs(z_new), [0.0, 0.0]


RULE_TERMS["schedule_free_adamw"] = _schedule_free_terms


def rule_terms(rule, w, slots, g, lr, step, hyper):
    """RULE_TERMS[rule] of one step, zeros for a rule without an entry."""
    if rule in RULE_TERMS:
        return RULE_TERMS[rule](w, slots, g, lr, step, hyper)
    return 0.0, [0.0] * len(slots)


def nadam_u_product(beta_1, step):
    """Keras Nadam's `_u_product` after step t's update:
    prod over s = 1..t of beta_1 * (1 - 0.5 * 0.96^s)."""
    d = float(np.float32(0.96))  # Keras casts 0.96 through float32
    return float(np.prod([beta_1 * (1.0 - 0.5 * d**s) for s in range(1, step + 1)]))


def rule_step(rule, w, slots, g, lr, step, hyper, wd=0.0):
    """One step of update rule `rule` (Keras 3's update_step) on one tensor,
    in float64: returns (new w, [new slots in the rule's order]). `g` is the
    already normalized/clipped gradient; wd != 0 applies the decoupled decay
    w - w * wd * lr first; `step` is t = iterations + 1."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    s = [np.asarray(x, np.float64) for x in slots]
    assert len(s) == len(RULE_SLOTS[rule]), (rule, len(s))
    t = step
    if wd:
        w = w - w * wd * lr
    if rule == "sgd":
        return w - lr * g, []
    if rule in ("sgd_momentum", "sgd_nesterov"):
        (mu,) = hyper
        m = mu * s[0] - lr * g
        if rule == "sgd_nesterov":
            return w + mu * m - lr * g, [m]
        return w + m, [m]
    if rule in ("adam", "adam_amsgrad"):
        b1, b2, eps = hyper
        m = s[0] + (g - s[0]) * (1 - b1)
        v = s[1] + (g * g - s[1]) * (1 - b2)
        new = [m, v]
        denom = v
        if rule == "adam_amsgrad":
            denom = np.maximum(s[2], v)
            new.append(denom)
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return w - m * alpha / (np.sqrt(denom) + eps), new
    if rule.startswith("rmsprop"):
        rho, eps = hyper[:2]
        centered = "centered" in rule
        v = rho * s[0] + (1 - rho) * g * g
        new = [v]
        if centered:
            ag = rho * s[1] + (1 - rho) * g
            new.append(ag)
            inc = lr * g / np.sqrt(v - ag * ag + eps)
        else:
            inc = lr * g / np.sqrt(v + eps)
        if rule.endswith("momentum"):
            mom = hyper[2] * s[-1] + inc
            new.append(mom)
            return w - mom, new
        return w - inc, new
    if rule == "adagrad":
        (eps,) = hyper
        acc = s[0] + g * g
        return w - lr * g / np.sqrt(acc + eps), [acc]
    if rule == "adamax":
        b1, b2, eps = hyper
        m = s[0] + (g - s[0]) * (1 - b1)
        u = np.maximum(b2 * s[1], np.abs(g))
        return w - lr * m / ((1 - b1**t) * (u + eps)), [m, u]
    if rule == "nadam":
        b1, b2, eps, u_product = hyper
        d = float(np.float32(0.96))  # Keras casts 0.96 through float32
        u_t = b1 * (1 - 0.5 * d**t)
        u_t1 = b1 * (1 - 0.5 * d ** (t + 1))
        up1 = u_product * u_t1
        m = s[0] + (g - s[0]) * (1 - b1)
        v = s[1] + (g * g - s[1]) * (1 - b2)
        m_hat = u_t1 * m / (1 - up1) + (1 - u_t) * g / (1 - u_product)
        v_hat = v / (1 - b2**t)
        return w - m_hat * lr / (np.sqrt(v_hat) + eps), [m, v]
    if rule == "lion":
        b1, b2 = hyper
        return w - lr * np.sign(s[0] * b1 + g * (1 - b1)), [s[0] * b2 + g * (1 - b2)]
    if rule == "adadelta":
        rho, eps = hyper
        acc_grad = rho * s[0] + (1 - rho) * g * g
        delta = -np.sqrt(s[1] + eps) * g / np.sqrt(acc_grad + eps)
        return w + lr * delta, [acc_grad, rho * s[1] + (1 - rho) * delta * delta]
    if rule in ("ftrl", "ftrl_sqrt"):
        lr_power, l1, l2, shrinkage, beta = hyper
        n = s[0] + g * g
        linear = s[1] + (g + 2 * shrinkage * w - (n**-lr_power - s[0]**-lr_power) / lr * w)
        quadratic = n**-lr_power / lr + 2 * (l2 + beta / (2 * lr))
        return (np.clip(linear, -l1, l1) - linear) / quadratic, [n, linear]
    if rule == "schedule_free_adamw":
        b1, b2, eps, warmup = hyper
        lr_t = lr * min(t / warmup, 1.0) if warmup > 0 else lr
        v = s[1] + (g * g - s[1]) * (1 - b2)
        z = s[0] - lr_t * g / (np.sqrt(v / (1 - b2**t)) + eps)
        # x from the updated z: Keras's `momentum_old = momentum.value` is,
        # on TensorFlow, the variable itself, read after its assign_sub
        x = (w - (1 - b1) * z) / b1
        x = (1 - 1 / t) * x + (1 / t) * z
        return (1 - b1) * z + b1 * x, [z, v]
    if rule == "lamb":
        # per tensor: w is the whole (decayed) variable
        b1, b2, eps = hyper
        m = s[0] + (g - s[0]) * (1 - b1)
        v = s[1] + (g * g - s[1]) * (1 - b2)
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        w_norm, u_norm = np.sqrt(np.sum(w * w)), np.sqrt(np.sum(u * u))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        return w - ratio * lr * u, [m, v]
    raise KeyError(rule)
