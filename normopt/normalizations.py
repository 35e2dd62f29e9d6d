"""Per-tensor gradient norms: the built-ins and the registry of custom ones.

The definition of every built-in norm lives in `csrc/normopt/norm_stats.h`;
this module is its TensorFlow transcription, checked against it (and against
an independent NumPy reference) by the tests. Each built-in is a function of
one-pass statistics of the gradient g with n elements, eps added once:

    l1        sum|g| + eps
    l2        sqrt(sum g^2) + eps
    l1_l2     (sum|g| + sqrt(sum g^2)) / 2 + eps
    avg_l1    mean|g| + eps
    avg_l2    sqrt(mean g^2) + eps
    avg_l1_l2 (mean|g| + sqrt(mean g^2)) / 2 + eps
    max       max|g| + eps          (alias: linf)
    min_max   (max|g| + min|g|) / 2 + eps
    std       sqrt(mean (g - mean g)^2) + eps   (population std)

Averages over an empty tensor are 0, so every norm of an empty tensor is eps.

Overflow: every norm is positively homogeneous (norm0(c g) = c norm0(g),
norm0 without eps). When the plain statistics overflow although every
element is finite, the norm is recomputed from the statistics of g * 2^-k,
k = `rescue_exponent(max|g|)`, as norm0(g * 2^-k) * 2^k + eps (the rescue of
norm_stats.h); only such a tensor pays that second read (a tf.cond).

A custom normalization is any callable `fn(grad) -> norm` (eps included),
registered by name with `register_normalization`.
"""

import threading

import keras
import tensorflow as tf

from normopt import header_tables

# The header's norm table (normopt.header_tables): names in code order, and
# aliases.
BUILTIN_NORMALIZATIONS = header_tables.NORM_KINDS
ALIASES = header_tables.ALIASES

_lock = threading.Lock()
_custom = {}


def accumulation_dtype(dtype):
    """float64 for float64 gradients, float32 for everything narrower."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def widest_accumulation_dtype(dtypes):
    """The accumulation dtype of a norm over gradients of all `dtypes`
    together: float64 if any is float64, else float32."""
    accs = {accumulation_dtype(d) for d in dtypes}
    return tf.float64 if tf.float64 in accs else tf.float32


def as_scalar(value, dtype):
    """A Python number or tensor as a scalar of `dtype`.

    A Python float goes straight to `dtype` (tf.cast would round it through
    float32 first, which float64 parity cannot afford).
    """
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype=dtype)


def canonical_name(name):
    """The built-in a name refers to (`linf` -> `max`), else the name itself."""
    return ALIASES.get(name, name)


def is_builtin(name):
    return canonical_name(name) in BUILTIN_NORMALIZATIONS


def register_normalization(name, fn, override=False):
    """Registers `fn(grad) -> norm` (eps included) under `name`.

    Re-registering a built-in name (or alias) needs `override=True`; a custom
    name can be registered again freely (the last registration wins).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"A normalization name must be a non-empty string, got {name!r}."
        )
    if not callable(fn):
        raise TypeError(
            f"The normalization function for {name!r} must be callable "
            f"(grad -> norm), got {type(fn).__name__}."
        )
    if (name in BUILTIN_NORMALIZATIONS or name in ALIASES) and not override:
        raise ValueError(
            f"{name!r} is a built-in normalization; pass override=True to "
            "replace it with a custom function."
        )
    with _lock:
        _custom[name] = fn


def unregister_normalization(name):
    """Removes a custom registration (a built-in it overrode comes back)."""
    with _lock:
        _custom.pop(name, None)


def normalization_names():
    """Sorted names of every normalization available now (aliases included)."""
    with _lock:
        custom = set(_custom)
    return sorted(set(BUILTIN_NORMALIZATIONS) | set(ALIASES) | custom)


def custom_function(name):
    """The registered custom function for `name`, or None for a built-in."""
    with _lock:
        return _custom.get(name)


def check_normalization(name):
    """Validates a normalization name, listing what exists when unknown."""
    if not isinstance(name, str):
        raise TypeError(
            f"`normalization` must be a string name, got {type(name).__name__}"
            f". Register a custom function first with "
            "normopt.register_normalization(name, fn)."
        )
    if custom_function(name) is None and not is_builtin(name):
        raise ValueError(
            f"Unknown normalization {name!r}. Available: "
            f"{', '.join(normalization_names())}. A custom one must be "
            "registered with normopt.register_normalization(name, fn) (also "
            "before loading a model saved with it)."
        )
    return name


# The statistics each norm reads: stats_needed of norm_stats.h, as field names.
STATS_NEEDED = {name: header_tables.stats_fields(name) for name in BUILTIN_NORMALIZATIONS}


# Bit layout of the accumulation dtypes, for exact powers of two and
# exponents (XLA-compatible: bitcasts and shifts): int dtype, mantissa bits,
# exponent bias, max exponent (FLT_MAX_EXP / DBL_MAX_EXP).
_FLOAT_LAYOUT = {
    tf.float32: (tf.int32, 23, 127, 128),
    tf.float64: (tf.int64, 52, 1023, 1024),
}


def pow2(k, dtype):
    """2^k in float `dtype` for an integer tensor k of normal powers
    (1 - bias <= k <= bias); mirrors pow2 in norm_stats.h."""
    itype, mant, bias, _ = _FLOAT_LAYOUT[tf.as_dtype(dtype)]
    biased = tf.cast(k, itype) + tf.constant(bias, itype)
    return tf.bitcast(tf.bitwise.left_shift(biased, tf.constant(mant, itype)), dtype)


def rescue_exponent(x):
    """frexp's exponent of x >= 0 clamped to [0, max_exp - 2] (an int32
    tensor); mirrors rescue_exponent in norm_stats.h."""
    itype, mant, bias, max_exp = _FLOAT_LAYOUT[x.dtype]
    bits = tf.bitwise.right_shift(tf.bitcast(x, itype), tf.constant(mant, itype))
    e = tf.cast(tf.bitwise.bitwise_and(bits, tf.constant(2 * bias + 1, itype)), tf.int32)
    return tf.clip_by_value(e - (bias - 1), 0, max_exp - 2)


def gradient_stats(values, total_count=None, needed=None, pre=None, units=None,
                   acc=None):
    """One-pass statistics of a gradient, in its accumulation dtype (or in
    `acc`, at least as wide: a norm over gradients of several dtypes).

    `values` holds the explicit elements; `total_count` (>= their number) is
    the element count of the dense tensor they stand for, the rest being
    zeros (a deduplicated IndexedSlices). Returns a dict with count and those
    of sum_abs, sum_sq, max_abs, min_abs, mean and m2 = sum (g - mean)^2
    named in `needed` (all when None), so a graph holds only what its norm
    reads. With `pre` (a power of two, the rescue pass) the statistics are
    those of values * pre. With `units` (the size of the last axis) every
    statistic is a vector: one per index of the last axis, over all others
    (`total_count` then counts the dense tensor's elements of all units).
    """
    needed = set(needed or ("sum_abs", "sum_sq", "max_abs", "min_abs", "mean", "m2"))
    acc = acc or accumulation_dtype(values.dtype)
    x = tf.reshape(tf.cast(values, acc), [-1] if units is None else [-1, units])
    if pre is not None:
        x = x * pre
    per = 1 if units is None else units
    k = tf.cast(tf.size(x) // per, acc)
    n = k if total_count is None else tf.cast(total_count, acc) / per
    zeros = n - k
    has_values = k > 0
    zero = tf.zeros([] if units is None else [units], acc)
    reduce = dict(axis=None if units is None else 0)
    out = dict(count=n + zero)
    if needed & {"sum_abs", "max_abs", "min_abs"}:
        a = tf.abs(x)
    if "sum_abs" in needed:
        out["sum_abs"] = tf.reduce_sum(a, **reduce)
    if "sum_sq" in needed:
        out["sum_sq"] = tf.reduce_sum(tf.square(x), **reduce)
    if "max_abs" in needed:
        out["max_abs"] = tf.where(has_values, tf.reduce_max(a, **reduce), zero)
    if "min_abs" in needed:
        min_abs = tf.where(has_values, tf.reduce_min(a, **reduce), zero)
        out["min_abs"] = tf.where(zeros > 0, zero, min_abs)
    if needed & {"mean", "m2"}:
        mean = tf.reduce_sum(x, **reduce) / tf.maximum(n, 1)
        out["mean"] = mean
        m2 = tf.reduce_sum(tf.square(x - mean), **reduce)
        if total_count is not None:
            # The implicit zeros' share; skipped when there are none, since
            # 0 * inf (mean^2 above 3.4e38) would be NaN.
            m2 = m2 + tf.where(zeros > 0, zeros * tf.square(mean), zero)
        out["m2"] = m2
    return out


def merge_stats(stats):
    """The statistics of the concatenation of tensors, from each one's
    (scalar) statistics; mirrors merge_stats in norm_stats.h (Chan et al.):
    mean = sum n_i mean_i / N, m2 = sum m2_i + n_i (mean_i - mean)^2."""
    count = tf.add_n([s["count"] for s in stats])
    out = dict(count=count)
    for key, reduce in (("sum_abs", tf.add_n), ("sum_sq", tf.add_n)):
        if key in stats[0]:
            out[key] = reduce([s[key] for s in stats])
    if "max_abs" in stats[0]:
        out["max_abs"] = tf.reduce_max(tf.stack([s["max_abs"] for s in stats]))
    if "min_abs" in stats[0]:
        # an empty tensor reports 0: leave it out of the minimum
        values = tf.stack([tf.where(s["count"] > 0, s["min_abs"], s["min_abs"].dtype.max)
                           for s in stats])
        out["min_abs"] = tf.where(count > 0, tf.reduce_min(values), tf.zeros([], count.dtype))
    if "mean" in stats[0]:
        mean = tf.add_n([s["count"] * s["mean"] for s in stats]) / tf.maximum(count, 1)
        out["mean"] = mean
        out["m2"] = tf.add_n(
            [s["m2"] + s["count"] * tf.square(s["mean"] - mean) for s in stats])
    return out


def finalize_norm(name, s, eps):
    """norm from statistics `s`; mirrors finalize_norm in norm_stats.h."""
    name = canonical_name(name)
    safe_n = tf.maximum(s["count"], 1)
    if name == "l1":
        return s["sum_abs"] + eps
    if name == "l2":
        return tf.sqrt(s["sum_sq"]) + eps
    if name == "l1_l2":
        return (s["sum_abs"] + tf.sqrt(s["sum_sq"])) / 2 + eps
    if name == "avg_l1":
        return s["sum_abs"] / safe_n + eps
    if name == "avg_l2":
        return tf.sqrt(s["sum_sq"] / safe_n) + eps
    if name == "avg_l1_l2":
        return (s["sum_abs"] / safe_n + tf.sqrt(s["sum_sq"] / safe_n)) / 2 + eps
    if name == "max":
        return s["max_abs"] + eps
    if name == "min_max":
        return (s["max_abs"] + s["min_abs"]) / 2 + eps
    if name == "std":
        return tf.sqrt(s["m2"] / safe_n) + eps
    raise ValueError(f"{name!r} is not a built-in normalization")


def builtin_norm(values, name, eps, total_count=None, units=None):
    """Built-in norm `name` of `values` (`total_count` and `units` as in
    gradient_stats) with the rescue pass of norm_stats.h: where the plain
    norm is not finite but max|g| is, norm0(g * 2^-k) * 2^k + eps,
    k = rescue_exponent(max|g|)."""
    needed = STATS_NEEDED[canonical_name(name)]
    acc = accumulation_dtype(values.dtype)
    eps = as_scalar(eps, acc)

    def stats(pre=None):
        return gradient_stats(values, total_count, needed, pre, units)

    return _rescued(name, stats, [values], eps)


def global_norm(grads, name, eps):
    """Built-in norm `name` of all `grads` together, as if concatenated (n
    the total count), with the same rescue as `builtin_norm`. IndexedSlices
    count as the dense tensors they stand for. Gradients of several dtypes
    are all accumulated in the widest one's accumulation dtype (float64 if
    any is float64), which is the dtype of the norm."""
    needed = STATS_NEEDED[canonical_name(name)]
    parts = [_values_and_count(g) for g in grads]
    acc = widest_accumulation_dtype([v.dtype for v, _ in parts])
    eps = as_scalar(keras.config.epsilon() if eps is None else eps, acc)

    def stats(pre=None):
        return merge_stats([gradient_stats(v, n, needed, pre, acc=acc) for v, n in parts])

    return _rescued(name, stats, [v for v, _ in parts], eps)


def _rescued(name, stats, arrays, eps):
    """finalize_norm of stats(), or where not finite (any entry) the rescue
    from stats(pre=2^-k), k from the largest |element| of `arrays`."""
    norm = finalize_norm(name, stats(), eps)
    acc = norm.dtype

    def rescue():
        # a zero appended, so an empty tensor has a maximum
        max_abs = tf.reduce_max(tf.concat(
            [tf.reshape(tf.abs(tf.cast(a, acc)), [-1]) for a in arrays] + [tf.zeros([1], acc)], 0))
        finite = tf.math.is_finite(max_abs)
        k = rescue_exponent(tf.where(finite, max_abs, tf.zeros([], acc)))
        rescued = finalize_norm(name, stats(pow2(-k, acc)), tf.zeros([], acc)) * pow2(k, acc) + eps
        return tf.where(finite & ~tf.math.is_finite(norm), rescued, norm)

    return tf.cond(tf.reduce_all(tf.math.is_finite(norm)), lambda: norm, rescue)


def _values_and_count(grad):
    """(explicit values, dense element count or None) of a gradient."""
    if isinstance(grad, tf.IndexedSlices):
        values, _ = deduplicate(grad)
        return values, tf.reduce_prod(tf.cast(grad.dense_shape, tf.int64))
    return grad, None


def unit_count(grad):
    """Units of `grad` for granularity "unit": the size of its last axis, or
    None (one unit) for a tensor of at most one axis."""
    shape = grad.shape if not isinstance(grad, tf.IndexedSlices) else grad.values.shape
    return int(shape[-1]) if shape.rank is not None and shape.rank >= 2 else None


def tf_norm(grad, name, eps=None, per_unit=False):
    """norm(grad) by name (built-in or registered), in the accumulation dtype.

    An IndexedSlices is measured as the dense tensor it represents (duplicate
    indices summed first). Custom functions see a dense tensor. With
    `per_unit`, a built-in norm is a vector: one norm per index of the last
    axis, over all other axes (a scalar for a tensor of at most one axis).
    """
    eps = keras.config.epsilon() if eps is None else eps
    fn = custom_function(name)
    units = unit_count(grad) if per_unit and fn is None else None
    if isinstance(grad, tf.IndexedSlices):
        if fn is not None:
            grad = tf.convert_to_tensor(grad)
        else:
            values, total = _values_and_count(grad)
            return builtin_norm(values, name, eps, total, units)
    acc = accumulation_dtype(grad.dtype)
    if fn is not None:
        return _custom_norm(name, fn, grad, acc)
    return builtin_norm(grad, name, eps, units=units)


def _custom_norm(name, fn, grad, acc):
    """fn(grad) as a scalar of `acc`; a norm of any other shape is an error."""
    norm = tf.convert_to_tensor(fn(grad))
    if norm.shape.rank is not None and norm.shape.rank != 0:
        raise ValueError(
            f"The normalization {name!r} returned a tensor of shape "
            f"{norm.shape} for a gradient of shape {grad.shape}; a norm must "
            "be a scalar (one number per gradient tensor, e.g. "
            "tf.reduce_sum(...))."
        )
    return tf.cast(tf.ensure_shape(norm, []), acc)


def deduplicate(slices):
    """(values, indices) of an IndexedSlices with duplicate indices summed."""
    unique, position = tf.unique(slices.indices)
    values = tf.math.unsorted_segment_sum(
        slices.values, position, tf.shape(unique)[0]
    )
    return values, unique
