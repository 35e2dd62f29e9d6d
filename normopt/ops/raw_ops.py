"""The raw compiled ops (csrc/ops), as thin Python functions.

Every list holds N tensors of one dtype in {float16, bfloat16, float32,
float64}; `acc` is float64 for float64 and float32 otherwise. Float
hyperparameters go to the ops as float64 scalar inputs: float64 runs see
them unrounded, and new values never retrace. With s the per-tensor scale,

    normalize: s = 1 / norm(g)
    clip:      s = clipnorm / norm(g) if norm(g) >= clipnorm else 1
    adaptive:  clip with clipnorm = clip_factor * max(norm(w), weight_eps)
               (`apply` only: `clipnorm` holds clip_factor, norm(w) is the
               variable's at the same granularity)

A norm is taken per tensor, per unit (each index of the last axis, over all
other axes) or over all gradients together: `granularity` "tensor", "unit"
or "global". `excluded` lists the indices of gradients that pass unscaled
and stay out of a global norm.

`kind` is a built-in norm name or alias, or "precomputed" (scale and apply
only): then `norms` (Tensor[N] of acc) holds the norms to use. The norms are
defined in csrc/normopt/norm_stats.h, the update rules in
csrc/normopt/update_rules.h.

`apply` also takes tf.IndexedSlices gradients (granularity "tensor" or
"global"; on a GPU "tensor"): the op reads their deduplicated rows and
indices (`sparse_rows`) as the dense tensor they stand for, without building
it. The GPU kernel reads the indices from host memory (a copy from the
device, which waits for the deduplication).

The ops that scale also return `grad_norms` (Tensor[N] of acc): the L2 norm
sqrt(sum g_i^2) of every gradient as given, from the statistics the op reads
for its own norm (no second pass over the gradients).
"""

import tensorflow as tf

from normopt import normalizations
from normopt.ops import library, scale_math

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
    return scale_math.as_scalar(value, "float64")


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
        Tacc=tf.as_dtype(scale_math.accumulation_dtype(dtype)),
    )


def _kinds_attr(kinds, count):
    """The ops' `kinds` attr: one built-in name per gradient, or [] (every
    gradient takes `kind`)."""
    if kinds is None:
        return []
    kinds = [normalizations.canonical_name(k) for k in kinds]
    if len(kinds) != count:
        raise ValueError(f"normopt: `kinds` must hold one norm per gradient ({count}), "
                         f"got {len(kinds)}")
    return kinds


def scale(grads, kind, mode, clipnorm, epsilon, norms=None, granularity="tensor",
          excluded=(), kinds=None):
    """[g_i * s_i], the product formed in acc and cast back to the dtype."""
    return scale_and_norms(grads, kind, mode, clipnorm, epsilon, norms,
                           granularity, excluded, kinds)[0]


def scale_and_norms(grads, kind, mode, clipnorm, epsilon, norms=None,
                    granularity="tensor", excluded=(), kinds=None):
    """([g_i * s_i], grad_norms): `scale`, and the L2 norm of every g_i.
    `kinds`: one norm per gradient (statistics norms), in one call."""
    grads, dtype = _common_dtype(grads)
    acc = tf.as_dtype(scale_math.accumulation_dtype(dtype))
    return _ops().normopt_scale(
        grads=grads,
        norms=_norms_input(kind, norms, acc),
        clipnorm=_f64(clipnorm),
        epsilon=_f64(epsilon),
        kind=_kind_name(kind),
        kinds=_kinds_attr(kinds, len(grads)),
        mode=mode,
        granularity=granularity,
        excluded=list(excluded),
    )


def sparse_rows(grad):
    """(values, indices) of IndexedSlices `grad` for the apply op: its rows
    with duplicate indices summed, and their indices as int64, each once (in
    order of first appearance; the op sorts them)."""
    from normopt.ops import tf_backend

    values, indices = tf_backend.deduplicate(grad)
    return values, tf.cast(indices, tf.int64)


def _dense_rows(grad, variable):
    """The number of rows of the dense tensor IndexedSlices `grad` stands
    for, as int64: the variable's first dimension where known, else from
    dense_shape."""
    shape = getattr(variable, "shape", None)
    if shape is not None and len(shape) > 0 and shape[0] is not None:
        return tf.constant(int(shape[0]), tf.int64)
    return tf.cast(grad.dense_shape[0], tf.int64)


def apply(rule, variables, slots, grads, *, lr, step, hyper, decay, kind,
          mode, clipnorm, epsilon, norms=None, granularity="tensor",
          excluded=(), weight_eps=0.0, kinds=None):
    """`apply_step` without spectral vectors: returns grad_norms."""
    return apply_step(rule, variables, slots, grads, lr=lr, step=step, hyper=hyper,
                      decay=decay, kind=kind, mode=mode, clipnorm=clipnorm,
                      epsilon=epsilon, norms=norms, granularity=granularity,
                      excluded=excluded, weight_eps=weight_eps, kinds=kinds)[0]


def apply_step(rule, variables, slots, grads, *, lr, step, hyper, decay, kind,
               mode, clipnorm, epsilon, norms=None, granularity="tensor",
               excluded=(), weight_eps=0.0, kinds=None, spectral_vectors=()):
    """One step of update `rule` (csrc/normopt/update_rules.h) in place.

    `slots` is slot-major: one list per slot of the rule, each holding that
    slot of every variable (Adam: [ms, vs]). `hyper` is the rule's
    hyperparameters after lr and step (Adam: beta_1, beta_2, epsilon), as
    Python floats or scalar tensors; `step` is t = iterations + 1. First
    w -= w * decay_i * lr, then the rule with g' = g * s_i. Returns
    (grad_norms, new spectral vectors): the L2 norm of every g_i (before
    the scale), and the next values of `spectral_vectors`. A gradient may be
    a tf.IndexedSlices (`sparse_rows`).

    `kinds`: one norm per gradient (one call for several norms; `kind` is
    then not read). A matrix norm ("spectral") measures each dense gradient
    of two or more axes that is not excluded as a matrix, from its
    persistent vector: `spectral_vectors` holds one per such gradient (its
    last axis's length, acc), in gradient order, and in mode "adaptive" one
    per such variable after them (step_plan.spectral_indices).
    """
    grads = list(grads)
    sparse = [i for i, g in enumerate(grads) if isinstance(g, tf.IndexedSlices)]
    indices, dense_rows = [], []
    for i in sparse:
        dense_rows.append(_dense_rows(grads[i], variables[i]))
        grads[i], rows = sparse_rows(grads[i])
        indices.append(rows)
    grads, dtype = _common_dtype(grads)
    acc = tf.as_dtype(scale_math.accumulation_dtype(dtype))
    hyper = [_f64(h) for h in hyper]
    return _ops().normopt_apply(
        var=[_handle(v) for v in variables],
        slots=[_handle(s) for slot in slots for s in slot],
        grad=grads,
        indices=indices,
        dense_rows=tf.stack(dense_rows) if dense_rows else tf.zeros([0], tf.int64),
        lr=_f64(lr),
        step=_f64(step),
        hyper=tf.stack(hyper) if hyper else tf.zeros([0], tf.float64),
        decay=tf.cast(decay, acc),
        norms=_norms_input(kind, norms, acc),
        clipnorm=_f64(clipnorm),
        epsilon=_f64(epsilon),
        weight_eps=_f64(weight_eps),
        rule=rule,
        kind=_kind_name(kind),
        mode=mode,
        granularity=granularity,
        excluded=list(excluded),
        sparse=sparse,
        kinds=_kinds_attr(kinds, len(grads)),
        spectral_vectors=[tf.cast(v, acc) for v in spectral_vectors],
    )


def apply_sgd(variables, momenta, grads, *, lr, momentum, nesterov, decay,
              kind, mode, clipnorm, epsilon, norms=None):
    """Keras SGD step in place (`apply` with sgd, sgd_momentum or
    sgd_nesterov); `momenta` empty for plain SGD, which needs momentum == 0.
    Returns grad_norms.
    """
    if not momenta:
        if isinstance(momentum, (int, float)) and momentum != 0:
            raise ValueError(
                f"normopt: momentum={momentum} needs one momentum slot per "
                "variable, got none")
        rule, slots, hyper = "sgd", [], []
    else:
        rule = "sgd_nesterov" if nesterov else "sgd_momentum"
        slots, hyper = [momenta], [momentum]
    return apply(rule, variables, slots, grads, lr=lr, step=1.0, hyper=hyper,
                 decay=decay, kind=kind, mode=mode, clipnorm=clipnorm,
                 epsilon=epsilon, norms=norms)


def apply_adam(variables, ms, vs, vhats, grads, *, lr, beta_1, beta_2,
               adam_epsilon, step, decay, kind, mode, clipnorm, epsilon,
               norms=None):
    """Keras Adam/AdamW step in place (`apply` with adam, or adam_amsgrad
    when `vhats` is not empty). Returns grad_norms."""
    rule = "adam_amsgrad" if vhats else "adam"
    slots = [ms, vs] + ([vhats] if vhats else [])
    return apply(rule, variables, slots, grads, lr=lr, step=step,
                 hyper=[beta_1, beta_2, adam_epsilon], decay=decay, kind=kind,
                 mode=mode, clipnorm=clipnorm, epsilon=epsilon, norms=norms)
