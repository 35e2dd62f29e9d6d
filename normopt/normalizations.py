"""Per-tensor gradient norms: the built-ins and the registry of custom ones.

The definition of every built-in norm lives in `csrc/normopt/norm_stats.h`;
this module holds its table (names, aliases, the statistics each reads) and
the registry, checked against it (and against an independent NumPy
reference) by the tests. Each built-in is a function of one-pass statistics
of the gradient g with n elements, eps added once:

    l1        sum|g| + eps
    l2        sqrt(sum g^2) + eps
    l1_l2     (sum|g| + sqrt(sum g^2)) / 2 + eps
    avg_l1    mean|g| + eps
    avg_l2    sqrt(mean g^2) + eps
    avg_l1_l2 (mean|g| + sqrt(mean g^2)) / 2 + eps
    max       max|g| + eps          (alias: linf)
    min_max   (max|g| + min|g|) / 2 + eps
    std       sqrt(mean (g - mean g)^2) + eps   (population std)
    spectral  sigma_1(G) + eps, the largest singular value of g seen as the
              matrix G (all axes but the last as rows, the last as
              columns); l2 for a tensor of at most one axis
              (`normopt.ops.spectral_math`: not a statistic, granularity
              "tensor" only)

Averages over an empty tensor are 0, so every norm of an empty tensor is eps.

The statistics, norms and their overflow rescue are written once, in
keras.ops, in `normopt.ops.scale_math`; `tf_norm` measures a TensorFlow
gradient (dense or sparse) with them.

A custom normalization is any callable `fn(grad) -> norm` (eps included),
registered by name with `register_normalization`.
"""

import threading

from normopt import header_tables

# The header's norm table (normopt.header_tables): names in code order, and
# aliases.
BUILTIN_NORMALIZATIONS = header_tables.NORM_KINDS
ALIASES = header_tables.ALIASES

_lock = threading.Lock()
_custom = {}


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
            "registered with normopt.register_normalization(name, fn) or "
            "NormalizedOptimizer.set_normalization_function(name, fn) (also "
            "before loading a model saved with it)."
        )
    return name


# The statistics each norm reads: stats_needed of norm_stats.h, as field names.
STATS_NEEDED = {name: header_tables.stats_fields(name) for name in BUILTIN_NORMALIZATIONS}


def tf_norm(grad, name, eps=None, per_unit=False):
    """norm(grad) by name (built-in or registered), in the accumulation
    dtype: `normopt.ops.tf_backend.norm_of` (a tf.IndexedSlices counts as
    the dense tensor it stands for; `per_unit`: one norm per index of the
    last axis)."""
    from normopt.ops import tf_backend

    return tf_backend.norm_of(grad, name, eps, per_unit)
