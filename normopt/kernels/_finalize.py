"""Python transcription of `csrc/normopt/norm_stats.h` for the Numba kernels.

The header is the one definition of every norm; this module mirrors it line
for line so that `numba_cpu` (`@njit`) and `numba_cuda` (`@cuda.jit(device=True)`)
compile the same plain-Python functions instead of restating the norms. The
tests check it against the header (a compiled probe) and against the NumPy
reference.

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

scale_from_norm: normalize 1/norm; clip clipnorm/norm if norm >= clipnorm else 1.
"""

import math

# NormKind codes, as in the header's enum (linf is an alias of max).
KIND_CODES = {
    "l1": 0,
    "l2": 1,
    "l1_l2": 2,
    "avg_l1": 3,
    "avg_l2": 4,
    "avg_l1_l2": 5,
    "max": 6,
    "min_max": 7,
    "std": 8,
}
ALIASES = {"linf": "max"}
NORM_KINDS = tuple(KIND_CODES)
MODE_CODES = {"normalize": 0, "clip": 1}

# StatBits, as in the header.
STAT_SUM_ABS = 1
STAT_SUM_SQ = 2
STAT_MAX_ABS = 4
STAT_MIN_ABS = 8
STAT_MOMENTS = 16

STATS_FIELDS = ("count", "sum_abs", "sum_sq", "max_abs", "min_abs", "mean", "m2")
NUM_STATS = len(STATS_FIELDS)


def kind_code(kind):
    """The header's NormKind code of a norm name (alias `linf` accepted)."""
    name = ALIASES.get(kind, kind)
    if name not in KIND_CODES:
        raise ValueError(
            f"unknown norm kind {kind!r}; expected one of "
            f"{sorted(set(KIND_CODES) | set(ALIASES))}"
        )
    return KIND_CODES[name]


def mode_code(mode):
    if mode not in MODE_CODES:
        raise ValueError(f"unknown mode {mode!r}; expected 'normalize' or 'clip'")
    return MODE_CODES[mode]


def stats_needed(kind):
    """Bit mask of the statistics norm `kind` (a code) reads."""
    if kind == 0 or kind == 3:
        return STAT_SUM_ABS
    if kind == 1 or kind == 4:
        return STAT_SUM_SQ
    if kind == 2 or kind == 5:
        return STAT_SUM_ABS | STAT_SUM_SQ
    if kind == 6:
        return STAT_MAX_ABS
    if kind == 7:
        return STAT_MAX_ABS | STAT_MIN_ABS
    if kind == 8:
        return STAT_MOMENTS
    return 0


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
    return eps


def scale_from_norm(mode, norm, clipnorm):
    """Per-tensor multiplier of the gradient (mode 0 normalize, 1 clip)."""
    if mode == 0:
        return 1.0 / norm
    return clipnorm / norm if norm >= clipnorm else 1.0


def tensor_finish(jit):
    """finish(stats, lo, hi, kind, mode, clipnorm, eps) -> (norm, scale) of
    one tensor: its chunk rows stats[lo:hi] (count, sum_abs, sum_sq, max_abs,
    min_abs, mean, m2) merged in order, then finalize_norm and
    scale_from_norm. Compiled, with those helpers, by `jit`: numba.njit for
    numba_cpu, cuda.jit(device=True) for numba_cuda."""
    merge, finalize, scale = jit(merge_stats), jit(finalize_norm), jit(scale_from_norm)

    def finish(stats, lo, hi, kind, mode, clipnorm, eps):
        count, s_abs, s_sq, mx, mn, mean, m2 = 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        for k in range(lo, hi):
            count, s_abs, s_sq, mx, mn, mean, m2 = merge(
                count, s_abs, s_sq, mx, mn, mean, m2,
                int(stats[k, 0]), float(stats[k, 1]), float(stats[k, 2]),
                float(stats[k, 3]), float(stats[k, 4]), float(stats[k, 5]),
                float(stats[k, 6]),
            )
        norm = finalize(kind, count, s_abs, s_sq, mx, mn, m2, eps)
        return norm, scale(mode, norm, clipnorm)

    return jit(finish)
