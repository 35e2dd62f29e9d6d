"""Numba CUDA (`@cuda.jit`) norms, scaling and fused updates.

The tensor list is packed into one flat device buffer with element offsets
(Numba kernels cannot follow a table of raw pointers) and cut into chunks by
`chunks.chunk_table`. Launches per step, whatever the number of tensors:

    chunk stats   one block per chunk: per-thread sums, a fixed-order tree
                  reduction in shared memory, and for `std` a second pass
                  over the chunk for sum (g - chunk mean)^2;
    finish        one thread per tensor merges its chunks in chunk order
                  (no atomics, bitwise reproducible) and applies
                  finalize_norm / scale_from_norm from `_finalize`;
    update        one block per chunk, g' = (g * pre[t]) * mult[t] on the fly:
                  one generic kernel for every rule (`_updates.rule_element`,
                  dispatched on the rule's code), its step scalars formed on
                  the host and passed by value. A trust-ratio rule
                  (`_updates.trust_elements`) takes three launches instead:
                  phase 1 (each chunk's sums of w^2 and u^2 by a fixed-order
                  tree, nothing stored), one thread per tensor adding its
                  chunks' sums in chunk order into its ratio, phase 2 (the
                  element steps again with the ratio; variables and slots
                  stored).

Runs on a GPU (through Numba's built-in `numba.cuda`, still shipped with
Numba 0.68 but deprecated upstream, or the `numba-cuda` package, which
replaces it when installed and is the one to use with CUDA 12/13 drivers)
and under the simulator (NUMBA_ENABLE_CUDASIM=1, set before Numba
is imported), where blocks default to 32 threads. float16 is computed in
float32 on the device; bfloat16 (no Numba type) runs on a float32 working
copy rounded back on the host. Signatures: see `normopt.kernels`.
"""

import collections
import functools
import math

import numba
import numpy as np
from numba import cuda

from normopt.kernels import _args, _finalize, _updates
from normopt.kernels.chunks import DEFAULT_CHUNK_SIZE, chunk_table

SIMULATED = bool(numba.config.ENABLE_CUDASIM)
if SIMULATED:
    from normopt.kernels import _simulator

    _simulator.lock_shared_arrays()
MAX_THREADS = 256
THREADS = 32 if SIMULATED else MAX_THREADS
MAX_BLOCKS = 65535

# Kernel launches by name since import (benchmarks report launches per step);
# updates count under their rule's name ("adam", "sgd_momentum", ...).
LAUNCHES = collections.Counter()

_tensor_finish = _finalize.tensor_finish(cuda.jit(device=True))
_decay_element = cuda.jit(device=True)(_updates.decay_element)
_rule_element = _updates.rule_element(cuda.jit(device=True))
_trust_moments, _trust_direction, _trust_ratio, _trust_step = _updates.trust_elements(
    cuda.jit(device=True))


@functools.lru_cache(maxsize=None)
def kernels(acc):
    """The kernels accumulating in numpy type `acc` (float32 or float64)."""

    @cuda.jit
    def chunk_stats(flat, offsets, tensor, start, chunk_size, moments, out):
        """out[c] = (count, sum|g|, sum g^2, max|g|, min|g|, mean, m2)."""
        sh = cuda.shared.array((5, MAX_THREADS), dtype=acc)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        c = cuda.blockIdx.x
        while c < tensor.size:
            t = tensor[c]
            base = offsets[t]
            lo = start[c]
            hi = min(lo + chunk_size, offsets[t + 1] - base)
            s_abs = acc(0)
            s_sq = acc(0)
            total = acc(0)
            mx = acc(0)
            mn = acc(math.inf)
            i = lo + tid
            while i < hi:
                x = acc(flat[base + i])
                ax = abs(x)
                s_abs += ax
                s_sq += x * x
                total += x
                mx = ax if (ax > mx or ax != ax) else mx  # a NaN stays
                mn = ax if (ax < mn or ax != ax) else mn
                i += nt
            sh[0, tid] = s_abs
            sh[1, tid] = s_sq
            sh[2, tid] = total
            sh[3, tid] = mx
            sh[4, tid] = mn
            cuda.syncthreads()
            stride = nt // 2
            while stride > 0:
                if tid < stride:
                    sh[0, tid] += sh[0, tid + stride]
                    sh[1, tid] += sh[1, tid + stride]
                    sh[2, tid] += sh[2, tid + stride]
                    a = sh[3, tid]
                    b = sh[3, tid + stride]
                    sh[3, tid] = a if (a > b or a != a) else b
                    a = sh[4, tid]
                    b = sh[4, tid + stride]
                    sh[4, tid] = a if (a < b or a != a) else b
                cuda.syncthreads()
                stride //= 2
            n = hi - lo
            mean = sh[2, 0] / acc(n)
            centered = acc(0)
            if moments:
                i = lo + tid
                while i < hi:
                    d = acc(flat[base + i]) - mean
                    centered += d * d
                    i += nt
            if tid == 0:
                out[c, 0] = acc(n)
                out[c, 1] = sh[0, 0]
                out[c, 2] = sh[1, 0]
                out[c, 3] = sh[3, 0]
                out[c, 4] = sh[4, 0]
                out[c, 5] = mean
            cuda.syncthreads()
            if moments:
                sh[0, tid] = centered
                cuda.syncthreads()
                stride = nt // 2
                while stride > 0:
                    if tid < stride:
                        sh[0, tid] += sh[0, tid + stride]
                    cuda.syncthreads()
                    stride //= 2
                if tid == 0:
                    out[c, 6] = sh[0, 0]
                cuda.syncthreads()
            elif tid == 0:
                out[c, 6] = acc(0)
            c += cuda.gridDim.x

    min_normal, max_exp, max_value = _finalize.ACC_LIMITS[np.dtype(acc).name]

    @cuda.jit
    def finish(stats, first, flat, offsets, kind, mode, clipnorm, eps, norms, scales):
        """One thread per tensor: merge its chunks in order, norm (the
        rescue pass over its elements where that overflowed), scale."""
        t = cuda.grid(1)
        if t >= first.size - 1:
            return
        base = offsets[t]
        norm, pre, mult = _tensor_finish(stats, first[t], first[t + 1], kind, mode,
                                         clipnorm, eps, flat, base, offsets[t + 1] - base,
                                         min_normal, max_exp, max_value)
        norms[t] = acc(norm)
        scales[t, 0] = acc(pre)
        scales[t, 1] = acc(mult)

    @cuda.jit
    def scale_kernel(flat, out, offsets, tensor, start, chunk_size, scales):
        c = cuda.blockIdx.x
        while c < tensor.size:
            t = tensor[c]
            base = offsets[t]
            hi = min(start[c] + chunk_size, offsets[t + 1] - base)
            pre = scales[t, 0]
            mult = scales[t, 1]
            i = start[c] + cuda.threadIdx.x
            while i < hi:
                out[base + i] = (acc(flat[base + i]) * pre) * mult
                i += cuda.blockDim.x
            c += cuda.gridDim.x

    @cuda.jit
    def apply_kernel(code, num_slots, w, s0, s1, s2, g, offsets, tensor, start, chunk_size,
                     scales, decay, sc):
        """The rule of `code` (`_updates.rule_element`) on g' = g * scale[t],
        after the decoupled decay where decay[t] != 0. s0..s2: the rule's
        slot buffers (the weights stand in for the ones it lacks; only the
        first `num_slots` are stored). sc: the step scalars, lr first."""
        lr = sc[0]
        c = cuda.blockIdx.x
        while c < tensor.size:
            t = tensor[c]
            base = offsets[t]
            hi = min(start[c] + chunk_size, offsets[t + 1] - base)
            pre = scales[t, 0]
            mult = scales[t, 1]
            wd = decay[t]
            i = start[c] + cuda.threadIdx.x
            while i < hi:
                j = base + i
                wj = acc(w[j])
                if wd != 0:
                    wj = _decay_element(wj, wd, lr)
                wj, a, b, h = _rule_element(code, wj, acc(s0[j]), acc(s1[j]), acc(s2[j]),
                                            (acc(g[j]) * pre) * mult, sc)
                w[j] = wj
                if num_slots > 0:
                    s0[j] = a
                if num_slots > 1:
                    s1[j] = b
                if num_slots > 2:
                    s2[j] = h
                i += cuda.blockDim.x
            c += cuda.gridDim.x

    @cuda.jit
    def trust_sums(code, w, s0, s1, s2, g, offsets, tensor, start, chunk_size, scales,
                   decay, sc, sums):
        """Phase 1 of trust-ratio rule `code`, nothing stored: sums[c] = (sum
        w^2, sum u^2) of chunk c (w decayed, u the direction of the updated
        slots): per thread, then a fixed-order tree in shared memory."""
        sh = cuda.shared.array((2, MAX_THREADS), dtype=acc)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        lr = sc[0]
        c = cuda.blockIdx.x
        while c < tensor.size:
            t = tensor[c]
            base = offsets[t]
            hi = min(start[c] + chunk_size, offsets[t + 1] - base)
            pre = scales[t, 0]
            mult = scales[t, 1]
            wd = decay[t]
            w_sq = acc(0)
            u_sq = acc(0)
            i = start[c] + tid
            while i < hi:
                j = base + i
                wj = acc(w[j])
                if wd != 0:
                    wj = _decay_element(wj, wd, lr)
                a, b, h = _trust_moments(code, acc(s0[j]), acc(s1[j]), acc(s2[j]),
                                         (acc(g[j]) * pre) * mult, sc)
                u = _trust_direction(code, a, b, h, sc)
                w_sq += wj * wj
                u_sq += u * u
                i += nt
            sh[0, tid] = w_sq
            sh[1, tid] = u_sq
            cuda.syncthreads()
            stride = nt // 2
            while stride > 0:
                if tid < stride:
                    sh[0, tid] += sh[0, tid + stride]
                    sh[1, tid] += sh[1, tid + stride]
                cuda.syncthreads()
                stride //= 2
            if tid == 0:
                sums[c, 0] = sh[0, 0]
                sums[c, 1] = sh[1, 0]
            cuda.syncthreads()
            c += cuda.gridDim.x

    @cuda.jit
    def trust_ratios(code, sums, first, sc, ratios):
        """One thread per tensor: its chunks' sums added in chunk order, its
        ratio."""
        t = cuda.grid(1)
        if t >= first.size - 1:
            return
        w_sq = acc(0)
        u_sq = acc(0)
        for c in range(first[t], first[t + 1]):
            w_sq += sums[c, 0]
            u_sq += sums[c, 1]
        ratios[t] = _trust_ratio(code, w_sq, u_sq, sc)

    @cuda.jit
    def trust_update(code, num_slots, w, s0, s1, s2, g, offsets, tensor, start, chunk_size,
                     scales, decay, ratios, sc):
        """Phase 2 of trust-ratio rule `code`: phase 1's decay and slots again,
        then the step with its tensor's ratio; w and the first `num_slots`
        slots stored."""
        lr = sc[0]
        c = cuda.blockIdx.x
        while c < tensor.size:
            t = tensor[c]
            base = offsets[t]
            hi = min(start[c] + chunk_size, offsets[t + 1] - base)
            pre = scales[t, 0]
            mult = scales[t, 1]
            wd = decay[t]
            r = ratios[t]
            i = start[c] + cuda.threadIdx.x
            while i < hi:
                j = base + i
                wj = acc(w[j])
                if wd != 0:
                    wj = _decay_element(wj, wd, lr)
                a, b, h = _trust_moments(code, acc(s0[j]), acc(s1[j]), acc(s2[j]),
                                         (acc(g[j]) * pre) * mult, sc)
                w[j] = _trust_step(code, wj, a, b, h, r, sc)
                if num_slots > 0:
                    s0[j] = a
                if num_slots > 1:
                    s1[j] = b
                if num_slots > 2:
                    s2[j] = h
                i += cuda.blockDim.x
            c += cuda.gridDim.x

    return dict(chunk_stats=chunk_stats, finish=finish, scale=scale_kernel,
                apply=apply_kernel, trust_sums=trust_sums, trust_ratios=trust_ratios,
                trust_update=trust_update)


class Packed:
    """A list of same-dtype arrays as one flat device buffer plus its chunk table.

    `pack` uploads (and for bfloat16 widens to float32); `unpack` returns host
    arrays of the original shapes and dtype. Benchmarks time the launch_*
    functions on a Packed list, without the packing copies.
    """

    def __init__(self, arrays, chunk_size=DEFAULT_CHUNK_SIZE, dtype=None):
        arrays = [np.asarray(a) for a in arrays]
        self.dtype = dtype or _args.common_dtype(arrays)
        self.shapes = [a.shape for a in arrays]
        self.acc = _args.acc_dtype(self.dtype)
        # float16 stays float16 on the device; bfloat16 has no Numba type.
        store = np.float16 if self.dtype == "float16" else (
            np.float32 if self.dtype == "bfloat16" else self.acc)
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.empty(max(int(offsets[-1]), 1), dtype=store)
        for a, lo, hi in zip(arrays, offsets[:-1], offsets[1:]):
            flat[lo:hi] = a.reshape(-1)
        self.size = int(offsets[-1])
        self.num_tensors = sizes.size
        self.flat = cuda.to_device(flat)
        self.offsets = cuda.to_device(offsets)
        self.table = chunk_table(sizes, chunk_size)
        self.tensor = cuda.to_device(self.table.tensor if self.table.tensor.size
                                     else np.zeros(1, np.int32))
        self.start = cuda.to_device(self.table.start if self.table.start.size
                                    else np.zeros(1, np.int64))
        self.first = cuda.to_device(self.table.first)

    @property
    def num_chunks(self):
        return int(self.table.tensor.size)

    def like(self, arrays):
        """Another Packed list with this one's layout (slots of the same vars)."""
        return Packed(arrays, self.table.chunk_size, self.dtype)

    def unpack(self):
        flat = self.flat.copy_to_host()
        offsets = self.offsets.copy_to_host()
        out = []
        for shape, lo, hi in zip(self.shapes, offsets[:-1], offsets[1:]):
            out.append(_to_dtype(flat[lo:hi].reshape(shape), self.dtype))
        return out


def _to_dtype(array, name):
    if name == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(name, copy=False)


def _launch(acc, name, blocks, threads, *args, label=None):
    LAUNCHES[label or name] += 1
    kernels(acc)[name][blocks, threads](*args)


def _grid(packed):
    return min(max(packed.num_chunks, 1), MAX_BLOCKS)


def launch_stats(packed, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
                 threads=None):
    """Two launches (chunk stats, finish); returns device (norms, scales),
    scales as (pre, mult) rows."""
    threads = threads or THREADS
    code = _finalize.statistic_kind_code(kind)
    stats = cuda.device_array((max(packed.num_chunks, 1), _finalize.NUM_STATS),
                              dtype=packed.acc)
    if packed.num_chunks:
        moments = bool(_finalize.stats_needed(code) & _finalize.STAT_MOMENTS)
        _launch(packed.acc, "chunk_stats", _grid(packed), threads,
            packed.flat, packed.offsets, packed.tensor, packed.start,
            packed.table.chunk_size, moments, stats)
    n = packed.num_tensors
    norms = cuda.device_array(max(n, 1), dtype=packed.acc)
    scales = cuda.device_array((max(n, 1), 2), dtype=packed.acc)  # (pre, mult)
    if n:
        _launch(packed.acc, "finish", (n + threads - 1) // threads, threads,
            stats, packed.first, packed.flat, packed.offsets, code,
            _finalize.mode_code(mode), float(clipnorm), float(eps), norms, scales)
    return norms, scales


def launch_scale(packed, scales, threads=None):
    """One launch; returns a Packed list holding g * scale[t]."""
    out = Packed.__new__(Packed)
    out.__dict__.update(packed.__dict__)
    out.flat = cuda.device_array_like(packed.flat)
    if packed.num_chunks:
        _launch(packed.acc, "scale", _grid(packed), threads or THREADS,
            packed.flat, out.flat, packed.offsets, packed.tensor, packed.start,
            packed.table.chunk_size, scales)
    return out


def launch_rule(rule, w, slots, g, scales, decay, *, lr, step=1, hyper=(), threads=None):
    """One launch of update rule `rule` on Packed lists (`slots`: the rule's
    slot lists, in its order), counted in LAUNCHES under the rule's name (a
    trust-ratio rule: its two phases under its name, and "trust_ratios")."""
    spec, sc = _updates.step_scalars(rule, lr, step, hyper, g.acc)
    if len(slots) != len(spec.slots):
        raise ValueError(f"rule {rule!r} takes {len(spec.slots)} slot lists "
                         f"{spec.slots}, got {len(slots)}")
    if not g.num_chunks:
        return
    threads = threads or THREADS
    flats = [x.flat for x in slots] + [w.flat] * (_updates.MAX_SLOTS - len(slots))
    if not spec.trust_ratio:
        _launch(g.acc, "apply", _grid(g), threads,
                spec.code, len(slots), w.flat, *flats, g.flat, g.offsets, g.tensor,
                g.start, g.table.chunk_size, scales, decay, sc, label=rule)
        return
    sums = cuda.device_array((g.num_chunks, 2), dtype=g.acc)
    ratios = cuda.device_array(g.num_tensors, dtype=g.acc)
    _launch(g.acc, "trust_sums", _grid(g), threads,
            spec.code, w.flat, *flats, g.flat, g.offsets, g.tensor, g.start,
            g.table.chunk_size, scales, decay, sc, sums, label=rule)
    _launch(g.acc, "trust_ratios", (g.num_tensors + threads - 1) // threads, threads,
            spec.code, sums, g.first, sc, ratios)
    _launch(g.acc, "trust_update", _grid(g), threads,
            spec.code, len(slots), w.flat, *flats, g.flat, g.offsets, g.tensor, g.start,
            g.table.chunk_size, scales, decay, ratios, sc, label=rule)


def launch_sgd(w, m, g, scales, decay, *, lr, momentum=0.0, nesterov=False,
               threads=None):
    """One launch of the SGD update on Packed lists (plain SGD when m is None)."""
    if m is None:
        launch_rule("sgd", w, [], g, scales, decay, lr=lr, threads=threads)
    else:
        launch_rule("sgd_nesterov" if nesterov else "sgd_momentum", w, [m], g, scales, decay,
                    lr=lr, hyper=(momentum,), threads=threads)


def launch_adam(w, m, v, vhat, g, scales, decay, *, lr, step, beta_1=0.9,
                beta_2=0.999, adam_epsilon=1e-7, threads=None):
    """One launch of the Adam update on Packed lists (amsgrad when vhat)."""
    rule, slots = ("adam", [m, v]) if vhat is None else ("adam_amsgrad", [m, v, vhat])
    launch_rule(rule, w, slots, g, scales, decay, lr=lr, step=step,
                hyper=(beta_1, beta_2, adam_epsilon), threads=threads)


def _host_list(arrays):
    arrays = [np.asarray(a) for a in arrays]
    return arrays, _args.common_dtype(arrays)


def norms(arrays, kind="l2", eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE, threads=None):
    """Per-tensor norms as a host array[N]."""
    arrays, _ = _host_list(arrays)
    packed = Packed(arrays, chunk_size)
    return launch_stats(packed, kind, "normalize", 1.0, eps, threads)[0].copy_to_host()[:len(arrays)]


def scales(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
           chunk_size=DEFAULT_CHUNK_SIZE, threads=None):
    """Per-tensor multipliers (pre * mult) as a host array[N]."""
    arrays, _ = _host_list(arrays)
    packed = Packed(arrays, chunk_size)
    s = launch_stats(packed, kind, mode, clipnorm, eps, threads)[1].copy_to_host()[:len(arrays)]
    return s[:, 0] * s[:, 1]


def scale(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
          chunk_size=DEFAULT_CHUNK_SIZE, threads=None):
    """New host arrays g * scale[t]."""
    arrays, _ = _host_list(arrays)
    packed = Packed(arrays, chunk_size)
    _, s = launch_stats(packed, kind, mode, clipnorm, eps, threads)
    return launch_scale(packed, s, threads).unpack()


def _write_back(targets, packed):
    for a, new in zip(targets, packed.unpack()):
        a[...] = new


def apply(rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None, kind="l2",
          mode="normalize", clipnorm=1.0, eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE,
          threads=None):
    """One step of update rule `rule` (`_updates.RULES`) on host arrays, in
    place on the weights and `slots` (slot-major: slots[q][t] is slot q of
    weight t). Returns the norms."""
    _, _, dtype = _args.check_apply(rule, weights, grads, slots, lr, step, hyper)
    slots = [] if slots is None else list(slots)
    g = Packed(grads, chunk_size, dtype)
    n, s = launch_stats(g, kind, mode, clipnorm, eps, threads)
    pw = g.like(weights)
    packed = [g.like(x) for x in slots]
    launch_rule(rule, pw, packed, g, s,
                cuda.to_device(_args.per_tensor(decay, max(len(weights), 1), g.acc)),
                lr=lr, step=step, hyper=hyper, threads=threads)
    for target, p in zip([weights] + slots, [pw] + packed):
        _write_back(target, p)
    return n.copy_to_host()[:len(weights)]


def apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0, nesterov=False,
              decay=None, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
              chunk_size=DEFAULT_CHUNK_SIZE, threads=None):
    """One Keras SGD step on host arrays, in place: `apply` with rule sgd
    (momenta None), sgd_momentum or sgd_nesterov. Returns the norms."""
    rule, slots, hyper = _args.sgd_rule(weights, momenta, momentum, nesterov)
    return apply(rule, weights, grads, slots, lr=lr, hyper=hyper, decay=decay, kind=kind,
                 mode=mode, clipnorm=clipnorm, eps=eps, chunk_size=chunk_size,
                 threads=threads)


def apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-7, decay=None, kind="l2",
               mode="normalize", clipnorm=1.0, eps=1e-7,
               chunk_size=DEFAULT_CHUNK_SIZE, threads=None):
    """One Keras Adam/AdamW/amsgrad step on host arrays, in place: `apply`
    with rule adam or adam_amsgrad. Returns the norms."""
    rule, slots = ("adam", [m, v]) if vhat is None else ("adam_amsgrad", [m, v, vhat])
    return apply(rule, weights, grads, slots, lr=lr, step=step,
                 hyper=(beta_1, beta_2, adam_epsilon), decay=decay, kind=kind, mode=mode,
                 clipnorm=clipnorm, eps=eps, chunk_size=chunk_size, threads=threads)
