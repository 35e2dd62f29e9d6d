"""The pure path's math, written once in keras.ops: statistics, norms,
overflow rescue, scales and how each wrapper kind scales.

Every function here takes dense tensors of any Keras backend (TensorFlow
sparse gradients are the business of `normopt.ops.tf_backend`) and runs
under XLA. The norms are those of `csrc/normopt/norm_stats.h`, checked
against it and against an independent NumPy reference by the tests.

Statistics of one tensor g (or of each unit of its last axis) with n
elements, in the accumulation dtype (float32 for 16-bit, else the dtype):
count, sum|g|, sum g^2, max|g|, min|g|, mean and m2 = sum (g - mean)^2;
`finalize_norm` turns them into a norm, eps added once.

Overflow: every norm is positively homogeneous (norm0(c g) = c norm0(g),
norm0 without eps). When the plain statistics overflow although every
element is finite, the norm is recomputed from those of g * 2^-k,
k = `rescue_exponent(max|g|)`, as norm0(g * 2^-k) * 2^k + eps; only such a
tensor pays that second read (a cond).

Per norm, with (pre, mult) the scale of `scale_from_norm`:

    g' = (g * pre) * mult
    normalize: mult = 1 / norm(g)
    clip:      mult = clipnorm / norm(g) if norm(g) >= clipnorm else 1
    adaptive:  clip with clipnorm = clip_factor * max(norm(w), weight_eps)
    pre = 1, unless mult would be below the smallest normal number (where
    flush-to-zero makes it 0): then pre = 2^-k, k from the norm's exponent,
    and mult = target / (norm * 2^-k)

The product is formed in the accumulation dtype and cast back, so a 16-bit
gradient whose norm overflows float16 is still scaled correctly.
"""

import dataclasses
import math
import numbers

import keras
import numpy as np
from keras import ops

from normopt import normalizations

NORMALIZE = "normalize"
CLIP = "clip"
ADAPTIVE = "adaptive"
MODES = (NORMALIZE, CLIP, ADAPTIVE)

ALL_STATS = ("sum_abs", "sum_sq", "max_abs", "min_abs", "mean", "m2")


# ------------------------------------------------------------ branches


def has_value(x):
    """Whether tensor `x` holds a value to branch on in Python: on JAX not a
    tracer (under jax.jit), on PyTorch not a shape-only ("meta") tensor.
    False on TensorFlow, whose tf.cond branches in Python itself when
    eager."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "torch":
        return x.device.type != "meta"
    return False


def cond(pred, true_fn, false_fn):
    """ops.cond, but a Python branch where the predicate has a value
    (`has_value`): on JAX op by op, where lax.cond would trace and compile
    both branches anew at every call, and on PyTorch, where Keras's cond op
    takes a new name at every call, which torch.compile (jit_compile=True)
    guards on and recompiles for."""
    if has_value(pred):
        return true_fn() if bool(pred) else false_fn()
    return ops.cond(pred, true_fn, false_fn)


# ---------------------------------------------------------------- dtypes


def accumulation_dtype(dtype):
    """"float64" for float64 tensors, "float32" for everything narrower."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def widest_accumulation_dtype(dtypes):
    """The accumulation dtype of a norm over tensors of all `dtypes`
    together: float64 if any is float64, else float32."""
    accs = {accumulation_dtype(d) for d in dtypes}
    return "float64" if "float64" in accs else "float32"


def as_scalar(value, dtype):
    """A Python number or tensor as a scalar of `dtype`.

    A Python float goes straight to `dtype` (a cast would round it through
    float32 first, which float64 parity cannot afford).
    """
    if isinstance(value, numbers.Real):
        return ops.convert_to_tensor(value, dtype)
    return ops.cast(value, dtype)


def maximum(x, y):
    """The elementwise maximum of tensor `x` and `y` (a tensor or Python
    number), in x's dtype; where x is NaN, x.

    Not `ops.maximum`: Keras's type promotion (`keras.backend.result_type`)
    narrows float64 to float32 on every backend but TensorFlow, and the
    torch backend's maximum casts to it, so `ops.maximum` of two float64
    tensors is float32 there (a float64 adaptive threshold rounded to
    float32). A select keeps the dtype on every backend.
    """
    y = as_scalar(y, x.dtype) if isinstance(y, numbers.Real) else ops.cast(y, x.dtype)
    return ops.where(x < y, y, x)


def matmul(a, b):
    """a @ b for `a` and `b` of one or two axes, in their dtype: `ops.einsum`,
    since the torch backend's `ops.matmul` also casts to Keras's promoted
    dtype (float32 for float64 operands; see `maximum`)."""
    left = "ij" if len(a.shape) == 2 else "j"
    right = "jk" if len(b.shape) == 2 else "j"
    out = left.replace("j", "") + right.replace("j", "")
    return ops.einsum(f"{left},{right}->{out}", a, b)


# Bit layout of the accumulation dtypes, for exact powers of two and
# exponents (XLA-compatible: bit views and shifts): int dtype, mantissa bits,
# exponent bias, max exponent (FLT_MAX_EXP / DBL_MAX_EXP), min normal.
_FLOAT_LAYOUT = {
    "float32": ("int32", 23, 127, 128, 1.17549435082228750797e-38),
    "float64": ("int64", 52, 1023, 1024, 2.2250738585072013830902e-308),
}


def _layout(dtype):
    return _FLOAT_LAYOUT[keras.backend.standardize_dtype(dtype)]


def pow2(k, dtype):
    """2^k in float `dtype` for an integer tensor k of normal powers
    (1 - bias <= k <= bias); mirrors pow2 in norm_stats.h."""
    itype, mant, bias, _, _ = _layout(dtype)
    biased = ops.add(ops.cast(k, itype), ops.convert_to_tensor(bias, itype))
    shifted = ops.left_shift(biased, ops.convert_to_tensor(mant, itype))
    return ops.view(shifted, keras.backend.standardize_dtype(dtype))


def rescue_exponent(x):
    """frexp's exponent of x >= 0 clamped to [0, max_exp - 2] (an int32
    tensor); mirrors rescue_exponent in norm_stats.h."""
    itype, mant, bias, max_exp, _ = _layout(x.dtype)
    bits = ops.right_shift(ops.view(x, itype), ops.convert_to_tensor(mant, itype))
    e = ops.cast(ops.bitwise_and(bits, ops.convert_to_tensor(2 * bias + 1, itype)), "int32")
    return ops.clip(e - (bias - 1), 0, max_exp - 2)


# ------------------------------------------------------------ statistics


def _static_rows(x):
    rows = x.shape[0]
    return None if rows is None else int(rows)


def gradient_stats(values, total_count=None, needed=None, pre=None, units=None,
                   acc=None, tensors=None):
    """One-pass statistics of a gradient, in its accumulation dtype (or in
    `acc`, at least as wide: a norm over gradients of several dtypes).

    `values` holds the explicit elements; `total_count` (>= their number) is
    the element count of the dense tensor they stand for, the rest being
    zeros (a deduplicated sparse gradient). Returns a dict with count and
    those of sum_abs, sum_sq, max_abs, min_abs, mean and m2 named in
    `needed` (all when None), so a graph holds only what its norm reads.
    With `pre` (a power of two, the rescue pass) the statistics are those of
    values * pre. With `units` (the size of the last axis) every statistic
    is a vector: one per index of the last axis, over all others
    (`total_count` then counts the dense tensor's elements of all units).
    With `tensors` (a static count) `values` holds that many tensors of one
    size stacked, without `total_count`: one statistic per tensor.
    """
    needed = set(needed or ALL_STATS)
    acc = acc or accumulation_dtype(values.dtype)
    x = ops.reshape(ops.cast(values, acc), [-1] if units is None else [-1, units])
    if tensors is not None:
        # one row per tensor: the statistics of each row, as units of x.T
        x = ops.reshape(ops.cast(values, acc), [tensors, -1])
        units = tensors
    if pre is not None:
        x = x * pre
    per = 1 if units is None else units
    rows = _static_rows(x) if tensors is None else int(x.shape[1])
    k = ops.cast(ops.shape(x)[0] if rows is None else rows, acc)
    n = k if total_count is None else ops.cast(total_count, acc) / per
    zeros = n - k
    has_values = k > 0
    zero = ops.zeros([] if units is None else [units], acc)
    axis = None if units is None else (0 if tensors is None else 1)
    out = dict(count=n + zero)
    if needed & {"sum_abs", "max_abs", "min_abs"}:
        a = ops.abs(x)
    if "sum_abs" in needed:
        out["sum_abs"] = ops.sum(a, axis=axis)
    if "sum_sq" in needed:
        out["sum_sq"] = ops.sum(ops.square(x), axis=axis)
    # A tensor known to be empty has no maximum or minimum: 0, as below.
    if "max_abs" in needed:
        out["max_abs"] = zero if rows == 0 else ops.where(has_values, ops.max(a, axis=axis), zero)
    if "min_abs" in needed:
        min_abs = zero if rows == 0 else ops.where(has_values, ops.min(a, axis=axis), zero)
        out["min_abs"] = ops.where(zeros > 0, zero, min_abs)
    if needed & {"mean", "m2"}:
        mean = ops.sum(x, axis=axis) / maximum(n, 1)
        out["mean"] = mean
        m2 = ops.sum(ops.square(x - (mean if tensors is None else ops.expand_dims(mean, 1))),
                     axis=axis)
        if total_count is not None:
            # The implicit zeros' share; skipped when there are none, since
            # 0 * inf (mean^2 above 3.4e38) would be NaN.
            m2 = m2 + ops.where(zeros > 0, zeros * ops.square(mean), zero)
        out["m2"] = m2
    return out


def _add_all(tensors):
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def merge_stats(stats):
    """The statistics of the concatenation of tensors, from each one's
    (scalar) statistics; mirrors merge_stats in norm_stats.h (Chan et al.):
    mean = sum n_i mean_i / N, m2 = sum m2_i + n_i (mean_i - mean)^2."""
    count = _add_all([s["count"] for s in stats])
    out = dict(count=count)
    for key in ("sum_abs", "sum_sq"):
        if key in stats[0]:
            out[key] = _add_all([s[key] for s in stats])
    if "max_abs" in stats[0]:
        out["max_abs"] = ops.max(ops.stack([s["max_abs"] for s in stats]))
    if "min_abs" in stats[0]:
        # an empty tensor reports 0: leave it out of the minimum
        biggest = float(np.finfo(keras.backend.standardize_dtype(count.dtype)).max)
        values = ops.stack([ops.where(s["count"] > 0, s["min_abs"], biggest) for s in stats])
        out["min_abs"] = ops.where(count > 0, ops.min(values), ops.zeros([], count.dtype))
    if "mean" in stats[0]:
        mean = _add_all([s["count"] * s["mean"] for s in stats]) / maximum(count, 1)
        out["mean"] = mean
        out["m2"] = _add_all(
            [s["m2"] + s["count"] * ops.square(s["mean"] - mean) for s in stats])
    return out


def finalize_norm(name, s, eps):
    """norm from statistics `s`; mirrors finalize_norm in norm_stats.h."""
    name = normalizations.canonical_name(name)
    safe_n = maximum(s["count"], 1)
    if name == "l1":
        return s["sum_abs"] + eps
    if name == "l2":
        return ops.sqrt(s["sum_sq"]) + eps
    if name == "l1_l2":
        return (s["sum_abs"] + ops.sqrt(s["sum_sq"])) / 2 + eps
    if name == "avg_l1":
        return s["sum_abs"] / safe_n + eps
    if name == "avg_l2":
        return ops.sqrt(s["sum_sq"] / safe_n) + eps
    if name == "avg_l1_l2":
        return (s["sum_abs"] / safe_n + ops.sqrt(s["sum_sq"] / safe_n)) / 2 + eps
    if name == "max":
        return s["max_abs"] + eps
    if name == "min_max":
        return (s["max_abs"] + s["min_abs"]) / 2 + eps
    if name == "std":
        return ops.sqrt(s["m2"] / safe_n) + eps
    if name == "spectral":
        # its value for a tensor of at most one axis (l2); a matrix is
        # measured by normopt.ops.spectral_math
        return ops.sqrt(s["sum_sq"]) + eps
    raise ValueError(f"{name!r} is not a built-in normalization")


# ----------------------------------------------------------------- norms


def _eps(eps):
    return keras.config.epsilon() if eps is None else eps


def builtin_norm(values, name, eps, total_count=None, units=None):
    """Built-in norm `name` of `values` (`total_count` and `units` as in
    gradient_stats) with the rescue pass of norm_stats.h: where the plain
    norm is not finite but max|g| is, norm0(g * 2^-k) * 2^k + eps,
    k = rescue_exponent(max|g|)."""
    needed = normalizations.STATS_NEEDED[normalizations.canonical_name(name)]
    eps = as_scalar(_eps(eps), accumulation_dtype(values.dtype))

    def stats(pre=None):
        return gradient_stats(values, total_count, needed, pre, units)

    return _rescued(name, stats, [values], eps)


def merged_norm(parts, name, eps):
    """Built-in norm `name` of tensors together, as if concatenated (n the
    total count), with the same rescue as `builtin_norm`. `parts` holds
    (values, total count or None) per tensor, as in gradient_stats. Tensors
    of several dtypes are all accumulated in the widest one's accumulation
    dtype (float64 if any is float64), which is the dtype of the norm."""
    needed = normalizations.STATS_NEEDED[normalizations.canonical_name(name)]
    acc = widest_accumulation_dtype([v.dtype for v, _ in parts])
    eps = as_scalar(_eps(eps), acc)

    def stats(pre=None):
        return merge_stats([gradient_stats(v, n, needed, pre, acc=acc) for v, n in parts])

    return _rescued(name, stats, [v for v, _ in parts], eps)


def group_indices(keys):
    """{key: [the indices i with keys[i] == key]}, keys in order of first
    appearance (`keys` any iterable; a None key is left out)."""
    groups = {}
    for i, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(i)
    return groups


def _sorted_by(vector, keys):
    """The entries of `vector` (vector[i] belongs to keys[i]) in the order
    of their keys: one gather, none where already in that order."""
    ranks = sorted(range(len(keys)), key=keys.__getitem__)
    if ranks == list(range(len(keys))):
        return vector
    return ops.take(vector, ops.convert_to_tensor(ranks, "int32"), axis=0)


# Tensors of one shape up to this many elements each are measured stacked.
_STACK = 1 << 12


def builtin_norms(parts, name, eps):
    """[builtin_norm(v, name, eps, n) for (v, n) in parts], whole tensors.

    One rescue cond for all: where any norm is not finite, every norm
    passes through the rescue of `_rescued` (a select, which keeps a finite
    norm as it is), so a step holds no cond per tensor (XLA fuses nothing
    across a cond, and compiles each); in that branch the tensors of one
    shape are rescued together (`_rescue_vector`). Fewer, larger reductions: the dense
    tensors of one shape and dtype up to _STACK elements are measured as
    the columns of one matrix (`gradient_stats` per unit), and the norms of
    one accumulation dtype are finalized as one vector (the same
    elementwise math)."""
    needed = normalizations.STATS_NEEDED[normalizations.canonical_name(name)]
    by_acc = group_indices(accumulation_dtype(values.dtype) for values, _ in parts)
    entries, vectors = [], []
    for acc, members in by_acc.items():
        acc_eps = as_scalar(_eps(eps), acc)
        order, pieces = [], []
        for js in _stackable(parts, members):
            if len(js) > 1:
                rows = ops.stack([ops.reshape(parts[j][0], [-1]) for j in js])
                pieces.append(gradient_stats(rows, None, needed, tensors=len(js)))
            else:
                one = _stats_of(*parts[js[0]], needed)()
                pieces.append({key: ops.reshape(v, [1]) for key, v in one.items()})
            order.extend(js)
        stacked = {key: ops.concatenate([p[key] for p in pieces], 0) if len(pieces) > 1
                   else pieces[0][key] for key in pieces[0]}
        vectors.append(finalize_norm(name, stacked, acc_eps))
        entries.append((order, acc_eps))
    if not parts:
        return []

    def rescue():
        return [_rescue_vector(name, parts, order, needed, acc_eps, vector)
                for (order, acc_eps), vector in zip(entries, vectors)]

    finite = ops.all(ops.stack([ops.all(ops.isfinite(v)) for v in vectors]))
    chosen = cond(finite, lambda: vectors, rescue)
    norms = [None] * len(parts)
    for (order, _), vector in zip(entries, chosen):
        # back in the order of `parts` by one gather, so that a stack of
        # the norms in that order (the scales) is the vector itself to XLA
        vector = _sorted_by(vector, order)
        for i, j in enumerate(sorted(order)):
            norms[j] = vector[i]
    return norms


def _rescue_vector(name, parts, order, needed, eps, vector):
    """`_rescue` of every norm in `vector` (vector[i] the norm of
    parts[order[i]]), with the tensors of one static shape and dtype
    stacked as the rows of one matrix (one pre = 2^-k per row), so that the
    rescue branch holds a few ops per shape rather than per tensor: the
    size of a branch that does not run still costs a compiled step time
    (XLA:CPU, measured in the JAX step benchmark)."""
    position = {j: i for i, j in enumerate(order)}
    positions, pieces = [], []
    for js in _stackable(parts, order, limit=None):
        run = [position[j] for j in js]
        if len(run) == 1:
            i = run[0]
            got = ops.reshape(_rescue(name, _stats_of(*parts[order[i]], needed),
                                      [parts[order[i]][0]], eps, vector[i]), [1])
        else:
            got = _rescue_rows(name, [parts[order[i]][0] for i in run], needed, eps,
                               ops.take(vector, ops.convert_to_tensor(run, "int32"), axis=0))
        positions.extend(run)
        pieces.append(got)
    return _sorted_by(ops.concatenate(pieces, 0) if len(pieces) > 1 else pieces[0], positions)


def _rescue_rows(name, arrays, needed, eps, norms):
    """`_rescue` of tensors of one shape and dtype (not empty) at once: the
    rows of their stack, each row with its own k."""
    acc = norms.dtype
    rows = ops.stack([ops.reshape(ops.cast(a, acc), [-1]) for a in arrays])
    max_abs = ops.max(ops.abs(rows), axis=1)
    finite = ops.isfinite(max_abs)
    k = rescue_exponent(ops.where(finite, max_abs, ops.zeros([], acc)))
    stats = gradient_stats(rows, None, needed, ops.expand_dims(pow2(-k, acc), 1),
                           tensors=len(arrays))
    rescued = finalize_norm(name, stats, ops.zeros([], acc)) * pow2(k, acc) + eps
    return ops.where(ops.logical_and(finite, ops.logical_not(ops.isfinite(norms))),
                     rescued, norms)


def _stackable(parts, members, limit=_STACK):
    """`members` (indices in parts) in runs to measure together: those of
    one static shape and dtype, dense, of 1 to `limit` elements (any number
    where None); each other one alone."""
    def key(j):
        values, total = parts[j]
        size = _static_size(values.shape)
        if total is None and size is not None and 0 < size and (limit is None
                                                                or size <= limit):
            return (tuple(values.shape), keras.backend.standardize_dtype(values.dtype))
        return ("alone", j)

    return [[members[k] for k in ks] for ks in group_indices(map(key, members)).values()]


def _stats_of(values, total, needed):
    def stats(pre=None):
        return gradient_stats(values, total, needed, pre)
    return stats


def _rescued(name, stats, arrays, eps):
    """finalize_norm of stats(), or where not finite (any entry) the rescue
    from stats(pre=2^-k), k from the largest |element| of `arrays`."""
    norm = finalize_norm(name, stats(), eps)
    return cond(ops.all(ops.isfinite(norm)), lambda: norm,
                lambda: _rescue(name, stats, arrays, eps, norm))


def _rescue(name, stats, arrays, eps, norm):
    """`norm` where finite, else (where every element of `arrays` is
    finite) norm0(g * 2^-k) * 2^k + eps from stats(pre=2^-k)."""
    acc = norm.dtype
    # a zero appended, so an empty tensor has a maximum
    max_abs = ops.max(ops.concatenate(
        [ops.reshape(ops.abs(ops.cast(a, acc)), [-1]) for a in arrays]
        + [ops.zeros([1], acc)], 0))
    finite = ops.isfinite(max_abs)
    k = rescue_exponent(ops.where(finite, max_abs, ops.zeros([], acc)))
    rescued = finalize_norm(name, stats(pow2(-k, acc)), ops.zeros([], acc)) * pow2(k, acc) + eps
    return ops.where(ops.logical_and(finite, ops.logical_not(ops.isfinite(norm))), rescued, norm)


# ---------------------------------------------------------------- scales


def scale_from_norm(norm, mode, clipnorm):
    """The scale (pre, mult) of a norm (scalar or vector); mirrors
    scale_from_norm in norm_stats.h. `mode` is NORMALIZE or CLIP."""
    dtype = norm.dtype
    one = ops.ones([], dtype)
    if mode == NORMALIZE:
        target = one
        mult = one / norm
    else:
        clipnorm = as_scalar(clipnorm, dtype)
        clips = norm >= clipnorm
        target = ops.where(clips, clipnorm, one)
        mult = ops.where(clips, clipnorm / norm, one)
    min_normal = as_scalar(_layout(dtype)[4], dtype)
    tiny = ops.logical_and(
        ops.logical_and(mult >= 0, mult < min_normal),
        ops.logical_and(target > 0, ops.isfinite(norm)))
    k = rescue_exponent(ops.where(tiny, norm, one))
    pre = ops.where(tiny, pow2(-k, dtype), one)
    mult = ops.where(tiny, target / (norm * pre), mult)
    return pre, mult


# Tensors up to this many elements apply both products without a cond.
_SMALL = 1 << 16


def _static_size(shape):
    dims = list(shape)
    return None if any(d is None for d in dims) else math.prod(int(d) for d in dims)


def apply_scale(grad, scale, branch_large=True):
    """(grad * pre) * mult for scale = (pre, mult), formed in the scale's
    dtype. With `branch_large` (outside XLA), for a tensor above _SMALL
    elements the extra product runs only where pre != 1 (a cond), so the
    usual case is one pass with one multiply; XLA fuses both products."""
    pre, mult = scale
    x = ops.cast(grad, mult.dtype)
    size = _static_size(x.shape)
    if not branch_large or (size is not None and size <= _SMALL):
        # A small tensor's extra product is cheaper than a cond (x * 1 is x:
        # the same bits as x * mult).
        y = (x * pre) * mult
    else:
        y = cond(ops.all(ops.equal(pre, 1)), lambda: x * mult,
                     lambda: (x * pre) * mult)
    return ops.cast(y, grad.dtype)


# ------------------------------------------------- how each kind scales


@dataclasses.dataclass(frozen=True)
class Normalize:
    """NormalizedOptimizer: g' = g / norm(g)."""

    mode = NORMALIZE
    reads_weights = False

    @property
    def threshold(self):
        """The ops' `clipnorm` argument."""
        return 1.0

    @property
    def weight_eps(self):
        return 0.0

    def scale(self, norm, weight_norm=None):
        return scale_from_norm(norm, NORMALIZE, 1.0)


@dataclasses.dataclass(frozen=True)
class Clip:
    """ClippedOptimizer: g' = g * clipnorm / norm(g) where norm(g) >= clipnorm."""

    clipnorm: object = 1.0
    mode = CLIP
    reads_weights = False

    @property
    def threshold(self):
        return self.clipnorm

    @property
    def weight_eps(self):
        return 0.0

    def scale(self, norm, weight_norm=None):
        return scale_from_norm(norm, CLIP, self.clipnorm)


@dataclasses.dataclass(frozen=True)
class Adaptive:
    """AdaptiveClippedOptimizer: the clip rule with threshold
    t = clip_factor * max(norm(w), eps) per norm (at norm(g) == t both give
    a scale of 1)."""

    clip_factor: float
    eps: float
    mode = ADAPTIVE
    reads_weights = True

    @property
    def threshold(self):
        return self.clip_factor

    @property
    def weight_eps(self):
        return self.eps

    def scale(self, norm, weight_norm=None):
        wn = weight_norm
        threshold = ops.cast(
            as_scalar(self.clip_factor, wn.dtype) * maximum(wn, self.eps),
            norm.dtype)
        return scale_from_norm(norm, CLIP, threshold)
