"""The CUDA sources without a GPU.

- Compile check of csrc/cuda/*.cu with the installed nvcc (sm_80 and sm_90):
  each file compiled once (`-c`, warnings as errors, ptxas verbose), in
  parallel; by default launchers.cu to sm_80 machine code and cupy_module.cu
  only through NVRTC below (`default_archs`), every file to machine code for
  both with --runslow, where the entry points that
  normopt.kernels.cupy_kernels looks up by name must be among those
  cupy_module.cu defines for each.
- CuPy's NVRTC route: cupy_module.cu through libnvrtc with CuPy's options.
- The kernels run on the CPU by csrc/cuda/tools/host_emulation.cpp, against
  the NumPy reference and the TF CPU op.
- A syntax check of the TF GPU op kernels (csrc/ops/*_gpu.cc).

Each part skips, with the reason, when its tool (nvcc and the CUDA headers,
the NVRTC wheel, a C++20 compiler) is missing.
"""

import glob
import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from normopt.kernels._finalize import DEFAULT_CHUNK_SIZE
from normopt.kernels._finalize import DTYPE_CODES as DTYPE_CODE
from normopt.kernels.cupy_kernels import rule_names
from normopt.ops.build import file_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
ARCHS = ("80", "90")
# The update rules of csrc/normopt/update_rules.h's table.
RULE_NAMES = rule_names(os.path.join(ROOT, "csrc"))


def find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = "/usr/local/cuda/bin/nvcc"
    return candidate if os.access(candidate, os.X_OK) else None


def default_archs(source, every):
    """The (architecture, code) pairs a source is compiled for by nvcc:
    machine code (sm_XX, through ptxas) for every one of ARCHS with
    --runslow. By default launchers.cu (and any other source but
    cupy_module.cu) gets machine code for the oldest; cupy_module.cu (the
    same kernel templates, for CuPy) none: the default run compiles it the
    way CuPy does, through NVRTC (test_cupy_module_compiles_with_nvrtc checks
    its entry points and warnings there)."""
    if every:
        return tuple((a, f"sm_{a}") for a in ARCHS)
    if source.endswith("cupy_module.cu"):
        return ()
    return ((ARCHS[0], f"sm_{ARCHS[0]}"),)


def compile_one(nvcc, source, out_dir, archs):
    cmd = [nvcc, "-c", "-std=c++17", "-O2", "-Werror", "all-warnings", "-Xptxas", "-v",
           "-I", os.path.join(ROOT, "csrc"), source,
           "-o", os.path.join(out_dir, os.path.basename(source) + ".o")]
    for arch, code in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code={code}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return source, done.returncode, done.stdout + done.stderr


def test_sources_exist():
    names = {os.path.basename(s) for s in SOURCES}
    assert {"launchers.cu", "cupy_module.cu"} <= names


def test_every_cuda_source_compiles(tmp_path, request):
    nvcc = find_nvcc()
    if nvcc is None:
        reason = "nvcc not found on PATH or in /usr/local/cuda/bin; CUDA compile check skipped"
        print(reason)
        pytest.skip(reason)
    every = request.config.getoption("--runslow")
    archs = {s: default_archs(s, every) for s in SOURCES}
    compiled = [s for s in SOURCES if archs[s]]
    with ThreadPoolExecutor(max_workers=len(compiled)) as pool:
        results = list(pool.map(lambda s: compile_one(nvcc, s, str(tmp_path), archs[s]),
                                compiled))
    failures = [f"{os.path.relpath(s, ROOT)} (rc {rc}):\n{log}" for s, rc, log in results if rc]
    assert not failures, "nvcc failed:\n" + "\n".join(failures)
    for source in compiled:
        assert (tmp_path / (os.path.basename(source) + ".o")).stat().st_size > 0
        # machine code went through ptxas: it names every kernel it compiled
        assert re.search(r"Compiling entry function '\w+' for 'sm_\d+'",
                         dict((s, log) for s, _, log in results)[source]), source

    cupy_module = next(s for s in SOURCES if s.endswith("cupy_module.cu"))
    if cupy_module not in compiled:
        return
    from normopt.kernels.cupy_kernels import SUFFIX, entry_names

    log = next(log for s, _, log in results if s == cupy_module)
    defined = set(re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log))
    for dtype in SUFFIX:
        for name in entry_names(dtype).values():
            for arch, _ in archs[cupy_module]:
                assert (name, arch) in defined, f"{name} (sm_{arch}) missing from cupy_module.cu"


# ---- CuPy's NVRTC route: cupy_module.cu compiled by libnvrtc ----

def cuda_include():
    """The CUDA toolkit's include directory (next to nvcc, or CUDA_HOME's), or None."""
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    candidates = [os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"),
                  "/usr/local/cuda/include"]
    return next((c for c in candidates if os.path.isfile(os.path.join(c, "cuda_fp16.h"))), None)


def load_nvrtc():
    """libnvrtc of the nvidia-cuda-nvrtc wheel (requirements-test.txt), or the
    reason it cannot be loaded."""
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    libs = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        libs += glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so.*"))
        libs += glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.*"))
    libs = [p for p in libs if ".alt." not in p]
    if not libs:
        return None, "libnvrtc not found (the nvidia-cuda-nvrtc wheel is not installed)"
    lib_dir = os.path.dirname(libs[0])
    # libnvrtc dlopen()s its builtins by soname at compile time
    for builtins in glob.glob(os.path.join(lib_dir, "libnvrtc-builtins.so.*")):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(libs[0])
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    return nvrtc, None


def nvrtc_ptx(nvrtc, source, options):
    """(ok, PTX or the compile log) of `source` compiled with `options`."""
    import ctypes

    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"cupy_module.cu",
                                    0, None, None) == 0
    try:
        argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = nvrtc.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            return False, nvrtc.nvrtcGetErrorString(rc).decode() + "\n" + log.value.decode()
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        assert nvrtc.nvrtcGetPTX(prog, ptx) == 0
        return True, ptx.value.decode() + log.value.decode()
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch,optimized",
                         [(ARCHS[0], False)] + [pytest.param(a, True, marks=pytest.mark.slow)
                                                for a in ARCHS])
def test_cupy_module_compiles_with_nvrtc(arch, optimized):
    """cupy_module.cu through NVRTC with the options CuPy's RawModule passes
    on its NVRTC route (no jitify; CuPy adds the toolkit and CCCL includes,
    -ftz=true and --device-as-default-execution-space): every entry point
    cupy_kernels looks up is in the PTX, and NVRTC prints no warning.

    By default with -G as well (NVVM's optimizer off: ~15 s -> ~5 s of CPU).
    What this checks is NVRTC's front end (the headers under NVRTC, every
    template instantiated, its warnings) and the entry points' names, none of
    which depends on the optimizer; the PTX is never run or inspected (the
    register and shared-memory check is ptxas on nvcc's route above, on
    optimized code). Exactly CuPy's options, optimized, for both
    architectures with --runslow."""
    from normopt.kernels.cupy_kernels import SUFFIX, entry_names, nvrtc_options

    include = cuda_include()
    if include is None:
        pytest.skip("no CUDA toolkit headers (nvcc, CUDA_HOME); NVRTC compile check skipped")
    includes = [include] + [d for d in (os.path.join(include, "cccl"),) if os.path.isdir(d)]
    nvrtc, reason = load_nvrtc()
    if nvrtc is None:
        pytest.skip(reason)
    options = list(nvrtc_options(os.path.join(ROOT, "csrc")))
    options += [f"-I{d}" for d in includes]
    options += ["-ftz=true", "--device-as-default-execution-space",
                f"--gpu-architecture=compute_{arch}"]
    if not optimized:
        options.append("-G")
    ok, out = nvrtc_ptx(nvrtc, '#include "cuda/cupy_module.cu"\n', options)
    assert ok, out
    entries = set(re.findall(r"\.entry\s+(\w+)", out))
    wanted = {name for dtype in SUFFIX for name in entry_names(dtype).values()}
    assert wanted <= entries, f"missing from the NVRTC build: {sorted(wanted - entries)}"
    assert "warning" not in out.lower()


# ---- the CUDA kernels executed on the CPU (csrc/cuda/tools/host_emulation.cpp) ----

def emulation_cache_dir(tmp_path_factory):
    """Where this test run keeps its host emulation libraries: its base temp
    directory, which under pytest-xdist holds every worker's own, so all
    modules and workers of one run share it and no later run sees it."""
    base = tmp_path_factory.getbasetemp()
    return str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
               / "host_emulation")


def emulation_sources_hash():
    """sha256 over the path and bytes of every file under csrc/cuda and
    csrc/normopt: host_emulation.cpp and everything it includes from csrc."""
    digest = hashlib.sha256()
    for sub in ("cuda", "normopt"):
        paths = glob.glob(os.path.join(ROOT, "csrc", sub, "**", "*"), recursive=True)
        for path in sorted(p for p in paths if os.path.isfile(p)):
            digest.update(os.path.relpath(path, ROOT).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()


def build_emulation(tmp_path_factory, block_threads, opt=None):
    """The host emulation of csrc/cuda with `block_threads` per block.

    Built once per test run and configuration (g++ takes seconds), by whichever
    module or xdist worker asks first: kept in emulation_cache_dir under a hash
    of the compile command and the sources, built under a file lock (another
    worker waits, then finds it) and renamed into place only when complete.

    The small-block build (8 threads: the tiny-chunk tests here and in
    test_overflow.py) is compiled at -O0: its runs are short, so the ~3 s of
    CPU the optimizer costs are more than those runs win back (measured:
    compile and runs ~35 s -> ~30 s of CPU). The production block size
    (256: the CuPy stand-in of test_kernels_cupy.py, its heavy cases) keeps
    -O1, as does `opt="-O1"`."""
    cxx = shutil.which("g++") or shutil.which("clang++")
    include = cuda_include()
    if cxx is None or include is None:
        pytest.skip("host emulation needs g++/clang++ (C++20) and the CUDA toolkit headers")
    opt = opt or ("-O0" if block_threads <= 32 else "-O1")
    cmd = [cxx, "-std=c++20", opt, "-shared", "-fPIC", "-pthread",
           "-fvisibility=hidden", "-Wl,-Bsymbolic",
           f"-DNORMOPT_CUDA_BLOCK_THREADS={block_threads}",
           "-I", os.path.join(ROOT, "csrc"), "-I", include,
           os.path.join(ROOT, "csrc", "cuda", "tools", "host_emulation.cpp")]
    key = hashlib.sha256("\0".join(cmd + [emulation_sources_hash()]).encode()).hexdigest()
    out = os.path.join(emulation_cache_dir(tmp_path_factory),
                       f"libnormopt_emu_{block_threads}-{key[:16]}.so")
    with file_lock(out + ".lock"):
        if not os.path.isfile(out):
            tmp = f"{out}.tmp-{os.getpid()}"
            subprocess.run(cmd + ["-o", tmp], check=True, capture_output=True, text=True)
            os.replace(tmp, out)
    return out


class HostEmulated:
    """The normopt.kernels functions, on NumPy arrays, running csrc/cuda's entry
    points through the host emulation library (same chunk table as CuPy)."""

    def __init__(self, path):
        import ctypes

        self.ct = ctypes
        self.lib = ctypes.CDLL(path)
        self.calls = 0

    def _p(self, array):
        return self.ct.c_void_p(array.ctypes.data)

    @staticmethod
    def _ptrs(arrays):
        import numpy as np

        return np.array([a.ctypes.data for a in arrays] or [0], dtype=np.uintp)

    def _prepare(self, arrays, chunk_size):
        import numpy as np
        from normopt.kernels import _args
        from normopt.kernels.chunks import chunk_table

        arrays = [np.asarray(a) for a in arrays]
        dtype = _args.common_dtype(arrays)
        for a in arrays:
            assert a.flags.c_contiguous
        sizes = np.array([a.size for a in arrays] or [0], np.int64)
        table = chunk_table(sizes[:len(arrays)], chunk_size)
        return arrays, dtype, sizes, table

    def _stats(self, arrays, kind, mode, clipnorm, eps, chunk_size):
        import numpy as np
        from normopt.kernels import _args, _finalize

        arrays, dtype, sizes, table = self._prepare(arrays, chunk_size)
        acc = _args.acc_dtype(dtype)
        norms = np.zeros(max(len(arrays), 1), acc)
        scales = np.zeros((max(len(arrays), 1), 2), acc)  # TensorScale (pre, mult)
        self.grad_norms = np.zeros(max(len(arrays), 1), acc)  # L2 norms, kept
        ct, p = self.ct, self._p
        ptrs = self._ptrs(arrays)  # kept alive across the call
        null = ct.c_void_p(None)  # dense gradients: no zeros, no chunk_grad
        rc = self.lib.emu_norms(
            ct.c_int(DTYPE_CODE[dtype]), p(ptrs), p(sizes), null,
            ct.c_int(len(arrays)), p(table.tensor), p(table.start), null, p(table.first),
            ct.c_int64(table.tensor.size), ct.c_int64(table.chunk_size),
            ct.c_int(_finalize.kind_code(kind)), ct.c_int(_finalize.mode_code(mode)),
            ct.c_double(clipnorm), ct.c_double(eps), p(norms), p(scales),
            p(self.grad_norms))
        assert rc == 0
        return arrays, dtype, sizes, table, norms, scales

    def norms(self, arrays, kind="l2", eps=1e-7, chunk_size=DEFAULT_CHUNK_SIZE):
        return self._stats(arrays, kind, "normalize", 1.0, eps, chunk_size)[4][:len(arrays)]

    def scales(self, arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
               chunk_size=DEFAULT_CHUNK_SIZE):
        s = self._stats(arrays, kind, mode, clipnorm, eps, chunk_size)[5][:len(arrays)]
        return s[:, 0] * s[:, 1]

    def scale(self, arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
              chunk_size=DEFAULT_CHUNK_SIZE):
        import numpy as np

        arrays, dtype, sizes, table, _, s = self._stats(arrays, kind, mode, clipnorm, eps,
                                                       chunk_size)
        outs = [np.empty_like(a) for a in arrays]
        ct, p = self.ct, self._p
        tables = [self._ptrs(arrays), self._ptrs(outs)]  # kept alive across the call
        assert self.lib.emu_scale(
            ct.c_int(DTYPE_CODE[dtype]), p(tables[0]), p(tables[1]), p(sizes),
            p(table.tensor), p(table.start), ct.c_int64(table.tensor.size),
            ct.c_int64(table.chunk_size), p(s)) == 0
        return outs

    def apply(self, rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None,
              kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7,
              chunk_size=DEFAULT_CHUNK_SIZE):
        """Update rule `rule` through emu_apply; `slots` slot-major."""
        import numpy as np
        from normopt.kernels import _args

        grads, dtype, sizes, table, n, s = self._stats(grads, kind, mode, clipnorm, eps,
                                                       chunk_size)
        _args.check_pairs(weights, grads, ("weights", "grads"))
        for slot in slots:
            _args.check_pairs(weights, slot, ("weights", "slots"))
        wd = _args.per_tensor(decay, max(len(grads), 1), _args.acc_dtype(dtype))
        args = np.zeros(8, np.float64)
        args[:2 + len(hyper)] = [lr, step, *hyper]
        ct, p = self.ct, self._p
        state = self._ptrs([a for group in [weights, *slots] for a in group])
        grad_ptrs = self._ptrs(grads)  # kept alive across the call
        assert self.lib.emu_apply(
            ct.c_int(DTYPE_CODE[dtype]), rule.encode(), p(state), ct.c_int(len(grads)),
            p(grad_ptrs), p(sizes), p(table.tensor), p(table.start), ct.c_void_p(None),
            p(table.first), ct.c_int64(table.tensor.size), ct.c_int64(table.chunk_size),
            p(s), p(wd),
            p(args)) == 0
        return n[:len(grads)]

    def apply_sgd(self, weights, grads, momenta=None, *, lr, momentum=0.0, nesterov=False,
                  **kw):
        from normopt.kernels import _args

        _args.check_momenta(weights, momenta, momentum)
        if momenta is None:
            return self.apply("sgd", weights, grads, [], lr=lr, **kw)
        return self.apply("sgd_nesterov" if nesterov else "sgd_momentum", weights, grads,
                          [momenta], lr=lr, hyper=(momentum,), **kw)

    def apply_adam(self, weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
                   beta_2=0.999, adam_epsilon=1e-7, **kw):
        if step < 1:
            raise ValueError(f"step must be >= 1 (iterations + 1), got {step}")
        rule, slots = ("adam", [m, v]) if vhat is None else ("adam_amsgrad", [m, v, vhat])
        return self.apply(rule, weights, grads, slots, lr=lr, step=step,
                          hyper=(beta_1, beta_2, adam_epsilon), **kw)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return HostEmulated(build_emulation(tmp_path_factory, 8))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_emulated_cuda_norms_and_scale(emulated, dtype):
    from test_kernels_numba import SHAPE_LISTS, check_norms, check_scale

    for shapes in SHAPE_LISTS.values():
        check_norms(emulated, shapes, dtype, chunk_size=8)
    for mode in ("normalize", "clip"):
        check_scale(emulated, SHAPE_LISTS["mixed"], dtype, mode, chunk_size=8)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_emulated_cuda_grad_norms(emulated, dtype):
    """finish's grad_norms: sqrt(sum g^2) of every tensor whatever the norm
    kind, from the same statistics; rescued where sum g^2 overflows."""
    import numpy as np
    from test_kernels_numba import SHAPE_LISTS, make_arrays

    arrays = make_arrays(SHAPE_LISTS["chunk_edges"] + [(), (300,)], dtype)
    if dtype == "float32":
        arrays.append(np.full(40, 3e37, np.float32))  # sum g^2 is inf in float32
    want = [np.sqrt(np.sum(np.square(a.astype(np.float64)))) for a in arrays]
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for kind in ("l2", "max", "std"):
        emulated.norms(arrays, kind, chunk_size=8)
        np.testing.assert_allclose(emulated.grad_norms[:len(arrays)], want, rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_emulated_cuda_updates(emulated, dtype):
    from test_kernels_numba import ADAM_VARIANTS, SGD_VARIANTS, SHAPE_LISTS, check_adam, check_sgd

    shapes = SHAPE_LISTS["chunk_edges"] + [()]
    for variant in SGD_VARIANTS:
        check_sgd(emulated, shapes, dtype, variant, chunk_size=8)
    for variant in ADAM_VARIANTS:
        check_adam(emulated, shapes, dtype, variant, chunk_size=8)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_emulated_cuda_nan_propagates(emulated, dtype):
    """NaN in any chunk, lane, thread or tail: NaN norm (default chunks take
    the 16-byte loads)."""
    from test_kernels_numba import check_nan_propagates

    check_nan_propagates(emulated, dtype, chunk_size=8)
    check_nan_propagates(emulated, dtype, big=70000)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_emulated_cuda_rule(emulated, rule):
    """Every rule's CUDA kernel (normopt_apply_<rule>) against the NumPy
    reference of its formula and step by step against the TF CPU op."""
    from test_kernels_numba import RULE_SHAPES, check_rule, check_rule_matches_tf_op

    check_rule(emulated, rule, RULE_SHAPES, "float32", steps=2, chunk_size=8)
    dtype = ("float64", "float16", "bfloat16", "float32")[RULE_NAMES.index(rule) % 4]
    check_rule_matches_tf_op(emulated, rule, dtype, RULE_SHAPES, steps=2, chunk_size=8)


def test_emulated_cuda_trust_ratio_rules_across_chunks(emulated):
    """The three launches of a trust-ratio rule on tensors of several default
    chunks (the vector path; the per-tensor sums between the phases), every
    dtype against the reference, and one against the TF CPU op (max norm:
    exact, so only the order of the trust sums differs)."""
    from test_kernels_numba import (DTYPES, TRUST_RULES, TRUST_SHAPES, check_rule,
                                    check_rule_matches_tf_op)

    for i, rule in enumerate(TRUST_RULES):
        for dtype in DTYPES:
            check_rule(emulated, rule, TRUST_SHAPES, dtype, steps=1)
        check_rule_matches_tf_op(emulated, rule, DTYPES[i % len(DTYPES)], TRUST_SHAPES,
                                 steps=1, kind="max")


def test_emulated_cuda_momenta_with_zero_momentum(emulated):
    from test_kernels_numba import check_momenta_with_zero_momentum

    for dtype in ("float32", "bfloat16"):
        check_momenta_with_zero_momentum(emulated, dtype, chunk_size=8)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_emulated_cuda_updates_match_tf_op(emulated, dtype):
    """The CUDA kernels and launcher scalars against the TF CPU op, step by step."""
    from test_kernels_numba import SHAPE_LISTS, check_matches_tf_op

    check_matches_tf_op(emulated, dtype, SHAPE_LISTS["chunk_edges"] + [(), (300,)],
                        chunk_size=8)
    check_matches_tf_op(emulated, dtype, [(70000,), (4099,)], steps=2)


def test_emulated_cuda_vector_path_many_tensors_and_repeatability(emulated):
    """Default chunks: aligned tensors take the 16-byte path, odd ones the tail."""
    from test_kernels_numba import check_adam, check_bitwise_repeatable, check_norms, check_sgd, many_shapes

    big = [(70000,), (0,), (65536,), (65537,), (4099,)]
    for dtype in ("float32", "float16", "float64"):
        check_norms(emulated, big, dtype, kinds=("l1", "l2", "std", "min_max"))
        check_adam(emulated, big, dtype, "amsgrad", steps=1)
        check_sgd(emulated, big, dtype, "nesterov", steps=1)
    check_norms(emulated, many_shapes(1000, 50), "float32", kinds=("l2", "std"), chunk_size=64)
    check_bitwise_repeatable(emulated, many_shapes(40, 3000), chunk_size=512)


@pytest.mark.slow
def test_emulated_cuda_tensor_over_2_31_elements(tmp_path_factory):
    """64-bit indexing: elements past 2^31 are read where they are, and the
    count is not truncated (avg_l1 divides by it). calloc'ed zeros: the 4 GiB
    float16 tensor costs no memory until written. An -O1 build of the small
    blocks: the 2^31 elements take minutes on the -O0 one."""
    import numpy as np

    emulated = HostEmulated(build_emulation(tmp_path_factory, 8, opt="-O1"))

    n = 2**31 + 70_000
    x = np.zeros(n, np.float16)
    x[5], x[2**31 + 3], x[n - 1] = 1.0, 2.0, -2.0
    got = emulated.norms([np.ones(3, np.float16), x], "avg_l1", 0.0)
    np.testing.assert_allclose(got, [1.0, 5.0 / n], rtol=1e-6)


def test_emulated_cuda_full_blocks(tmp_path_factory):
    """The production block size (256 threads) on a few chunks."""
    from test_kernels_numba import check_adam, check_norms

    full = HostEmulated(build_emulation(tmp_path_factory, 256))
    check_norms(full, [(5000,), (0,), (3,)], "float32", kinds=("l2", "std", "min_max"),
                chunk_size=2048)
    check_adam(full, [(600,), (7,)], "float32", "adam", steps=1, chunk_size=512)


# ---- the TF GPU op kernels (csrc/ops/*_gpu.cc), syntax-checked with the host compiler ----

GPU_OP_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "ops", "*_gpu.cc")))


def test_gpu_op_kernels_syntax_check(tmp_path, request):
    """Every csrc/ops/*_gpu.cc parses as a CUDA build compiles it (GOOGLE_CUDA=1,
    TF's compile flags, the CUDA headers), with no warning from our own files, and
    together they register DEVICE_GPU kernels of all four ops for all four dtypes.
    Running them needs a GPU and a CUDA-enabled TensorFlow; this checks the code
    against the installed TF headers only. By default the files are parsed as
    one unit that includes them all (TF's headers parsed once); with --runslow
    each file alone as well, as the build compiles it."""
    cxx = shutil.which("g++")
    nvcc = find_nvcc()
    if cxx is None or nvcc is None:
        reason = "g++ or nvcc not found; GPU op kernel syntax check skipped"
        print(reason)
        pytest.skip(reason)
    include = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
    if not os.path.isfile(os.path.join(include, "cuda_runtime_api.h")):
        include = "/usr/local/cuda/include"
    if not os.path.isfile(os.path.join(include, "cuda_runtime_api.h")):
        reason = "cuda_runtime_api.h not found next to nvcc or in /usr/local/cuda/include; skipped"
        print(reason)
        pytest.skip(reason)
    tf = pytest.importorskip("tensorflow")
    assert GPU_OP_SOURCES, "no csrc/ops/*_gpu.cc"

    flags = ["-fsyntax-only", "-std=c++17", "-DGOOGLE_CUDA=1", "-DNORMOPT_WITH_CUDA=1",
             "-DEIGEN_USE_GPU", "-Wall", "-Wno-sign-compare", "-Wno-deprecated-declarations",
             *tf.sysconfig.get_compile_flags(), "-I", include, "-I", os.path.join(ROOT, "csrc")]

    def check(source):
        done = subprocess.run([cxx, *flags, source], capture_output=True, text=True)
        return source, done.returncode, done.stderr

    together = tmp_path / "all_gpu_op_kernels.cc"
    together.write_text("".join(f'#include "{s}"\n' for s in GPU_OP_SOURCES))
    units = [str(together)]
    if request.config.getoption("--runslow"):
        units += GPU_OP_SOURCES
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(check, units))
    failures = [f"{os.path.relpath(s, ROOT)} (rc {rc}):\n{log}" for s, rc, log in results if rc]
    assert not failures, "g++ failed on the GPU op kernels:\n" + "\n".join(failures)
    own = os.path.join(ROOT, "csrc") + os.sep
    own_warnings = [line for _, _, log in results for line in log.splitlines()
                    if "warning:" in line and (line.startswith(own) or line.startswith("csrc/"))]
    assert not own_warnings, "warnings in csrc/:\n" + "\n".join(own_warnings)

    text = "".join(open(s).read() for s in GPU_OP_SOURCES)
    assert text.count("tensorflow::DEVICE_GPU") >= 3
    for op in ("NormoptNorms", "NormoptScale", "NormoptApply"):
        assert f'Name("{op}")' in text, f"no GPU kernel registered for {op}"
    for dtype in ("Eigen::half", "Eigen::bfloat16", "float", "double"):
        assert re.search(rf"REGISTER_\w*GPU_KERNELS?\({re.escape(dtype)}\)", text), dtype
