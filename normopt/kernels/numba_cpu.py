"""Numba CPU (`@njit`, parallel over chunks) norms, scaling and fused updates.

Same structure as the CUDA kernels: the list of tensors is cut into chunks
(`chunks.chunk_table`), one parallel pass gathers each chunk's statistics,
a per-tensor finish merges them in chunk order (so results do not depend on
the thread count) and applies `finalize_norm` / `scale_from_norm` from
`_finalize` (the header's transcription), and the update pass multiplies
each gradient by its tensor's scale on the fly: one generic kernel for
every rule (`_updates.rule_element`, dispatched on the rule's code, its step
scalars formed on the host). A trust-ratio rule takes two parallel passes
(`_updates.trust_elements`): phase 1 (each chunk's sums of w^2 and u^2, in
element order and float64; nothing stored), the per-tensor ratios from the
chunks' sums added in chunk order, phase 2 (the element steps again, with
the ratio; the variables and slots stored).

Numba's cache (cache=True) is keyed on this file only: after editing
`_updates.py` alone, remove normopt/kernels/__pycache__/*.nbi and *.nbc (or
touch this file) so the kernels are compiled again.

float16 and bfloat16 inputs run on float32 working copies (Numba has no
16-bit CPU arithmetic); updated variables and slots are rounded back to
their dtype at the end. Signatures: see `normopt.kernels`.
"""

import numba
import numpy as np
from numba import prange

from normopt.kernels import _args, _finalize, _updates
from normopt.kernels.chunks import DEFAULT_CHUNK_SIZE, chunk_table

_tensor_finish = _finalize.tensor_finish(numba.njit)
_decay_element = numba.njit(_updates.decay_element)
_rule_element = _updates.rule_element(numba.njit)
_trust_moments, _trust_direction, _trust_ratio, _trust_step = _updates.trust_elements(
    numba.njit)


@numba.njit(parallel=True, cache=True)
def _chunk_stats(arrays, tensor, start, chunk_size, moments, out):
    """out[c] = (count, sum|g|, sum g^2, max|g|, min|g|, mean, m2) of chunk c.

    `out` must start zeroed (its zeros give the accumulator type).
    """
    for c in prange(tensor.size):
        a = arrays[tensor[c]]
        lo = start[c]
        hi = min(lo + chunk_size, a.size)
        zero = out[c, 1]
        s_abs = zero
        s_sq = zero
        total = zero
        mx = zero
        mn = abs(a[lo]) + zero
        for i in range(lo, hi):
            x = a[i] + zero
            ax = abs(x)
            s_abs += ax
            s_sq += x * x
            total += x
            mx = ax if (ax > mx or ax != ax) else mx  # a NaN stays
            mn = ax if (ax < mn or ax != ax) else mn
        n = hi - lo
        centered = 0.0
        if moments:
            mean = total / n
            for i in range(lo, hi):
                d = a[i] - mean
                centered += d * d
        out[c, 0] = n
        out[c, 1] = s_abs
        out[c, 2] = s_sq
        out[c, 3] = mx
        out[c, 4] = mn
        out[c, 5] = total / n
        out[c, 6] = centered


@numba.njit(parallel=True, cache=True)
def _finish(stats, first, arrays, kind, mode, clipnorm, eps, min_normal, max_exp,
            max_value, norms, scales):
    """Per tensor: merge its chunks in order, then norm (rescued where it
    overflowed) and scale (pre, mult)."""
    for t in prange(first.size - 1):
        # Numba types this prange index as uint64 and a typed List takes a
        # signed index: without the conversion every compile warns of an
        # unsafe cast.
        a = arrays[np.int64(t)]
        norms[t], scales[t, 0], scales[t, 1] = _tensor_finish(
            stats, first[t], first[t + 1], kind, mode, clipnorm, eps, a, 0, a.size,
            min_normal, max_exp, max_value)


@numba.njit(parallel=True, cache=True)
def _scale_kernel(grads, outs, tensor, start, chunk_size, scales):
    for c in prange(tensor.size):
        t = tensor[c]
        g = grads[t]
        o = outs[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        for i in range(start[c], min(start[c] + chunk_size, g.size)):
            o[i] = (g[i] * pre) * mult


@numba.njit(parallel=True, cache=True)
def _apply_kernel(code, num_slots, weights, s0, s1, s2, grads, tensor, start, chunk_size,
                  scales, decay, sc):
    """The rule of `code` (`_updates.rule_element`) on g' = (g * pre[t]) * mult[t],
    after the decoupled decay where decay[t] != 0. s0..s2: the rule's slot
    lists (the weights stand in for the ones it lacks; only the first
    `num_slots` are stored). sc: the step scalars, lr first."""
    lr = sc[0]
    for c in prange(tensor.size):
        t = tensor[c]
        w = weights[t]
        g = grads[t]
        a = s0[t]
        b = s1[t]
        h = s2[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        wd = decay[t]
        for i in range(start[c], min(start[c] + chunk_size, w.size)):
            wi = w[i]
            if wd != 0:
                wi = _decay_element(wi, wd, lr)
            wi, ai, bi, hi = _rule_element(code, wi, a[i], b[i], h[i], (g[i] * pre) * mult, sc)
            w[i] = wi
            if num_slots > 0:
                a[i] = ai
            if num_slots > 1:
                b[i] = bi
            if num_slots > 2:
                h[i] = hi


@numba.njit(parallel=True, cache=True)
def _trust_sums_kernel(code, weights, s0, s1, s2, grads, tensor, start, chunk_size, scales,
                       decay, sc, sums):
    """Phase 1 of trust-ratio rule `code`, nothing stored: sums[c] = (sum w^2,
    sum u^2) of chunk c, w decayed, u the direction of the updated slots.
    `sums` is float64 (sums of squares of long tensors in element order
    would carry ~sqrt(n) roundings of float32) and starts zeroed."""
    lr = sc[0]
    for c in prange(tensor.size):
        t = tensor[c]
        w = weights[t]
        g = grads[t]
        a = s0[t]
        b = s1[t]
        h = s2[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        wd = decay[t]
        w_sq = sums[c, 0]
        u_sq = sums[c, 1]
        for i in range(start[c], min(start[c] + chunk_size, w.size)):
            wi = w[i]
            if wd != 0:
                wi = _decay_element(wi, wd, lr)
            ai, bi, hi = _trust_moments(code, a[i], b[i], h[i], (g[i] * pre) * mult, sc)
            u = float(_trust_direction(code, ai, bi, hi, sc))
            wf = float(wi)
            w_sq += wf * wf
            u_sq += u * u
        sums[c, 0] = w_sq
        sums[c, 1] = u_sq


@numba.njit(cache=True)
def _trust_ratios(code, sums, first, sc, ratios):
    """ratios[t]: the ratio of tensor t's chunk sums (float64), added in
    chunk order."""
    for t in range(first.size - 1):
        w_sq = 0.0
        u_sq = 0.0
        for c in range(first[t], first[t + 1]):
            w_sq += sums[c, 0]
            u_sq += sums[c, 1]
        ratios[t] = _trust_ratio(code, w_sq, u_sq, sc)


@numba.njit(parallel=True, cache=True)
def _trust_update_kernel(code, num_slots, weights, s0, s1, s2, grads, tensor, start,
                         chunk_size, scales, decay, ratios, sc):
    """Phase 2 of trust-ratio rule `code`: phase 1's decay and slots again,
    then the step with its tensor's ratio; w and the first `num_slots` slot
    lists stored."""
    lr = sc[0]
    for c in prange(tensor.size):
        t = tensor[c]
        w = weights[t]
        g = grads[t]
        a = s0[t]
        b = s1[t]
        h = s2[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        wd = decay[t]
        r = ratios[t]
        for i in range(start[c], min(start[c] + chunk_size, w.size)):
            wi = w[i]
            if wd != 0:
                wi = _decay_element(wi, wd, lr)
            ai, bi, hi = _trust_moments(code, a[i], b[i], h[i], (g[i] * pre) * mult, sc)
            w[i] = _trust_step(code, wi, ai, bi, hi, r, sc)
            if num_slots > 0:
                a[i] = ai
            if num_slots > 1:
                b[i] = bi
            if num_slots > 2:
                h[i] = hi


class _Work:
    """1-D working views (or float32 copies for 16-bit dtypes) of arrays."""

    def __init__(self, arrays, dtype):
        self.arrays = arrays
        self.narrow = dtype in _args.NARROW
        acc = _args.acc_dtype(dtype)
        flat = []
        for a in arrays:
            if self.narrow:
                flat.append(np.ascontiguousarray(a, dtype=acc).reshape(-1))
            else:
                if not a.flags.c_contiguous:
                    raise ValueError("arrays must be C-contiguous")
                flat.append(a.reshape(-1))
        self.flat = flat
        self.typed = numba.typed.List(flat) if flat else None

    def write_back(self):
        if self.narrow:
            for a, f in zip(self.arrays, self.flat):
                a[...] = f.reshape(a.shape).astype(a.dtype)


def _stats_and_scales(work, dtype, kind, mode, clipnorm, eps, chunk_size):
    code = _finalize.statistic_kind_code(kind)
    mode_code = _finalize.mode_code(mode)
    sizes = [f.size for f in work.flat]
    table = chunk_table(sizes, chunk_size)
    acc = _args.acc_dtype(dtype)
    stats = np.zeros((table.tensor.size, _finalize.NUM_STATS), dtype=acc)
    if table.tensor.size:
        moments = bool(_finalize.stats_needed(code) & _finalize.STAT_MOMENTS)
        _chunk_stats(work.typed, table.tensor, table.start, table.chunk_size,
                     moments, stats)
    norms = np.empty(len(sizes), dtype=np.float64)
    scales = np.empty((len(sizes), 2), dtype=np.float64)  # (pre, mult) per tensor
    if sizes:
        limits = _finalize.ACC_LIMITS[np.dtype(acc).name]
        _finish(stats, table.first, work.typed, code, mode_code, float(clipnorm),
                float(eps), *limits, norms, scales)
    return table, norms.astype(acc), scales.astype(acc)


def norms(arrays, kind="l2", eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE):
    """Per-tensor norms, array[N] (float64 for float64 inputs, else float32)."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = _args.common_dtype(arrays)
    work = _Work(arrays, dtype)
    return _stats_and_scales(work, dtype, kind, "normalize", 1.0, eps, chunk_size)[1]


def scales(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
           chunk_size=DEFAULT_CHUNK_SIZE):
    """Per-tensor multipliers (1/norm, or clipnorm/norm where norm >= clipnorm),
    as pre * mult of the (pre, mult) pairs the kernels apply."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = _args.common_dtype(arrays)
    work = _Work(arrays, dtype)
    s = _stats_and_scales(work, dtype, kind, mode, clipnorm, eps, chunk_size)[2]
    return s[:, 0] * s[:, 1]


def scale(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
          chunk_size=DEFAULT_CHUNK_SIZE):
    """New arrays g * scale[t], same shapes and dtypes."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = _args.common_dtype(arrays)
    work = _Work(arrays, dtype)
    table, _, s = _stats_and_scales(work, dtype, kind, mode, clipnorm, eps, chunk_size)
    outs = [np.empty(f.size, dtype=f.dtype) for f in work.flat]
    if table.tensor.size:
        _scale_kernel(work.typed, numba.typed.List(outs), table.tensor,
                      table.start, table.chunk_size, s)
    return [o.reshape(a.shape).astype(a.dtype, copy=False) for o, a in zip(outs, arrays)]


def apply(rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None, kind="l2",
          mode="normalize", clipnorm=1.0, eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE):
    """One step of update rule `rule` (`_updates.RULES`) on g * scale[t], in
    place on the weights and `slots` (slot-major: slots[q][t] is slot q of
    weight t). Returns the norms."""
    spec, sc, dtype = _args.check_apply(rule, weights, grads, slots, lr, step, hyper)
    slots = [] if slots is None else list(slots)
    g = _Work(grads, dtype)
    table, n, s = _stats_and_scales(g, dtype, kind, mode, clipnorm, eps, chunk_size)
    if table.tensor.size:
        acc = _args.acc_dtype(dtype)
        w = _Work(weights, dtype)
        works = [_Work(x, dtype) for x in slots]
        typed = [x.typed for x in works] + [w.typed] * (_updates.MAX_SLOTS - len(works))
        wd = _args.per_tensor(decay, len(weights), acc)
        if spec.trust_ratio:
            sums = np.zeros((table.tensor.size, 2), dtype=np.float64)
            _trust_sums_kernel(spec.code, w.typed, *typed, g.typed, table.tensor,
                               table.start, table.chunk_size, s, wd, sc, sums)
            ratios = np.empty(len(weights), dtype=acc)
            _trust_ratios(spec.code, sums, table.first, sc, ratios)
            _trust_update_kernel(spec.code, len(works), w.typed, *typed, g.typed,
                                 table.tensor, table.start, table.chunk_size, s, wd, ratios,
                                 sc)
        else:
            _apply_kernel(spec.code, len(works), w.typed, *typed, g.typed, table.tensor,
                          table.start, table.chunk_size, s, wd, sc)
        for work in [w] + works:
            work.write_back()
    return n


def apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0, nesterov=False,
              decay=None, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
              chunk_size=DEFAULT_CHUNK_SIZE):
    """One Keras SGD step on g * scale[t], in place: `apply` with rule sgd
    (momenta None), sgd_momentum or sgd_nesterov. Returns the norms."""
    rule, slots, hyper = _args.sgd_rule(weights, momenta, momentum, nesterov)
    return apply(rule, weights, grads, slots, lr=lr, hyper=hyper, decay=decay, kind=kind,
                 mode=mode, clipnorm=clipnorm, eps=eps, chunk_size=chunk_size)


def apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-7, decay=None, kind="l2",
               mode="normalize", clipnorm=1.0, eps=1e-7,
               chunk_size=DEFAULT_CHUNK_SIZE):
    """One Keras Adam/AdamW (amsgrad when `vhat` is given) step, in place:
    `apply` with rule adam or adam_amsgrad.

    `step` is the 1-based step count t (iterations + 1). Returns the norms.
    """
    rule, slots = ("adam", [m, v]) if vhat is None else ("adam_amsgrad", [m, v, vhat])
    return apply(rule, weights, grads, slots, lr=lr, step=step,
                 hyper=(beta_1, beta_2, adam_epsilon), decay=decay, kind=kind, mode=mode,
                 clipnorm=clipnorm, eps=eps, chunk_size=chunk_size)
