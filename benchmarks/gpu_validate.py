"""Validate and time the CUDA kernels on a GPU, without TensorFlow.

One command on a machine with a GPU, CuPy and Numba-CUDA:

    python benchmarks/gpu_validate.py --out gpu-validate

1. parity of every kernel (norms for all kinds, scale in both modes, every
   update rule of csrc/normopt/update_rules.h through the generic apply,
   SGD/momentum/nesterov, Adam/amsgrad/AdamW; on CuPy also unit-wise and
   global norms, exclusions and adaptive clipping, and every rule with
   sparse gradients: rows and their indices), through CuPy (csrc/cuda
   compiled by cupy_kernels) and through Numba-CUDA (numba_cuda), against
   the NumPy float64 reference in tests/reference.py, across dtypes, shapes
   (empty, 1, odd, 2^24 + 5) and lists of 1 to 1000 tensors;
2. achieved bandwidth of each kernel (bytes moved / median time, CUDA events,
   after warm-up) next to a device-to-device copy timed in the same run;
3. kernel launches per step for 1, 10 and 1000 tensors;
4. run-to-run bitwise identity of per-tensor norms.

Writes OUT/gpu_validate.json and OUT/gpu_validate.md (a short table) and
prints the table. Target (issue [3/6]): fused Adam >= 80% of the copy
bandwidth on >= 16M elements.

`--dry-run` runs the same logic on tiny sizes under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, set here before Numba is imported), so the script
is exercised on machines without a GPU; its timings mean nothing.

Only NumPy, Numba, CuPy and normopt.kernels are imported: the normopt
package's own __init__ (which imports TensorFlow) is bypassed. Install on
the GPU machine, e.g.: pip install numpy cupy-cuda12x "numba-cuda[cu12]"
(use the cuda13 variants for CUDA 13); nvcc on PATH is used by CuPy when
present, else NVRTC.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MANY_MAX = 5000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-validate", help="output folder (JSON + table)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes under the Numba CUDA simulator (no GPU needed)")
    p.add_argument("--backends", default="cupy,numba_cuda",
                   help="comma-separated subset of cupy,numba_cuda")
    p.add_argument("--elements", type=int, default=1 << 24,
                   help="elements per bandwidth run (default 2^24)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-bandwidth", action="store_true")
    return p.parse_args(argv)


def import_kernels(dry_run):
    """normopt.kernels without normopt/__init__.py (which imports TensorFlow)."""
    if dry_run:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        sys.setswitchinterval(1e-5)  # the simulator busy-waits on its threads
    if "normopt" not in sys.modules:
        pkg = types.ModuleType("normopt")
        pkg.__path__ = [os.path.join(ROOT, "normopt")]
        sys.modules["normopt"] = pkg
    sys.path.insert(0, os.path.join(ROOT, "tests"))  # reference.py, helpers.py: NumPy only
    import helpers  # noqa: F401
    import reference  # noqa: F401
    from normopt.kernels import _args, chunks, cupy_kernels  # noqa: F401

    return sys.modules["normopt.kernels"]


# ---- configuration -------------------------------------------------------------


class Config:
    def __init__(self, args):
        self.dry = args.dry_run
        if self.dry:
            self.chunk_sizes = [8]
            self.kw = dict(threads=4)  # Numba CUDA only (simulator blocks)
            self.norm_cases = {"empty": [(0,)], "one": [(1,)], "odd": [(3,), (7, 5), (13,)],
                               "list_30": many(30, 12)}
            self.update_cases = {"odd": [(3,), (0,), (13,)]}
            self.unit_case = (5, 20)  # a unit-wise tensor, added to each update case
            self.sparse_case = ([(10, 3), (6, 5), (4,)], {0: [7, 2, 9, 0], 1: []})
            self.elements = 4096
            self.list_lengths = (1, 10, 40)
            self.dtypes = ("float32", "float16", "float64")
            self.bw_lists = {"1 tensor": [self.elements], "8 tensors": split(self.elements, 8)}
        else:
            self.chunk_sizes = [None, 8]  # default chunks, and tiny chunks (many boundaries)
            self.kw = {}
            self.norm_cases = {"empty": [(0,)], "one": [(1,)],
                               "odd": [(3,), (7, 13), (1001,), (0,), (65537,)],
                               "big_2^24+5": [((1 << 24) + 5,)],
                               "list_1000": many(1000, MANY_MAX)}
            self.update_cases = {"odd": [(3,), (7, 13), (1001,), (0,), (65537,)],
                                 "list_100": many(100, MANY_MAX)}
            self.unit_case = (600, 300)  # several unit blocks and row blocks
            # (dense shapes, {i: listed rows}): rows across chunks, runs of
            # absent rows longer than a default chunk, none listed
            self.sparse_case = ([(5000, 64), (700, 3), (1001,), (40, 9)],
                                {0: [4999, 3, 2500, 17, 18], 1: list(range(699, 0, -2)),
                                 3: []})
            self.elements = args.elements
            self.list_lengths = (1, 10, 1000)
            self.dtypes = ("float32", "float16", "bfloat16", "float64")
            self.bw_lists = {"1 tensor": [self.elements],
                             "1000 tensors": split(self.elements, 1000)}
        self.repeats = 3 if self.dry else args.repeats
        self.warmup = 1 if self.dry else args.warmup


def many(count, max_size, seed=7):
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=count)
    sizes[rng.random(count) < 0.2] = 0
    return [(int(s),) for s in sizes]


def split(total, parts):
    base = [total // parts] * parts
    base[-1] += total - sum(base)
    return base


# ---- backends --------------------------------------------------------------------


class Backend:
    """A kernel module behind NumPy-in/NumPy-out functions plus device timing."""

    name = ""

    def host(self):
        raise NotImplementedError

    def kw(self, cfg):
        """Extra keyword arguments of this backend's kernel functions."""
        return {}


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self, kernels):
        self.C = kernels.cupy_kernels
        from normopt.kernels.host_adapter import CupyOnHost

        self.adapter = CupyOnHost()
        self.cp = self.C.cp
        self.launches = self.C.LAUNCHES

    def host(self):
        return self.adapter

    def device_name(self):
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else props["name"]

    def time(self, fn, cfg):
        cp = self.cp
        for _ in range(cfg.warmup):
            fn()
        times = []
        for _ in range(cfg.repeats):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    def workloads(self, sizes, dtype):
        """{name: (fn, bytes moved)} on fresh device arrays of `sizes`."""
        cp, C = self.cp, self.C
        np_dtype = {"float32": cp.float32, "float16": cp.float16}[dtype]
        item = cp.dtype(np_dtype).itemsize
        rng = cp.random.default_rng(0)
        make = lambda: [rng.standard_normal(n, dtype=cp.float32).astype(np_dtype) for n in sizes]  # noqa: E731
        g, w, m, v = make(), make(), [cp.zeros(n, np_dtype) for n in sizes], [cp.zeros(n, np_dtype) for n in sizes]
        outs = [cp.empty_like(x) for x in g]
        plan = C.TensorList(g)
        sgd_state, adam_state = C.state_pointers(plan, w + m), C.state_pointers(plan, w + m + v)
        adam_hyper = (0.9, 0.999, 1e-7)
        decay = plan.per_tensor(None)
        _, s = C.launch_stats(plan, "l2")
        e = sum(sizes)
        src = cp.concatenate(g) if len(g) > 1 else g[0]
        dst = cp.empty_like(src)
        return {
            "copy (device to device)": (lambda: cp.copyto(dst, src), 2 * item * e),
            "norms (stats + finish)": (lambda: C.launch_stats(plan, "l2"), item * e),
            "norms std (two-pass chunks)": (lambda: C.launch_stats(plan, "std"), 2 * item * e),
            "scale": (lambda: C.launch_scale(plan, s, outs), 2 * item * e),
            "sgd momentum": (lambda: C.launch_apply(plan, "sgd_momentum", sgd_state, s, decay,
                                                    lr=1e-3, hyper=(0.9,)),
                             5 * item * e),
            "adam": (lambda: C.launch_apply(plan, "adam", adam_state, s, decay, lr=1e-3,
                                            hyper=adam_hyper),
                     7 * item * e),
            "adam step (norms + adam)": (
                lambda: (C.launch_stats(plan, "l2"),
                         C.launch_apply(plan, "adam", adam_state, s, decay, lr=1e-3,
                                        hyper=adam_hyper)),
                8 * item * e),
        }


class NumbaBackend(Backend):
    name = "numba_cuda"

    def __init__(self, kernels):
        from normopt.kernels import numba_cuda

        self.K = numba_cuda
        self.launches = numba_cuda.LAUNCHES

    def host(self):
        return self.K

    def kw(self, cfg):
        return dict(cfg.kw)

    def device_name(self):
        if self.K.SIMULATED:
            return "Numba CUDA simulator"
        return self.K.cuda.get_current_device().name.decode()

    def time(self, fn, cfg):
        cuda = self.K.cuda
        for _ in range(cfg.warmup):
            fn()
        times = []
        for _ in range(cfg.repeats):
            if self.K.SIMULATED:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
                continue
            start, stop = cuda.event(), cuda.event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cuda.event_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    def workloads(self, sizes, dtype, threads=None):
        import numpy as np

        K = self.K
        rng = np.random.default_rng(0)
        make = lambda: [rng.standard_normal(n).astype(dtype) for n in sizes]  # noqa: E731
        g = K.Packed(make())
        w, m, v = g.like(make()), g.like([np.zeros(n, dtype) for n in sizes]), g.like([np.zeros(n, dtype) for n in sizes])
        decay = K.cuda.to_device(np.zeros(len(sizes), g.acc))
        _, s = K.launch_stats(g, "l2", threads=threads)
        item = np.dtype(dtype).itemsize
        e = sum(sizes)
        dst = K.cuda.device_array_like(g.flat)
        return {
            "copy (device to device)": (lambda: dst.copy_to_device(g.flat), 2 * item * e),
            "norms (stats + finish)": (lambda: K.launch_stats(g, "l2", threads=threads), item * e),
            "adam": (lambda: K.launch_adam(w, m, v, None, g, s, decay, lr=1e-3, step=1,
                                           threads=threads), 7 * item * e),
        }


# ---- parity ---------------------------------------------------------------------


def np_dtype(name):
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def arrays_for(shapes, dtype, seed):
    """Random arrays; 16-bit ones get |x| in [0.5, 2] (no float16 underflow in v)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        if dtype in ("float16", "bfloat16"):
            x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            x = rng.standard_normal(shape)
        out.append(np.asarray(x).astype(np_dtype(dtype)))
    return out


def max_rel_err(got, want, dtype):
    """Largest |got - want| / (atol/rtol + |want|) scaled so that <= 1 passes."""
    import helpers
    import numpy as np

    tol = helpers.TOL[dtype]
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want) / (tol["atol"] + tol["rtol"] * np.abs(want))))


def parity(backend, cfg, records):
    import numpy as np
    import reference as R

    K = backend.host()
    kinds = R.NORM_NAMES + ("linf",)

    def record(op, dtype, case, chunk, detail, err):
        records.append(dict(backend=backend.name, op=op, dtype=dtype, case=case,
                            chunk_size=chunk, detail=detail, score=err, ok=err <= 1.0))

    for chunk in cfg.chunk_sizes:
        kw = backend.kw(cfg)
        if chunk:
            kw["chunk_size"] = chunk
        for dtype in cfg.dtypes:
            for case, shapes in cfg.norm_cases.items():
                if chunk and chunk < 64 and sum(int(np.prod(s)) for s in shapes) > 1 << 20:
                    continue  # tiny chunks on 2^24 elements: too many blocks, nothing new
                arrays = arrays_for(shapes, dtype, seed=1)
                for kind in kinds:
                    want = [R.norm(a, kind) for a in arrays]
                    record("norms", dtype, case, chunk, kind,
                           max_rel_err(K.norms(arrays, kind, 1e-7, **kw), want, dtype))
                for mode in ("normalize", "clip"):
                    clip = float(np.median([R.norm(a, "l2") for a in arrays]))
                    got = K.scale(arrays, "l2", mode, clip, 1e-7, **kw)
                    err = max([max_rel_err(gt, R.transform(a, "l2", mode, clip), dtype)
                               for gt, a in zip(got, arrays)] or [0.0])
                    record("scale", dtype, case, chunk, mode, err)
            for case, shapes in cfg.update_cases.items():
                for variant, (mu, nesterov) in {"sgd": (0.0, False), "momentum": (0.875, False),
                                                "nesterov": (0.875, True)}.items():
                    record("sgd", dtype, case, chunk, variant,
                           sgd_error(K, shapes, dtype, mu, nesterov, kw))
                for variant, (ams, wd) in {"adam": (False, None), "amsgrad": (True, None),
                                           "adamw": (False, 0.00390625)}.items():
                    record("adam", dtype, case, chunk, variant,
                           adam_error(K, shapes, dtype, ams, wd, kw))
                for rule in R.RULE_SLOTS:
                    record("rule", dtype, case, chunk, rule,
                           rule_error(K, rule, shapes, dtype, kw))
                if backend.name == "cupy":  # the Numba reference has per-tensor norms only
                    for wrapper in ("normalize", "clip", "adaptive"):
                        for granularity in ("tensor", "unit", "global"):
                            record("granularity", dtype, case, chunk, f"{wrapper}-{granularity}",
                                   granularity_error(K, shapes + [cfg.unit_case], dtype,
                                                     wrapper, granularity, kw))
            if backend.name == "cupy":  # numba_cuda takes dense gradients only
                shapes, rows = cfg.sparse_case
                for rule in R.RULE_SLOTS:
                    record("sparse", dtype, "sparse", chunk, rule,
                           rule_error(K, rule, shapes, dtype, kw, sparse=rows))


def sgd_error(K, shapes, dtype, mu, nesterov, kw, steps=2):
    import numpy as np
    import reference as R

    weights = arrays_for(shapes, dtype, seed=2)
    momenta = [np.zeros_like(w) for w in weights]
    ref = R.SGD(0.125, momentum=mu, nesterov=nesterov, weight_decay=0.0625)
    want = [np.asarray(w, np.float64) for w in weights]
    err = 0.0
    for step in range(steps):
        grads = arrays_for(shapes, dtype, seed=10 + step)
        for i, g in enumerate(grads):
            want[i] = ref.step(i, want[i], R.transform(g, "l2", "clip", 1.5))
        K.apply_sgd(weights, grads, momenta if mu else None, lr=0.125, momentum=mu,
                    nesterov=nesterov, decay=0.0625, kind="l2", mode="clip", clipnorm=1.5,
                    eps=1e-7, **kw)
        err = max([err] + [max_rel_err(w, x, dtype) for w, x in zip(weights, want)])
    return err


def adam_error(K, shapes, dtype, amsgrad, wd, kw, steps=2):
    import numpy as np
    import reference as R

    kind = "max" if dtype in ("float16", "bfloat16") else "l2"
    weights = arrays_for(shapes, dtype, seed=3)
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    vhat = [np.zeros_like(w) for w in weights] if amsgrad else None
    ref = R.Adam(0.0625, 0.875, 0.998046875, 1e-7, amsgrad=amsgrad, weight_decay=wd)
    want = [np.asarray(w, np.float64) for w in weights]
    err = 0.0
    for step in range(1, steps + 1):
        grads = arrays_for(shapes, dtype, seed=20 + step)
        for i, g in enumerate(grads):
            want[i] = ref.step(i, want[i], R.transform(g, kind, "normalize"))
        K.apply_adam(weights, grads, m, v, vhat, lr=0.0625, step=step, beta_1=0.875,
                     beta_2=0.998046875, adam_epsilon=1e-7, decay=wd, kind=kind,
                     mode="normalize", eps=1e-7, **kw)
        err = max([err] + [max_rel_err(w, x, dtype) for w, x in zip(weights, want)])
    return err


def rule_error(K, rule, shapes, dtype, kw, steps=2, sparse=None):
    """Every update rule through the generic apply, against reference.rule_step
    (float64) from the state the kernel stored, decay on, clip mode; with
    `sparse` ({i: rows}) gradient i given as those rows only, against the
    dense gradient they stand for (helpers.sparse_gradients)."""
    import helpers
    import numpy as np
    import reference as R

    weights = arrays_for(shapes, dtype, seed=4)
    slots = [[np.zeros_like(w) for w in weights] for _ in R.RULE_SLOTS[rule]]
    err = 0.0
    for step in range(1, steps + 1):
        grads = given = arrays_for(shapes, dtype, seed=30 + step)
        if sparse:
            grads, given = helpers.sparse_gradients(grads, sparse)
        hyper = R.RULE_HYPER[rule]
        if rule == "nadam":
            hyper = hyper + (R.nadam_u_product(hyper[0], step),)
        want = [R.rule_step(rule, w, [q[i] for q in slots], R.transform(g, "l2", "clip", 1.5),
                            0.0625, step, hyper, wd=0.0625)
                for i, (w, g) in enumerate(zip(weights, grads))]
        K.apply(rule, weights, given, slots, lr=0.0625, step=step, hyper=hyper, decay=0.0625,
                kind="l2", mode="clip", clipnorm=1.5, eps=1e-7, **kw)
        for i, (new_w, new_slots) in enumerate(want):
            err = max(err, max_rel_err(weights[i], new_w, dtype))
            for q, new in zip(slots, new_slots):
                err = max(err, max_rel_err(q[i], new, dtype))
    return err


def granularity_error(K, shapes, dtype, mode, granularity, kw):
    """One SGD step at lr 1 (w moves by -g') with the std norm per tensor,
    per unit (each index of the last axis; <= 1 axis: one unit) or over all
    gradients, gradient 1 excluded, in `mode` (adaptive: clip at 0.05 *
    max(norm(w), 1e-3)), against NumPy float64 from the same definitions."""
    import numpy as np
    import reference as R

    grads = arrays_for(shapes, dtype, seed=40)
    weights = arrays_for(shapes, dtype, seed=41)
    g64 = [np.asarray(g, np.float64) for g in grads]
    w64 = [np.asarray(w, np.float64) for w in weights]
    excluded = (1,)
    kept = [i for i in range(len(grads)) if i not in excluded]

    def norms(arrays):
        """Per array: each element's norm (std, eps 1e-7)."""
        if granularity == "global":
            shared = R.norm(np.concatenate([arrays[i].ravel() for i in kept]), "std", 1e-7)
            return [np.full(a.shape, shared) for a in arrays]
        out = []
        for a in arrays:
            if granularity == "unit" and a.ndim >= 2:
                cols = a.reshape(-1, a.shape[-1]).T
                out.append(np.broadcast_to([R.norm(c, "std", 1e-7) for c in cols], a.shape))
            else:
                out.append(np.full(a.shape, R.norm(a, "std", 1e-7)))
        return out

    gn, wn = norms(g64), norms(w64)
    want = []
    for i, (g, w, n) in enumerate(zip(g64, w64, gn)):
        if i in excluded:
            scaled = g
        elif mode == "normalize":
            scaled = g / n
        else:
            t = 0.05 * np.maximum(wn[i], 1e-3) if mode == "adaptive" else 1.5
            scaled = np.where(n >= t, g * t / n, g)
        want.append(w - scaled)
    K.apply("sgd", weights, grads, [], lr=1.0, kind="std", mode=mode,
            clipnorm=0.05 if mode == "adaptive" else 1.5, eps=1e-7, granularity=granularity,
            excluded=excluded, weight_eps=1e-3, **kw)
    return max([max_rel_err(w, x, dtype) for w, x in zip(weights, want)] or [0.0])


# ---- launches, determinism, bandwidth ---------------------------------------------


def launches_per_step(backend, cfg):
    import numpy as np

    K = backend.host()
    out = {}
    for count in cfg.list_lengths:
        shapes = [(5,)] * count
        w, g = arrays_for(shapes, "float32", 1), arrays_for(shapes, "float32", 2)
        m = [np.zeros_like(x) for x in w]
        v = [np.zeros_like(x) for x in w]
        backend.launches.clear()
        K.apply_adam(w, g, m, v, lr=1e-3, step=1, **backend.kw(cfg))
        out[str(count)] = sum(backend.launches.values())
    return out


def bitwise_repeatable(backend, cfg):
    import numpy as np

    K = backend.host()
    shapes = cfg.norm_cases["list_1000" if "list_1000" in cfg.norm_cases else "list_30"]
    arrays = arrays_for(shapes, "float32", 4)
    runs = [np.asarray(K.norms(arrays, kind, 1e-7, **backend.kw(cfg))).tobytes()
            for kind in ("l2", "std") for _ in range(5)]
    return all(r == runs[0] for r in runs[:5]) and all(r == runs[5] for r in runs[5:])


def bandwidth(backend, cfg):
    rows = []
    dtypes = ("float32",) if cfg.dry else ("float32", "float16")
    for dtype in dtypes:
        for label, sizes in cfg.bw_lists.items():
            work = backend.workloads(sizes, dtype, **backend.kw(cfg))
            copy_fn, copy_bytes = work.pop("copy (device to device)")
            copy_bw = copy_bytes / backend.time(copy_fn, cfg)
            rows.append(dict(backend=backend.name, dtype=dtype, tensors=label,
                             elements=sum(sizes), kernel="copy (device to device)",
                             gbps=copy_bw / 1e9, of_copy=1.0))
            for name, (fn, nbytes) in work.items():
                bw = nbytes / backend.time(fn, cfg)
                rows.append(dict(backend=backend.name, dtype=dtype, tensors=label,
                                 elements=sum(sizes), kernel=name, gbps=bw / 1e9,
                                 of_copy=bw / copy_bw))
    return rows


# ---- report -----------------------------------------------------------------------


def table(result):
    lines = [f"# GPU validation ({result['date']}, {result['device']})", ""]
    parity_rows = result["parity"]
    if parity_rows:
        bad = [r for r in parity_rows if not r["ok"]]
        lines.append(f"Parity: {len(parity_rows) - len(bad)}/{len(parity_rows)} cases within "
                     "tolerance (score = error / (atol + rtol*|ref|), <= 1 passes)")
        for r in bad[:20]:
            lines.append(f"  FAIL {r['backend']} {r['op']} {r['dtype']} {r['case']} "
                         f"chunk={r['chunk_size']} {r['detail']}: score {r['score']:.3g}")
        lines.append("")
    for name, b in result["backends"].items():
        lines.append(f"{name}: launches per Adam step by tensor count {b.get('launches')}, "
                     f"norms bitwise identical run to run: {b.get('bitwise_identical')}")
    rows = result["bandwidth"]
    if rows:
        lines += ["", "| backend | dtype | tensors | elements | kernel | GB/s | of copy |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['backend']} | {r['dtype']} | {r['tensors']} | {r['elements']} | "
                         f"{r['kernel']} | {r['gbps']:.1f} | {100 * r['of_copy']:.0f}% |")
    for t in result["targets"]:
        lines.append(f"Target: {t['what']}: {t['value']} -> {'MET' if t['met'] else 'NOT MET'}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    kernels = import_kernels(args.dry_run)
    cfg = Config(args)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    backends, notes = [], []
    if "cupy" in wanted:
        ok, reason = kernels.cupy_kernels.available()
        if ok:
            backends.append(CupyBackend(kernels))
        else:
            notes.append(f"cupy skipped: {reason}")
    if "numba_cuda" in wanted:
        try:
            backend = NumbaBackend(kernels)
            if not (backend.K.SIMULATED or backend.K.cuda.is_available()):
                raise RuntimeError("numba.cuda reports no GPU")
            backends.append(backend)
        except Exception as exc:  # noqa: BLE001 - report why and go on
            notes.append(f"numba_cuda skipped: {exc}")
    if not backends:
        print("no backend can run:", "; ".join(notes))
        return 2
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  device=backends[0].device_name(), dry_run=cfg.dry, host=platform.node(),
                  notes=notes, parity=[], bandwidth=[], backends={}, targets=[])
    for backend in backends:
        t0 = time.time()
        if not args.skip_parity:
            parity(backend, cfg, result["parity"])
        info = result["backends"].setdefault(backend.name, {})
        info["launches"] = launches_per_step(backend, cfg)
        info["bitwise_identical"] = bitwise_repeatable(backend, cfg)
        if not args.skip_bandwidth:
            result["bandwidth"] += bandwidth(backend, cfg)
        info["seconds"] = round(time.time() - t0, 1)
        print(f"{backend.name}: done in {info['seconds']} s", flush=True)
    adam = [r for r in result["bandwidth"] if r["backend"] == "cupy" and r["kernel"] == "adam"
            and r["elements"] >= (1 << 24)]
    if adam:
        worst = min(r["of_copy"] for r in adam)
        result["targets"].append(dict(what="CuPy fused Adam >= 80% of copy bandwidth, >= 16M elements "
                                           "(worst case)", value=f"{100 * worst:.0f}%",
                                      met=worst >= 0.8))
    for name, info in result["backends"].items():
        counts = set(info["launches"].values())
        result["targets"].append(dict(what=f"{name} launches per step independent of tensor count",
                                      value=info["launches"], met=len(counts) == 1))
        result["targets"].append(dict(what=f"{name} per-tensor norms bitwise identical run to run",
                                      value=info["bitwise_identical"], met=info["bitwise_identical"]))
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_validate.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = table(result)
    with open(os.path.join(args.out, "gpu_validate.md"), "w") as f:
        f.write(text)
    print(text)
    failed = [r for r in result["parity"] if not r["ok"]] or [t for t in result["targets"] if not t["met"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
