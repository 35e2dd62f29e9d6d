"""Numba CPU (`@njit`, parallel over chunks) norms, scaling and fused updates.

Same structure as the CUDA kernels: the list of tensors is cut into chunks
(`chunks.chunk_table`), one parallel pass gathers each chunk's statistics,
a per-tensor finish merges them in chunk order (so results do not depend on
the thread count) and applies `finalize_norm` / `scale_from_norm` from
`_finalize` (the header's transcription), and the update pass multiplies
each gradient by its tensor's scale on the fly.

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
_sgd_element = numba.njit(cache=True)(_updates.sgd_element)
_adam_element = numba.njit(cache=True)(_updates.adam_element)


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
        a = arrays[t]
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
def _sgd_kernel(weights, momenta, grads, use_momentum, nesterov, tensor, start,
                chunk_size, scales, decay, lr, mu):
    """Keras 3 SGD (`_updates.sgd_element`) on g' = (g * pre[t]) * mult[t]."""
    for c in prange(tensor.size):
        t = tensor[c]
        w = weights[t]
        g = grads[t]
        m = momenta[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        wd = decay[t]
        for i in range(start[c], min(start[c] + chunk_size, w.size)):
            wi, mi = _sgd_element(w[i], m[i], (g[i] * pre) * mult, wd, lr, mu,
                                  use_momentum, nesterov)
            w[i] = wi
            if use_momentum:
                m[i] = mi


@numba.njit(parallel=True, cache=True)
def _adam_kernel(weights, ms, vs, vhats, grads, amsgrad, tensor, start,
                 chunk_size, scales, decay, lr, alpha, one_minus_b1, one_minus_b2,
                 adam_eps):
    """Keras 3 Adam/AdamW/amsgrad (`_updates.adam_element`) on g' = (g * pre[t]) * mult[t]."""
    for c in prange(tensor.size):
        t = tensor[c]
        w = weights[t]
        g = grads[t]
        m = ms[t]
        v = vs[t]
        vh = vhats[t]
        pre = scales[t, 0]
        mult = scales[t, 1]
        wd = decay[t]
        for i in range(start[c], min(start[c] + chunk_size, w.size)):
            wi, mi, vi, hi = _adam_element(w[i], m[i], v[i], vh[i], (g[i] * pre) * mult,
                                           wd, lr,
                                           alpha, one_minus_b1, one_minus_b2,
                                           adam_eps, amsgrad)
            w[i] = wi
            m[i] = mi
            v[i] = vi
            if amsgrad:
                vh[i] = hi


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
    code = _finalize.kind_code(kind)
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


def apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0, nesterov=False,
              decay=None, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
              chunk_size=DEFAULT_CHUNK_SIZE):
    """One Keras SGD step on g * scale[t], in place. Returns the norms."""
    _args.check_pairs(weights, grads, ("weights", "grads"))
    _args.check_momenta(weights, momenta, momentum)
    use_momentum = momenta is not None
    dtype = _args.common_dtype(weights)
    g = _Work(grads, dtype)
    table, n, s = _stats_and_scales(g, dtype, kind, mode, clipnorm, eps, chunk_size)
    if table.tensor.size:
        acc = _args.acc_dtype(dtype)
        w = _Work(weights, dtype)
        m = _Work(momenta, dtype) if use_momentum else w
        _sgd_kernel(w.typed, m.typed, g.typed, use_momentum, bool(nesterov),
                    table.tensor, table.start, table.chunk_size, s,
                    _args.per_tensor(decay, len(weights), acc), acc(lr), acc(momentum))
        w.write_back()
        if use_momentum:
            m.write_back()
    return n


def apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-7, decay=None, kind="l2",
               mode="normalize", clipnorm=1.0, eps=1e-7,
               chunk_size=DEFAULT_CHUNK_SIZE):
    """One Keras Adam/AdamW (amsgrad when `vhat` is given) step, in place.

    `step` is the 1-based step count t (iterations + 1). Returns the norms.
    """
    _args.check_pairs(weights, grads, ("weights", "grads"))
    _args.check_pairs(weights, m, ("weights", "m"))
    _args.check_pairs(weights, v, ("weights", "v"))
    amsgrad = vhat is not None
    if amsgrad:
        _args.check_pairs(weights, vhat, ("weights", "vhat"))
    dtype = _args.common_dtype(weights)
    acc = _args.acc_dtype(dtype)
    scalars = _args.adam_scalars(lr, beta_1, beta_2, adam_epsilon, step, acc)
    g = _Work(grads, dtype)
    table, n, s = _stats_and_scales(g, dtype, kind, mode, clipnorm, eps, chunk_size)
    if table.tensor.size:
        w, mw, vw = _Work(weights, dtype), _Work(m, dtype), _Work(v, dtype)
        vhw = _Work(vhat, dtype) if amsgrad else vw
        _adam_kernel(w.typed, mw.typed, vw.typed, vhw.typed, g.typed, amsgrad,
                     table.tensor, table.start, table.chunk_size, s,
                     _args.per_tensor(decay, len(weights), acc), *scalars)
        for work in (w, mw, vw) + ((vhw,) if amsgrad else ()):
            work.write_back()
    return n
