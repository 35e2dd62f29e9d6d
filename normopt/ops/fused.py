"""Thin Python wrappers over the raw compiled ops (csrc/ops).

Every list holds N tensors of one dtype in {float16, bfloat16, float32,
float64}; `acc` is float64 for float64 and float32 otherwise. Float
hyperparameters go to the ops as float64 scalar inputs: float64 runs see
them unrounded, and new values never retrace. With s the per-tensor scale,

    normalize: s = 1 / norm(g)
    clip:      s = clipnorm / norm(g) if norm(g) >= clipnorm else 1

`kind` is a built-in norm name or alias, or "precomputed" (scale and apply
only): then `norms` (Tensor[N] of acc) holds the norms to use. The norms and
update formulas themselves are documented on the ops (register_ops.cc).
"""

import tensorflow as tf

from normopt import normalizations
from normopt.ops import library

PRECOMPUTED = "precomputed"


def _ops():
    module = library.load()
    if module is None:
        raise RuntimeError(
            "normopt: the compiled op library is not loaded: "
            f"{library.status()['reason']}"
        )
    return module


def _f64(value):
    """A float64 scalar tensor (a Python float goes in unrounded)."""
    return normalizations.as_scalar(value, tf.float64)


def _common_dtype(grads):
    grads = [tf.convert_to_tensor(g) for g in grads]
    if not grads:
        raise ValueError("normopt: the gradient list is empty")
    return grads, grads[0].dtype


def _kind_name(kind):
    return kind if kind == PRECOMPUTED else normalizations.canonical_name(kind)


def _norms_input(kind, norms, acc):
    if kind == PRECOMPUTED:
        if norms is None:
            raise ValueError("normopt: kind='precomputed' needs `norms`")
        return tf.cast(tf.convert_to_tensor(norms), acc)
    return tf.zeros([0], acc)


def _handle(variable):
    """The resource handle of a Keras or tf variable (a handle passes as is)."""
    return getattr(variable, "handle", variable)


def norms(grads, kind, epsilon):
    """Tensor[N] of acc: norm(g_i) + epsilon of the built-in `kind`."""
    grads, dtype = _common_dtype(grads)
    return _ops().normopt_norms(
        grads=grads,
        epsilon=_f64(epsilon),
        kind=_kind_name(kind),
        Tacc=normalizations.accumulation_dtype(dtype),
    )


def scale(grads, kind, mode, clipnorm, epsilon, norms=None):
    """[g_i * s_i], the product formed in acc and cast back to the dtype."""
    grads, dtype = _common_dtype(grads)
    acc = normalizations.accumulation_dtype(dtype)
    return _ops().normopt_scale(
        grads=grads,
        norms=_norms_input(kind, norms, acc),
        clipnorm=_f64(clipnorm),
        epsilon=_f64(epsilon),
        kind=_kind_name(kind),
        mode=mode,
    )


def apply_sgd(variables, momenta, grads, *, lr, momentum, nesterov, decay,
              kind, mode, clipnorm, epsilon, norms=None):
    """Keras SGD step in place; `momenta` empty when momentum == 0.

    w -= w * decay_i * lr; then w -= lr * g', or with momentum
    m = momentum * m - lr * g' and w += m (nesterov: w += momentum * m - lr * g').
    """
    grads, dtype = _common_dtype(grads)
    acc = normalizations.accumulation_dtype(dtype)
    return _ops().normopt_apply_sgd(
        var=[_handle(v) for v in variables],
        momentum_slot=[_handle(m) for m in momenta],
        grad=grads,
        lr=_f64(lr),
        momentum=_f64(momentum),
        decay=tf.cast(decay, acc),
        norms=_norms_input(kind, norms, acc),
        clipnorm=_f64(clipnorm),
        epsilon=_f64(epsilon),
        kind=_kind_name(kind),
        mode=mode,
        nesterov=bool(nesterov),
    )


def apply_adam(variables, ms, vs, vhats, grads, *, lr, beta_1, beta_2,
               adam_epsilon, step, decay, kind, mode, clipnorm, epsilon,
               norms=None):
    """Keras Adam/AdamW step in place; `vhats` empty unless amsgrad.

    w -= w * decay_i * lr; alpha = lr * sqrt(1 - b2^t) / (1 - b1^t), t = step;
    m += (g' - m)(1 - b1); v += (g'^2 - v)(1 - b2); amsgrad vhat = max(vhat, v);
    w -= alpha * m / (sqrt(v or vhat) + adam_epsilon).
    """
    grads, dtype = _common_dtype(grads)
    acc = normalizations.accumulation_dtype(dtype)
    return _ops().normopt_apply_adam(
        var=[_handle(v) for v in variables],
        m=[_handle(m) for m in ms],
        v=[_handle(v) for v in vs],
        vhat=[_handle(h) for h in vhats],
        grad=grads,
        lr=_f64(lr),
        beta_1=_f64(beta_1),
        beta_2=_f64(beta_2),
        adam_epsilon=_f64(adam_epsilon),
        step=_f64(step),
        decay=tf.cast(decay, acc),
        norms=_norms_input(kind, norms, acc),
        clipnorm=_f64(clipnorm),
        epsilon=_f64(epsilon),
        kind=_kind_name(kind),
        mode=mode,
    )
