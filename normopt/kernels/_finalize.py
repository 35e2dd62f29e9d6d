"""Python transcription of `csrc/normopt/norm_stats.h` for the Numba kernels.

The header is the one definition of every norm; this module mirrors it line
for line so that `numba_cpu` (`@njit`) and `numba_cuda` (`@cuda.jit(device=True)`)
compile the same plain-Python functions instead of restating the norms. The
tests check it against the header (a compiled probe) and against the NumPy
reference.

The tables the C++ headers define (the norm table, the statistics bits,
the dtype codes, the GPU chunk size) are `normopt.header_tables`, which
tests/test_header_tables.py checks against the headers; this module imports
them from there (the Numba kernels read them as its globals).

Statistics of a block of n elements g_i, as a 7-tuple:

    (count, sum_abs, sum_sq, max_abs, min_abs, mean, m2)
    sum_abs = sum|g_i|, sum_sq = sum g_i^2, max_abs/min_abs = max/min |g_i|,
    mean = sum g_i / n, m2 = sum (g_i - mean)^2        (all 0 when n == 0)

Chan merge of disjoint blocks a, b (n = na + nb, d = mean_b - mean_a):

    mean = mean_a + d * nb / n,   m2 = m2_a + m2_b + d^2 * na * nb / n
    max_abs, min_abs: max/min of the blocks', NaN if either is NaN

finalize_norm (eps added once; averages over an empty block are 0):

    l1 sum_abs + eps                  l2 sqrt(sum_sq) + eps
    l1_l2 (sum_abs + sqrt(sum_sq))/2 + eps
    avg_l1 sum_abs/n + eps            avg_l2 sqrt(sum_sq/n) + eps
    avg_l1_l2 (sum_abs/n + sqrt(sum_sq/n))/2 + eps
    max max_abs + eps                 min_max (max_abs + min_abs)/2 + eps
    std sqrt(m2/n) + eps
    spectral sqrt(sum_sq) + eps (its value for at most one axis: the
             kernels here refuse it, `statistic_kind_code`)

scale_from_norm: normalize 1/norm; clip clipnorm/norm if norm >= clipnorm else 1,
as the pair (pre, mult) of `tensor_scale`, applied as (g * pre) * mult: pre = 1
unless mult would be below the accumulation type's smallest normal number,
then pre = 2^-k (k = rescue_exponent(norm)) and mult = target / (norm * pre).

Overflow rescue: a tensor whose norm is not finite while max|g| is gets
norm0(g * 2^-k) * 2^k + eps, k = rescue_exponent(max|g|), the statistics of
g * 2^-k read again by the finishing thread (`serial_scaled_stats`).
"""

import math

from normopt.header_tables import (  # noqa: F401 - the kernels' names for the tables
    ALIASES,
    DEFAULT_CHUNK_SIZE,
    DTYPE_CODES,
    KIND_CODES,
    MODE_CODES,
    NORM_KINDS,
    NORMS,
    NUM_KINDS,
    MATRIX_NORMS,
    STAT_FIELDS,
    STAT_MATRIX,
    STAT_MAX_ABS,
    STAT_MIN_ABS,
    STAT_MOMENTS,
    STAT_SUM_ABS,
    STAT_SUM_SQ,
    STATS_BY_CODE,
    accepted_names,
    kind_code,
    mode_code,
    STATISTIC_NORMS,
    statistic_kind_code,
    stats_fields,
    stats_needed,
)

# Per accumulation dtype: (smallest normal number, max exponent), the
# header's AccLimits, and the largest finite value (the finish runs in
# double: a rescued norm beyond it is inf in the accumulation type).
ACC_LIMITS = {
    "float32": (1.17549435082228750797e-38, 128, 3.4028234663852886e38),
    "float64": (2.2250738585072013830902e-308, 1024, 1.7976931348623157e308),
}

STATS_FIELDS = ("count", "sum_abs", "sum_sq", "max_abs", "min_abs", "mean", "m2")
NUM_STATS = len(STATS_FIELDS)


def merge_stats(ca, sa, qa, xa, na_, ma, m2a, cb, sb, qb, xb, nb_, mb, m2b):
    """Chan merge of two blocks' statistics (see the module docstring)."""
    if ca == 0:
        return cb, sb, qb, xb, nb_, mb, m2b
    if cb == 0:
        return ca, sa, qa, xa, na_, ma, m2a
    count = ca + cb
    n = float(count)
    na = float(ca)
    nb = float(cb)
    d = mb - ma
    mean = ma + d * (nb / n)
    m2 = m2a + m2b + d * d * (na * nb / n)
    # max_keep_nan / min_keep_nan: a NaN of either block stays
    mx = xa if (xa > xb or xa != xa) else xb
    mn = na_ if (na_ < nb_ or na_ != na_) else nb_
    return count, sa + sb, qa + qb, mx, mn, mean, m2


def from_block_sums(count, sum_abs, sum_sq, max_abs, min_abs, total, centered_sq):
    """Statistics of one block from its sums (total = sum g_i,
    centered_sq = sum (g_i - total/count)^2)."""
    if count == 0:
        return 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    return count, sum_abs, sum_sq, max_abs, min_abs, total / count, centered_sq


def finalize_norm(kind, count, sum_abs, sum_sq, max_abs, min_abs, m2, eps):
    """The norm of a block from its statistics, eps added once."""
    any_ = count > 0
    n = float(count)
    avg_abs = sum_abs / n if any_ else 0.0
    avg_sq = sum_sq / n if any_ else 0.0
    if kind == 0:
        return sum_abs + eps
    if kind == 1:
        return math.sqrt(sum_sq) + eps
    if kind == 2:
        return (sum_abs + math.sqrt(sum_sq)) / 2.0 + eps
    if kind == 3:
        return avg_abs + eps
    if kind == 4:
        return math.sqrt(avg_sq) + eps
    if kind == 5:
        return (avg_abs + math.sqrt(avg_sq)) / 2.0 + eps
    if kind == 6:
        return (max_abs if any_ else 0.0) + eps
    if kind == 7:
        return ((max_abs + min_abs) / 2.0 if any_ else 0.0) + eps
    if kind == 8:
        return math.sqrt(m2 / n if any_ else 0.0) + eps
    if kind == 9:  # spectral of a tensor of at most one axis: l2
        return math.sqrt(sum_sq) + eps
    return eps


def is_finite(x):
    """Neither inf nor NaN."""
    return x - x == 0.0


def rescue_exponent(x, max_exp):
    """frexp's exponent of x, clamped to [0, max_exp - 2]."""
    e = math.frexp(x)[1]
    top = max_exp - 2
    return 0 if e < 0 else (top if e > top else e)


def tensor_scale(mode, norm, clipnorm, min_normal, max_exp):
    """(pre, mult) of a tensor of norm `norm` (mode 0 normalize, 1 clip),
    for an accumulation type of limits (min_normal, max_exp). (Self-contained:
    Numba compiles it alone; the exponent is rescue_exponent's.)"""
    target = 1.0
    if mode != 0:
        if not norm >= clipnorm:
            return 1.0, 1.0
        target = clipnorm
    mult = target / norm
    if mult >= 0.0 and mult < min_normal and target > 0.0 and norm - norm == 0.0:
        e = math.frexp(norm)[1]
        e = 0 if e < 0 else (max_exp - 2 if e > max_exp - 2 else e)
        pre = math.ldexp(1.0, -e)
        return pre, target / (norm * pre)
    return 1.0, mult


def scale_from_norm(mode, norm, clipnorm):
    """The per-tensor multiplier pre * mult in double (the header probe's)."""
    pre, mult = tensor_scale(mode, norm, clipnorm, 2.2250738585072013830902e-308, 1024)
    return pre * mult


def serial_scaled_stats(flat, lo, hi, pre, moments):
    """Statistics (as the 7-tuple) of flat[lo:hi] * pre, in one thread: sums
    in one pass, the centered sum of squares in a second (when `moments`)."""
    s_abs = 0.0
    s_sq = 0.0
    total = 0.0
    mx = 0.0
    mn = 0.0
    for i in range(lo, hi):
        x = flat[i] * pre
        a = abs(x)
        s_abs += a
        s_sq += x * x
        total += x
        mx = a if (i == lo or a > mx or a != a) else mx
        mn = a if (i == lo or a < mn or a != a) else mn
    n = hi - lo
    centered = 0.0
    mean = total / n if n > 0 else 0.0
    if moments:
        for i in range(lo, hi):
            d = flat[i] * pre - mean
            centered += d * d
    return n, s_abs, s_sq, mx, mn, mean, centered


def tensor_finish(jit):
    """finish(stats, lo, hi, kind, mode, clipnorm, eps, flat, base, size,
    min_normal, max_exp, max_value) -> (norm, pre, mult) of one tensor: its chunk rows
    stats[lo:hi] (count, sum_abs, sum_sq, max_abs, min_abs, mean, m2) merged
    in order, then finalize_norm (with the rescue pass over its elements
    flat[base:base + size] where that overflowed) and tensor_scale. Compiled,
    with those helpers, by `jit`: numba.njit for numba_cpu,
    cuda.jit(device=True) for numba_cuda."""
    merge, finalize = jit(merge_stats), jit(finalize_norm)
    finite, exponent = jit(is_finite), jit(rescue_exponent)
    scaled_stats, scale, needed = jit(serial_scaled_stats), jit(tensor_scale), jit(stats_needed)

    def finish(stats, lo, hi, kind, mode, clipnorm, eps, flat, base, size, min_normal,
               max_exp, max_value):
        count, s_abs, s_sq, mx, mn, mean, m2 = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        for k in range(lo, hi):
            count, s_abs, s_sq, mx, mn, mean, m2 = merge(
                count, s_abs, s_sq, mx, mn, mean, m2,
                int(stats[k, 0]), float(stats[k, 1]), float(stats[k, 2]),
                float(stats[k, 3]), float(stats[k, 4]), float(stats[k, 5]),
                float(stats[k, 6]),
            )
        norm = finalize(kind, count, s_abs, s_sq, mx, mn, m2, eps)
        if not finite(norm) and finite(mx):
            e = exponent(mx, max_exp)
            c, a, q, x, n_, mu, v = scaled_stats(
                flat, base, base + size, math.ldexp(1.0, -e),
                (needed(kind) & STAT_MOMENTS) != 0)
            # rescued_norm: norm0(g * 2^-e) * 2^e + eps
            norm = math.ldexp(finalize(kind, c, a, q, x, n_, v, 0.0), e) + eps
            if norm > max_value:
                norm = math.inf  # as the accumulation type holds it
        pre, mult = scale(mode, norm, clipnorm, min_normal, max_exp)
        return norm, pre, mult

    return jit(finish)
