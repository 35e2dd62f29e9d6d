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

A custom normalization is any callable `fn(grad) -> norm` (eps included),
registered by name with `register_normalization`.
"""

import threading

import keras
import tensorflow as tf

BUILTIN_NORMALIZATIONS = (
    "l1",
    "l2",
    "l1_l2",
    "avg_l1",
    "avg_l2",
    "avg_l1_l2",
    "max",
    "min_max",
    "std",
)
ALIASES = {"linf": "max"}

_lock = threading.Lock()
_custom = {}


def accumulation_dtype(dtype):
    """float64 for float64 gradients, float32 for everything narrower."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


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


# The statistics each norm reads; mirrors stats_needed in norm_stats.h.
STATS_NEEDED = {
    "l1": ("sum_abs",),
    "avg_l1": ("sum_abs",),
    "l2": ("sum_sq",),
    "avg_l2": ("sum_sq",),
    "l1_l2": ("sum_abs", "sum_sq"),
    "avg_l1_l2": ("sum_abs", "sum_sq"),
    "max": ("max_abs",),
    "min_max": ("max_abs", "min_abs"),
    "std": ("mean", "m2"),
}


def gradient_stats(values, total_count=None, needed=None):
    """One-pass statistics of a gradient, in its accumulation dtype.

    `values` holds the explicit elements; `total_count` (>= their number) is
    the element count of the dense tensor they stand for, the rest being
    zeros (a deduplicated IndexedSlices). Returns a dict with count and those
    of sum_abs, sum_sq, max_abs, min_abs, mean and m2 = sum (g - mean)^2
    named in `needed` (all when None), so a graph holds only what its norm
    reads.
    """
    needed = set(needed or ("sum_abs", "sum_sq", "max_abs", "min_abs", "mean", "m2"))
    acc = accumulation_dtype(values.dtype)
    x = tf.reshape(tf.cast(values, acc), [-1])
    k = tf.cast(tf.size(x), acc)
    n = k if total_count is None else tf.cast(total_count, acc)
    zeros = n - k
    has_values = k > 0
    out = dict(count=n)
    if needed & {"sum_abs", "max_abs", "min_abs"}:
        a = tf.abs(x)
    if "sum_abs" in needed:
        out["sum_abs"] = tf.reduce_sum(a)
    if "sum_sq" in needed:
        out["sum_sq"] = tf.reduce_sum(tf.square(x))
    if "max_abs" in needed:
        out["max_abs"] = tf.where(has_values, tf.reduce_max(a), tf.zeros([], acc))
    if "min_abs" in needed:
        min_abs = tf.where(has_values, tf.reduce_min(a), tf.zeros([], acc))
        out["min_abs"] = tf.where(zeros > 0, tf.zeros([], acc), min_abs)
    if needed & {"mean", "m2"}:
        mean = tf.reduce_sum(x) / tf.maximum(n, 1)
        out["mean"] = mean
        out["m2"] = tf.reduce_sum(tf.square(x - mean)) + zeros * tf.square(mean)
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


def tf_norm(grad, name, eps=None):
    """norm(grad) by name (built-in or registered), in the accumulation dtype.

    An IndexedSlices is measured as the dense tensor it represents (duplicate
    indices summed first). Custom functions see a dense tensor.
    """
    eps = keras.config.epsilon() if eps is None else eps
    fn = custom_function(name)
    if isinstance(grad, tf.IndexedSlices):
        if fn is not None:
            grad = tf.convert_to_tensor(grad)
        else:
            values, _ = deduplicate(grad)
            total = tf.reduce_prod(tf.cast(grad.dense_shape, tf.int64))
            acc = accumulation_dtype(values.dtype)
            stats = gradient_stats(values, total, STATS_NEEDED[canonical_name(name)])
            return finalize_norm(name, stats, as_scalar(eps, acc))
    acc = accumulation_dtype(grad.dtype)
    if fn is not None:
        return _custom_norm(name, fn, grad, acc)
    stats = gradient_stats(grad, needed=STATS_NEEDED[canonical_name(name)])
    return finalize_norm(name, stats, as_scalar(eps, acc))


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
