"""CuPy front end of the project's own CUDA kernels (csrc/cuda).

`csrc/cuda/cupy_module.cu` (the extern "C" entry points of
entry_points.cuh, no host code) is compiled once by `cupy.RawModule` with
`csrc/` on the include path; kernels are looked up by their plain names
(normopt_apply_adam_f32, ...), which both of CuPy's compilers resolve
alike; the update rules and their kernels' names come from the table in
csrc/normopt/update_rules.h, read by `rule_names`. The functions take CuPy
arrays and follow `normopt.kernels`'s signatures; they return CuPy arrays and
never synchronise the device. Launches per call: norms/scales 2, scale 3,
apply (and apply_sgd, apply_adam) 3, whatever the number of tensors.

Compiler: `nvcc` when found, else NVRTC (CuPy's default, no jitify); set
NORMOPT_CUPY_BACKEND=nvrtc|nvcc to choose. The tests compile both routes
(tests/test_cuda_compile.py). CuPy passes -ftz=true on both: float32
denormals (below 1.2e-38) flush to zero, which the TF op's nvcc build does
not do. NORMOPT_CSRC overrides the location of csrc/ (default: the
repository checkout this file lives in). bfloat16 data: CuPy has no
bfloat16 dtype, so pass uint16 arrays holding bfloat16 bits with
`dtype="bfloat16"`.

Importing this module needs neither CuPy nor a GPU; calling it does.
"""

import collections
import functools
import os
import re
import shutil

import numpy as np

from normopt.kernels import _args, _finalize
from normopt.kernels.chunks import DEFAULT_CHUNK_SIZE, chunk_table

try:
    import cupy as cp
except ImportError:  # pragma: no cover - depends on the machine
    cp = None

THREADS = 256  # csrc/cuda/tensor_list.cuh: kThreads
MAX_BLOCKS = 1 << 20
FINISH_THREADS = 128
STATS_BYTES = {"float32": 32, "float64": 56}  # sizeof(NormStats<float|double>)
SUFFIX = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
# The launchers' dtype codes (csrc/normopt/dtype_codes.h), read by finish's rescue pass.
DTYPE_CODE = _finalize.DTYPE_CODES

# Kernel launches by name since import (benchmarks report launches per step).
LAUNCHES = collections.Counter()


def available():
    """(True, None) when CuPy and a GPU are usable, else (False, reason)."""
    if cp is None:
        return False, "CuPy is not installed"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any driver error means "no GPU"
        return False, f"no usable CUDA device ({exc})"
    if count < 1:
        return False, "no CUDA device"
    return True, None


def _require():
    ok, reason = available()
    if not ok:
        raise RuntimeError(f"normopt.kernels.cupy_kernels needs CuPy and a GPU: {reason}")


def csrc_dir():
    path = os.environ.get("NORMOPT_CSRC") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
    if not os.path.isfile(os.path.join(path, "cuda", "cupy_module.cu")):
        raise RuntimeError(f"csrc/cuda/cupy_module.cu not found under {path}; set NORMOPT_CSRC")
    return path


def _backend():
    choice = os.environ.get("NORMOPT_CUPY_BACKEND")
    if choice:
        return choice
    return "nvcc" if (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")) else "nvrtc"


@functools.lru_cache(maxsize=None)
def rule_names(csrc=None):
    """The update rules of the table NORMOPT_UPDATE_RULES in
    csrc/normopt/update_rules.h, in table order."""
    path = os.path.join(csrc or csrc_dir(), "normopt", "update_rules.h")
    with open(path) as f:
        text = f.read()
    table = text[text.index("#define NORMOPT_UPDATE_RULES(X)"):]
    table = table[:table.index("\n\n")]
    return tuple(re.findall(r"X\((\w+),\s*\w+\)", table))


def entry_names(dtype):
    """Short name -> entry point in csrc/cuda/entry_points.cuh, for one dtype;
    update rule R's kernel is under "apply_R"."""
    suf = SUFFIX[dtype]
    acc = "f64" if dtype == "float64" else "f32"
    names = {
        "chunk_stats": f"normopt_chunk_stats_{suf}",
        "finish": f"normopt_finish_{acc}",
        "scales_from_norms": f"normopt_scales_from_norms_{acc}",
        "scale": f"normopt_scale_{suf}",
    }
    for rule in rule_names():
        names[f"apply_{rule}"] = f"normopt_apply_{rule}_{suf}"
    return names


def nvrtc_options(csrc):
    """Compiler options of the RawModule (CuPy adds the CUDA and CCCL
    includes and -ftz=true itself)."""
    return ("-std=c++17", f"-I{csrc}")


@functools.lru_cache(maxsize=None)
def _module():
    _require()
    # No jitify on the NVRTC route: the headers need only <cuda/std/...> under
    # NVRTC, which CuPy's bundled libcu++ provides, and jitify's first compile
    # takes minutes (tests/test_cuda_compile.py compiles this route).
    return cp.RawModule(code='#include "cuda/cupy_module.cu"\n',
                        options=nvrtc_options(csrc_dir()), backend=_backend())


@functools.lru_cache(maxsize=None)
def kernels(dtype):
    """The compiled kernels of one dtype, by short name."""
    module = _module()
    return {short: module.get_function(name) for short, name in entry_names(dtype).items()}


def _launch(dtype, name, blocks, threads, args):
    LAUNCHES[name] += 1
    kernels(dtype)[name]((int(blocks),), (int(threads),), args)


class TensorList:
    """Device-side description of a list of same-dtype CuPy arrays: pointer
    table, sizes and chunk table. Build once and pass as `plan=` to reuse it
    across steps (benchmarks do); the arrays must stay alive and in place."""

    def __init__(self, arrays, chunk_size=DEFAULT_CHUNK_SIZE, dtype=None):
        _require()
        self.arrays = list(arrays)
        self.dtype = dtype or _args.common_dtype(self.arrays)
        if self.dtype not in SUFFIX:
            raise TypeError(f"dtype {self.dtype} has no kernel")
        if self.dtype == "bfloat16":
            for a in self.arrays:
                if np.dtype(a.dtype).itemsize != 2:
                    raise TypeError("bfloat16 data must be passed as 2-byte (uint16) arrays")
        self.acc = np.float64 if self.dtype == "float64" else np.float32
        self.sizes = np.array([a.size for a in self.arrays], dtype=np.int64)
        self.table = chunk_table(self.sizes, chunk_size)
        self.num_chunks = int(self.table.tensor.size)
        pad = lambda x, dt: cp.asarray(x if x.size else np.zeros(1, dt))  # noqa: E731
        self.sizes_d = pad(self.sizes, np.int64)
        self.tensor_d = pad(self.table.tensor, np.int32)
        self.start_d = pad(self.table.start, np.int64)
        self.first_d = cp.asarray(self.table.first)
        self._tables = {}
        self._owners = []  # arrays behind the cached pointer tables
        self.ptrs = self.pointers(self.arrays, "arrays")

    def pointers(self, arrays, what):
        """Device table of data pointers of `arrays` (same shapes as this list),
        cached so that a reused plan copies nothing to the device per step.
        The plan keeps the arrays alive: a launch through the table must not
        write into memory their owner has freed."""
        arrays = list(arrays)
        key = (what, tuple(b.data.ptr for b in arrays))
        if key in self._tables:
            return self._tables[key]
        if len(arrays) != len(self.arrays):
            raise ValueError(f"{what} has {len(arrays)} arrays, expected {len(self.arrays)}")
        for i, (a, b) in enumerate(zip(self.arrays, arrays)):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"{what}[{i}] differs from the list in shape or dtype")
            if not b.flags.c_contiguous:
                raise ValueError(f"{what}[{i}] is not C-contiguous")
        table = np.array(list(key[1]) or [0], dtype=np.uint64)
        self._tables[key] = cp.asarray(table)
        self._owners.append(arrays)
        return self._tables[key]

    def per_tensor(self, value):
        """Per-tensor values (decay) on the device, cached like `pointers`."""
        host = _args.per_tensor(value, max(len(self.arrays), 1), self.acc)
        key = ("per_tensor", host.tobytes())
        if key not in self._tables:
            self._tables[key] = cp.asarray(host)
        return self._tables[key]

    def values(self, host):
        """A host array on the device, cached by content (the rules' args)."""
        key = ("values", host.dtype.str, host.tobytes())
        if key not in self._tables:
            self._tables[key] = cp.asarray(host)
        return self._tables[key]

    def grid(self):
        return min(max(self.num_chunks, 1), MAX_BLOCKS)


def _plan(arrays, chunk_size, dtype, plan):
    if plan is not None:
        return plan
    return TensorList([cp.ascontiguousarray(a) for a in arrays], chunk_size, dtype)


def launch_stats(plan, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
                 grad_norms=None):
    """Chunk stats + finish (2 launches); returns device (norms, scales),
    scales as (pre, mult) rows. `grad_norms`, a device array of N values of
    the accumulation type, receives each gradient's L2 norm sqrt(sum g^2),
    from the same statistics (as the TF op's output of that name)."""
    code = _finalize.kind_code(kind)
    acc_name = "float64" if plan.acc is np.float64 else "float32"
    n = len(plan.arrays)
    norms = cp.empty(max(n, 1), dtype=plan.acc)
    scales = cp.empty((max(n, 1), 2), dtype=plan.acc)  # TensorScale (pre, mult) rows
    work = cp.empty(STATS_BYTES[acc_name] * max(plan.num_chunks, 1), dtype=cp.uint8)
    if plan.num_chunks:
        _launch(plan.dtype, "chunk_stats", plan.grid(), THREADS, (
            plan.ptrs, plan.sizes_d, plan.tensor_d, plan.start_d,
            np.int64(plan.num_chunks), np.int64(plan.table.chunk_size),
            np.uint32(_finalize.stats_needed(code)), work))
    if n:
        _launch(plan.dtype, "finish", (n + FINISH_THREADS - 1) // FINISH_THREADS,
                FINISH_THREADS, (work, plan.first_d, np.int32(n), np.int32(code),
                                 np.int32(_finalize.mode_code(mode)), plan.acc(clipnorm),
                                 plan.acc(eps), plan.ptrs, plan.sizes_d,
                                 np.int32(DTYPE_CODE[plan.dtype]), norms, scales,
                                 np.uintp(0) if grad_norms is None else grad_norms))
    return norms[:n], scales[:n]


def launch_scale(plan, scales, outs):
    if plan.num_chunks:
        _launch(plan.dtype, "scale", plan.grid(), THREADS, (
            plan.ptrs, plan.pointers(outs, "outs"), plan.sizes_d, plan.tensor_d,
            plan.start_d, np.int64(plan.num_chunks), np.int64(plan.table.chunk_size),
            scales))


MAX_RULE_ARGS = 8  # update_rules.h: kMaxRuleArgs


def launch_apply(plan, rule, state_ptrs, scales, decay, *, lr, step=1, hyper=()):
    """One launch of update rule `rule`; `state_ptrs` from plan.pointers over
    the weights then each slot's arrays (slot-major)."""
    args = np.zeros(MAX_RULE_ARGS, np.float64)
    args[:2 + len(hyper)] = [lr, step, *hyper]
    if plan.num_chunks:
        _launch(plan.dtype, f"apply_{rule}", plan.grid(), THREADS, (
            state_ptrs, np.int32(len(plan.arrays)), plan.ptrs, plan.sizes_d,
            plan.tensor_d, plan.start_d, np.int64(plan.num_chunks),
            np.int64(plan.table.chunk_size), scales, decay, plan.values(args)))


def norms(arrays, kind="l2", eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE, dtype=None, plan=None):
    """Per-tensor norms, a CuPy array[N]."""
    _require()
    return launch_stats(_plan(arrays, chunk_size, dtype, plan), kind, "normalize", 1.0, eps)[0]


def scales(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
           chunk_size=DEFAULT_CHUNK_SIZE, dtype=None, plan=None):
    """Per-tensor multipliers (pre * mult), a CuPy array[N]."""
    _require()
    s = launch_stats(_plan(arrays, chunk_size, dtype, plan), kind, mode, clipnorm, eps)[1]
    return s[:, 0] * s[:, 1]


def scale(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
          chunk_size=DEFAULT_CHUNK_SIZE, dtype=None, plan=None):
    """New CuPy arrays g * scale[t]."""
    _require()
    plan = _plan(arrays, chunk_size, dtype, plan)
    _, s = launch_stats(plan, kind, mode, clipnorm, eps)
    outs = [cp.empty_like(a) for a in plan.arrays]
    launch_scale(plan, s, outs)
    return outs


def apply(rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None, kind="l2",
          mode="normalize", clipnorm=1.0, eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE,
          dtype=None, plan=None):
    """One step of update rule `rule` on CuPy arrays, in place; `slots`
    slot-major (one list per slot of the rule). Returns the norms."""
    _require()
    if rule not in rule_names():
        raise ValueError(f"unknown update rule {rule!r}; expected one of {rule_names()}")
    plan = _plan(grads, chunk_size, dtype, plan)
    n, s = launch_stats(plan, kind, mode, clipnorm, eps)
    state = [a for group in [weights, *slots] for a in group]
    launch_apply(plan, rule, state_pointers(plan, state), s, plan.per_tensor(decay),
                 lr=lr, step=step, hyper=hyper)
    return n


def state_pointers(plan, state):
    """Device table of the (1 + slots) * N state arrays' pointers, each
    checked against its gradient; cached like `TensorList.pointers`."""
    n = len(plan.arrays)
    groups = [plan.pointers(state[k:k + n], "state") for k in range(0, len(state), n)]
    key = ("state", tuple(int(g.data.ptr) for g in groups))
    if key not in plan._tables:
        plan._tables[key] = cp.concatenate([g[:n] for g in groups]) if n else groups[0]
    return plan._tables[key]


def apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0, nesterov=False, **kw):
    """One Keras SGD step on CuPy arrays, in place (rule sgd, sgd_momentum or
    sgd_nesterov). Returns the norms."""
    _args.check_momenta(weights, momenta, momentum)
    if momenta is None:
        return apply("sgd", weights, grads, [], lr=lr, **kw)
    return apply("sgd_nesterov" if nesterov else "sgd_momentum", weights, grads, [momenta],
                 lr=lr, hyper=(momentum,), **kw)


def apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9, beta_2=0.999,
               adam_epsilon=1e-7, **kw):
    """One Keras Adam/AdamW/amsgrad step on CuPy arrays, in place. Returns the norms."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (iterations + 1), got {step}")
    rule, slots = ("adam", [m, v]) if vhat is None else ("adam_amsgrad", [m, v, vhat])
    return apply(rule, weights, grads, slots, lr=lr, step=step,
                 hyper=(beta_1, beta_2, adam_epsilon), **kw)
