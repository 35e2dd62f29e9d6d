"""CuPy front end of the project's own CUDA kernels (csrc/cuda).

`csrc/cuda/cupy_module.cu` (the extern "C" entry points of
entry_points.cuh, no host code) is compiled once by `cupy.RawModule` with
`csrc/` on the include path; kernels are looked up by their plain names
(normopt_apply_adam_f32, ...), which both of CuPy's compilers resolve
alike; the update rules and their kernels' names come from the table in
csrc/normopt/update_rules.h, read by `rule_names`. The functions take CuPy
arrays and follow `normopt.kernels`'s signatures; they return CuPy arrays and
never synchronise the device. Launches per call: norms/scales 2, scale 3,
apply (and apply_sgd, apply_adam) 3, whatever the number of tensors; more
for a unit or global norm, exclusions or adaptive clipping (`launch_scales`);
a trust-ratio rule (`trust_ratio_rules`) 2 more: its apply kernel twice
(phase 1 and 2) with normopt_trust_sums between them.

`apply` also takes sparse gradients (`SparseRows`: rows of the dense
gradient and their indices) at granularity "tensor" or "global": the
kernels read the rows in place and the absent rows as zeros, which are never
built (csrc/cuda/chunk_table.h, build_sparse_chunk_table). Their indices are
read on the host, as the TF op's GPU kernel reads them from host memory.

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
from normopt.kernels.chunks import DEFAULT_CHUNK_SIZE, chunk_table, sparse_chunk_table

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


@functools.lru_cache(maxsize=None)
def trust_ratio_rules(csrc=None):
    """The trust-ratio rules, NORMOPT_TRUST_RATIO_RULES in
    csrc/normopt/update_rules.h (two-phase: see update_kernels.cuh)."""
    path = os.path.join(csrc or csrc_dir(), "normopt", "update_rules.h")
    with open(path) as f:
        text = f.read()
    m = re.search(r"^#define NORMOPT_TRUST_RATIO_RULES\(X\)(.*)$", text, re.M)
    if m is None:
        raise RuntimeError(f"NORMOPT_TRUST_RATIO_RULES not found in {path}")
    return tuple(re.findall(r"X\((\w+)\)", m.group(1)))


def entry_names(dtype):
    """Short name -> entry point in csrc/cuda/entry_points.cuh, for one dtype;
    update rule R's kernel is under "apply_R"."""
    suf = SUFFIX[dtype]
    acc = "f64" if dtype == "float64" else "f32"
    names = {
        "chunk_stats": f"normopt_chunk_stats_{suf}",
        "finish": f"normopt_finish_{acc}",
        "scales_from_norms": f"normopt_scales_from_norms_{acc}",
        "global_finish": f"normopt_global_finish_{acc}",
        "unit_stats": f"normopt_unit_stats_{suf}",
        "unit_finish": f"normopt_unit_finish_{acc}",
        "trust_sums": f"normopt_trust_sums_{acc}",
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


class SparseRows(collections.namedtuple("SparseRows", "values indices")):
    """A sparse gradient for `apply`: row k of `values` (a CuPy array of
    shape [K, *variable.shape[1:]]) is row indices[k] of the dense gradient
    (K ints, host or device, in any order, each at most once); every other
    row of it is zero."""


class TensorList:
    """Device-side description of a list of same-dtype CuPy arrays: pointer
    table, sizes and chunk table. Build once and pass as `plan=` to reuse it
    across steps (benchmarks do); the arrays must stay alive and in place.

    `shapes` (default: the arrays') are the dense tensors' shapes, which the
    state arrays of `apply` have; `sparse` maps t to the indices of sparse
    gradient t, whose array holds those rows of its dense tensor (SparseRows).
    """

    def __init__(self, arrays, chunk_size=DEFAULT_CHUNK_SIZE, dtype=None, shapes=None,
                 sparse=None):
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
        self.shapes = [tuple(a.shape) for a in self.arrays] if shapes is None else [
            tuple(int(d) for d in shape) for shape in shapes]
        self.sizes = np.array([int(np.prod(shape)) for shape in self.shapes], dtype=np.int64)
        self.sparse = dict(sparse or {})
        if self.sparse:
            self.table = sparse_chunk_table(self.sizes, chunk_size, self._sparse_rows())
        else:
            self.table = chunk_table(self.sizes, chunk_size)
        self.num_chunks = int(self.table.tensor.size)
        pad = lambda x, dt: cp.asarray(x if x.size else np.zeros(1, dt))  # noqa: E731
        self.sizes_d = pad(self.sizes, np.int64)
        self.tensor_d = pad(self.table.tensor, np.int32)
        self.start_d = pad(self.table.start, np.int64)
        self.first_d = cp.asarray(self.table.first)
        null = np.uintp(0)
        self.grad_d = null if self.table.grad is None else pad(self.table.grad, np.int64)
        self.zeros_d = null if self.table.zeros is None else pad(self.table.zeros, np.int64)
        self._tables = {}
        self._owners = []  # arrays behind the cached pointer tables
        self.ptrs = self.pointers(self.arrays, "arrays", [a.shape for a in self.arrays])

    def _sparse_rows(self):
        """{t: (row_elems, host indices)} of the sparse gradients, each
        checked against its dense shape."""
        rows = {}
        for t, indices in self.sparse.items():
            shape, values = self.shapes[t], self.arrays[t]
            indices = indices.get() if hasattr(indices, "get") else np.asarray(indices)
            indices = np.asarray(indices, np.int64).reshape(-1)
            if len(shape) < 1 or tuple(values.shape) != (indices.size, *shape[1:]):
                raise ValueError(
                    f"sparse gradient {t}: values of shape {tuple(values.shape)} and "
                    f"{indices.size} indices do not make rows of a tensor of shape {shape}")
            rows[t] = (int(np.prod(shape[1:])), indices)
        return rows

    def pointers(self, arrays, what, shapes=None):
        """Device table of data pointers of `arrays` (of this list's dense
        shapes, or `shapes`), cached so that a reused plan copies nothing to
        the device per step. The plan keeps the arrays alive: a launch through
        the table must not write into memory their owner has freed."""
        arrays = list(arrays)
        key = (what, tuple(b.data.ptr for b in arrays))
        if key in self._tables:
            return self._tables[key]
        if len(arrays) != len(self.arrays):
            raise ValueError(f"{what} has {len(arrays)} arrays, expected {len(self.arrays)}")
        shapes = self.shapes if shapes is None else [tuple(s) for s in shapes]
        for i, (a, b) in enumerate(zip(self.arrays, arrays)):
            if tuple(b.shape) != shapes[i] or a.dtype != b.dtype:
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


def _plan(arrays, chunk_size, dtype, plan, shapes=None):
    """`plan`, or the TensorList of `arrays`; SparseRows among them (`apply`
    only, which gives the dense `shapes`) make a list with sparse gradients."""
    if plan is not None:
        return plan
    sparse = {t: a.indices for t, a in enumerate(arrays) if isinstance(a, SparseRows)}
    if sparse and shapes is None:
        raise TypeError("sparse gradients (SparseRows) are taken by apply only")
    if shapes is not None and len(shapes) != len(arrays):
        raise ValueError(f"{len(arrays)} gradients for {len(shapes)} variables")
    values = [a.values if isinstance(a, SparseRows) else a for a in arrays]
    return TensorList([cp.ascontiguousarray(a) for a in values], chunk_size, dtype,
                      shapes=shapes, sparse=sparse)


def _chunk_stats(plan, code):
    """The chunk-statistics workspace of `plan` (1 launch)."""
    acc_name = "float64" if plan.acc is np.float64 else "float32"
    work = cp.empty(STATS_BYTES[acc_name] * max(plan.num_chunks, 1), dtype=cp.uint8)
    if plan.num_chunks:
        _launch(plan.dtype, "chunk_stats", plan.grid(), THREADS, (
            plan.ptrs, plan.sizes_d, plan.tensor_d, plan.start_d, plan.grad_d,
            np.int64(plan.num_chunks), np.int64(plan.table.chunk_size),
            np.uint32(_finalize.stats_needed(code)), work))
    return work


def _finish(plan, work, code, mode, clipnorm, eps, grad_norms):
    n = len(plan.arrays)
    norms = cp.empty(max(n, 1), dtype=plan.acc)
    scales = cp.empty((max(n, 1), 2), dtype=plan.acc)  # TensorScale (pre, mult) rows
    if n:
        _launch(plan.dtype, "finish", (n + FINISH_THREADS - 1) // FINISH_THREADS,
                FINISH_THREADS, (work, plan.first_d, np.int32(n), np.int32(code),
                                 np.int32(_finalize.mode_code(mode)), plan.acc(clipnorm),
                                 plan.acc(eps), plan.ptrs, plan.sizes_d, plan.zeros_d,
                                 np.int32(DTYPE_CODE[plan.dtype]), norms, scales,
                                 np.uintp(0) if grad_norms is None else grad_norms))
    return norms, scales


def launch_stats(plan, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
                 grad_norms=None):
    """Chunk stats + finish (2 launches); returns device (norms, scales),
    scales as (pre, mult) rows. `grad_norms`, a device array of N values of
    the accumulation type, receives each gradient's L2 norm sqrt(sum g^2),
    from the same statistics (as the TF op's output of that name)."""
    code = _finalize.statistic_kind_code(kind)
    n = len(plan.arrays)
    norms, scales = _finish(plan, _chunk_stats(plan, code), code, mode, clipnorm, eps,
                            grad_norms)
    return norms[:n], scales[:n]


GRANULARITIES = ("tensor", "unit", "global")
UNIT_ROWS = 256  # rows of one unit_stats task


def _units(shape):
    return int(shape[-1]) if len(shape) >= 2 and shape[-1] > 1 else 1


def _norm_slots(plan, code, eps, granularity, kept, work, per_tensor):
    """The norms of one tensor list at `granularity`, laid out in scale slots:
    (norms[M] on the device, first[N], units[N]); kept tensors only, the
    others get first = M (the slot of scale 1). `work`: its chunk statistics;
    `per_tensor`: its per-tensor norms (finish)."""
    n = len(plan.arrays)
    first = np.zeros(max(n, 1), np.int64)
    units = np.ones(max(n, 1), np.int64)
    if granularity == "global":
        norms = cp.empty(1, dtype=plan.acc)
        if kept:
            members = cp.asarray(np.array(kept, np.int32))
            _launch(plan.dtype, "global_finish", 1, 1, (
                work, plan.first_d, members, np.int32(len(kept)), np.int32(code),
                plan.acc(eps), plan.ptrs, plan.sizes_d, plan.zeros_d,
                np.int32(DTYPE_CODE[plan.dtype]), norms))
        first[:n] = 1
        first[kept] = 0
        return norms, first, units
    unit_tensors = [t for t in kept if granularity == "unit" and _units(plan.shapes[t]) > 1
                    and plan.sizes[t] > 0]
    slots = 0
    for t in kept:
        first[t] = slots
        units[t] = _units(plan.shapes[t]) if t in unit_tensors else 1
        slots += int(units[t])
    first[[t for t in range(n) if t not in kept]] = slots
    norms = cp.empty(max(slots, 1), dtype=plan.acc)
    single = [t for t in kept if t not in unit_tensors]
    if single:
        norms[cp.asarray(first[single])] = per_tensor[cp.asarray(np.array(single))]
    if unit_tensors:
        _unit_norms(plan, code, eps, unit_tensors, first, units, norms)
    return norms, first, units


def _unit_norms(plan, code, eps, tensors, first, units, norms):
    """unit_stats + unit_finish: norms[first[t] + u] for every unit u of `tensors`."""
    task_tensor, task_u0, task_r0 = [], [], []
    task_first = np.zeros(len(plan.arrays), np.int64)
    row_blocks = np.zeros(len(plan.arrays), np.int64)
    unit_tensor, unit_index = [], []
    for t in tensors:
        rows = int(plan.sizes[t]) // int(units[t])
        row_blocks[t] = (rows + UNIT_ROWS - 1) // UNIT_ROWS
        task_first[t] = len(task_tensor)
        for u0 in range(0, int(units[t]), THREADS):
            for b in range(int(row_blocks[t])):
                task_tensor.append(t)
                task_u0.append(u0)
                task_r0.append(b * UNIT_ROWS)
        unit_tensor += [t] * int(units[t])
        unit_index += range(int(units[t]))
    acc_name = "float64" if plan.acc is np.float64 else "float32"
    work = cp.empty(STATS_BYTES[acc_name] * len(task_tensor) * THREADS, dtype=cp.uint8)
    units_d = cp.asarray(units)
    _launch(plan.dtype, "unit_stats", min(len(task_tensor), MAX_BLOCKS), THREADS, (
        plan.ptrs, plan.sizes_d, units_d, cp.asarray(np.array(task_tensor, np.int32)),
        cp.asarray(np.array(task_u0, np.int64)), cp.asarray(np.array(task_r0, np.int64)),
        np.int64(len(task_tensor)), np.int64(UNIT_ROWS),
        np.uint32(_finalize.stats_needed(code)), work))
    count = len(unit_tensor)
    _launch(plan.dtype, "unit_finish", (count + FINISH_THREADS - 1) // FINISH_THREADS,
            FINISH_THREADS, (
                work, cp.asarray(np.array(unit_tensor, np.int32)),
                cp.asarray(np.array(unit_index, np.int64)), np.int64(count),
                cp.asarray(task_first), cp.asarray(row_blocks), cp.asarray(first),
                np.int32(code), plan.acc(eps), plan.ptrs, plan.sizes_d, units_d,
                np.int32(DTYPE_CODE[plan.dtype]), norms))


def launch_scales(plan, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7, *,
                  granularity="tensor", excluded=(), weights=None, weight_eps=0.0,
                  grad_norms=None):
    """The scales of one step as a scale table (scales, first, units) of
    device arrays: gradient t's element i takes scales[first[t] + i %
    units[t]] (first None: one scale per tensor, in order). `granularity`:
    "tensor", "unit" or "global"; `excluded`: indices of gradients that keep
    scale 1 and stay out of a global norm; mode "adaptive" clips at
    clipnorm * max(norm(w), weight_eps), the norms of `weights` (a
    TensorList of the variables) at the same granularity. `grad_norms` as in
    `launch_stats`."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of "
                         f"{GRANULARITIES}")
    adaptive = mode == "adaptive"
    if granularity == "unit" and plan.sparse:
        raise ValueError("sparse gradients take granularity 'tensor' or 'global', not "
                         "'unit'")
    if adaptive and weights is None:
        raise ValueError("mode 'adaptive' needs the variables (`weights`)")
    n = len(plan.arrays)
    excluded = sorted(set(int(t) for t in excluded))
    if granularity == "tensor" and not adaptive and not excluded:
        _, scales = launch_stats(plan, kind, mode, clipnorm, eps, grad_norms)
        return scales, None, None
    kept = [t for t in range(n) if t not in excluded]
    code = _finalize.statistic_kind_code(kind)
    work = _chunk_stats(plan, code)
    per_tensor, _ = _finish(plan, work, code, "normalize", 1.0, eps, grad_norms)
    norms, first, units = _norm_slots(plan, code, eps, granularity, kept, work, per_tensor)
    weight_norms = np.uintp(0)
    if adaptive:
        w_work = _chunk_stats(weights, code)
        w_per_tensor, _ = _finish(weights, w_work, code, "normalize", 1.0, eps, None)
        weight_norms, _, _ = _norm_slots(weights, code, eps, granularity, kept, w_work,
                                         w_per_tensor)
    scaled = int((first[kept] + units[kept]).max()) if kept else 0  # slots with a norm
    scales = cp.empty((scaled + 1, 2), dtype=plan.acc)
    _launch(plan.dtype, "scales_from_norms",
            (scaled + 1 + FINISH_THREADS - 1) // FINISH_THREADS, FINISH_THREADS, (
                norms, weight_norms, np.int32(scaled), np.int32(scaled + 1),
                np.int32(_finalize.mode_code("clip" if adaptive else mode)),
                plan.acc(clipnorm), plan.acc(weight_eps), scales))
    return scales, cp.asarray(first), cp.asarray(units)


def _table(scales):
    """The kernels' (scales, scale_first, units) arguments of a scale table
    or of a per-tensor scale array."""
    if isinstance(scales, tuple):
        scales, first, units = scales
        if first is not None:
            return scales, first, units
    return scales, np.uintp(0), np.uintp(0)


def launch_scale(plan, scales, outs):
    if plan.sparse:
        raise ValueError("the scale kernel takes dense gradients only")
    if plan.num_chunks:
        _launch(plan.dtype, "scale", plan.grid(), THREADS, (
            plan.ptrs, plan.pointers(outs, "outs"), plan.sizes_d, plan.tensor_d,
            plan.start_d, np.int64(plan.num_chunks), np.int64(plan.table.chunk_size),
            *_table(scales)))


MAX_RULE_ARGS = 8  # update_rules.h: kMaxRuleArgs


def launch_apply(plan, rule, state_ptrs, scales, decay, *, lr, step=1, hyper=()):
    """One launch of update rule `rule` (three for a trust-ratio rule, the
    launch sequence of update_kernels.cuh); `state_ptrs` from plan.pointers
    over the weights then each slot's arrays (slot-major)."""
    args = np.zeros(MAX_RULE_ARGS, np.float64)
    args[:2 + len(hyper)] = [lr, step, *hyper]
    if not plan.num_chunks:
        return
    n = len(plan.arrays)
    common = (state_ptrs, np.int32(n), plan.ptrs, plan.sizes_d, plan.tensor_d,
              plan.start_d, plan.grad_d, np.int64(plan.num_chunks),
              np.int64(plan.table.chunk_size),
              *_table(scales), decay, plan.values(args))
    null = np.uintp(0)
    if rule not in trust_ratio_rules():
        _launch(plan.dtype, f"apply_{rule}", plan.grid(), THREADS,
                common + (np.int32(0), null, null))
        return
    # TrustSums {w_sq, u_sq} of every chunk, then of every tensor
    chunk_sums = cp.empty((plan.num_chunks, 2), dtype=plan.acc)
    tensor_sums = cp.empty((n, 2), dtype=plan.acc)
    _launch(plan.dtype, f"apply_{rule}", plan.grid(), THREADS,
            common + (np.int32(1), chunk_sums, null))
    _launch(plan.dtype, "trust_sums", (n + FINISH_THREADS - 1) // FINISH_THREADS,
            FINISH_THREADS, (chunk_sums, plan.first_d, np.int32(n), tensor_sums))
    _launch(plan.dtype, f"apply_{rule}", plan.grid(), THREADS,
            common + (np.int32(2), null, tensor_sums))


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
          chunk_size=DEFAULT_CHUNK_SIZE, dtype=None, plan=None, granularity="tensor",
          excluded=()):
    """New CuPy arrays g * scale (per tensor, unit or global: `launch_scales`)."""
    _require()
    plan = _plan(arrays, chunk_size, dtype, plan)
    s = launch_scales(plan, kind, mode, clipnorm, eps, granularity=granularity,
                      excluded=excluded)
    outs = [cp.empty_like(a) for a in plan.arrays]
    launch_scale(plan, s, outs)
    return outs


def apply(rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None, kind="l2",
          mode="normalize", clipnorm=1.0, eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE,
          dtype=None, plan=None, granularity="tensor", excluded=(), weight_eps=0.0):
    """One step of update rule `rule` on CuPy arrays, in place; `slots`
    slot-major (one list per slot of the rule). A gradient may be a
    SparseRows (granularity "tensor" or "global"): its norm is that of the
    dense tensor it stands for, and a rule that keeps its state for a zero
    gradient (sgd, adagrad) changes only its rows, besides decay. Returns
    the per-tensor norms;
    with another granularity, exclusions or mode "adaptive" (clip factor
    `clipnorm`, weight norms of `weights` floored at `weight_eps`), the scale
    table of `launch_scales`."""
    _require()
    if rule not in rule_names():
        raise ValueError(f"unknown update rule {rule!r}; expected one of {rule_names()}")
    plan = _plan(grads, chunk_size, dtype, plan, shapes=[w.shape for w in weights])
    if granularity == "tensor" and mode != "adaptive" and not excluded:
        n, s = launch_stats(plan, kind, mode, clipnorm, eps)
    else:
        w = TensorList(weights, plan.table.chunk_size, plan.dtype) if mode == "adaptive" else None
        n = s = launch_scales(plan, kind, mode, clipnorm, eps, granularity=granularity,
                              excluded=excluded, weights=w, weight_eps=weight_eps)
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
