"""A stand-in for the part of CuPy that normopt.kernels.cupy_kernels uses,
running the project's CUDA entry points on the CPU through the host
emulation library (csrc/cuda/tools/host_emulation.cpp, `emu_kernel`).

It lets the CuPy front end's own logic run here, where no GPU is: the
pointer tables, chunk tables, argument order and types of every launch,
null tables, bfloat16 passed as uint16, and the launch counts. "Device"
arrays are NumPy arrays whose `.data.ptr` is their host address. It is not
CuPy: compiling (RawModule's source and options) is not exercised here, and
tests using it say so in their names.
"""

import ctypes
import time
import types

import numpy as np

# ctypes type of each argument CuPy would pass to a kernel by value.
_SCALAR_TYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint64): ctypes.c_void_p,  # np.uintp: a (null) pointer
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
}


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array with CuPy's `.data.ptr` and `.get()`."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        return np.array(self)


def _device(array):
    return np.ascontiguousarray(array).view(ndarray)


def asarray(x, dtype=None):
    """A device copy of host data (a device array passes as is, as in CuPy)."""
    if isinstance(x, ndarray) and (dtype is None or np.dtype(dtype) == x.dtype):
        return x
    return _device(np.array(x, dtype=dtype, copy=True))


def ascontiguousarray(x):
    return _device(x)


def empty(shape, dtype=np.float32):
    return _device(np.empty(shape, dtype))


def zeros(shape, dtype=np.float32):
    return _device(np.zeros(shape, dtype))


def ones(shape, dtype=np.float32):
    return _device(np.ones(shape, dtype))


def empty_like(a):
    return _device(np.empty_like(a))


def zeros_like(a):
    return _device(np.zeros_like(a))


class _Kernel:
    def __init__(self, lib, name):
        self.name = name
        self.address = lib.emu_kernel(name.encode())
        if not self.address:
            raise AttributeError(f"no kernel named {name} in the host emulation")

    def __call__(self, grid, block, args):
        cargs = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not isinstance(a, ndarray):
                    raise TypeError(f"{self.name}: a host NumPy array passed as a device array")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                scalar = np.asarray(a)
                if scalar.ndim or scalar.dtype not in _SCALAR_TYPES:
                    raise TypeError(f"{self.name}: unsupported argument {a!r}")
                cargs.append(_SCALAR_TYPES[scalar.dtype](scalar.item()))
        launcher = ctypes.CFUNCTYPE(None, ctypes.c_uint, ctypes.c_uint,
                                    *(type(c) for c in cargs))(self.address)
        launcher(int(grid[0]), int(block[0]), *cargs)


def concatenate(arrays):
    return _device(np.concatenate(arrays))


def copyto(dst, src):
    np.copyto(dst, src)


class _Generator:
    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size, dtype=np.float64):
        return _device(self._rng.standard_normal(size, dtype=dtype))


class _Event:
    """Host clock in place of a CUDA event (launches here are synchronous)."""

    def record(self):
        self.seconds = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, stop):
    return 1e3 * (stop.seconds - start.seconds)


def module(library_path):
    """A `cupy`-like module whose RawModule kernels run in the emulation
    library at `library_path` (built with 256 threads per block, as CuPy
    launches them)."""
    lib = ctypes.CDLL(library_path)
    lib.emu_kernel.restype = ctypes.c_void_p
    lib.emu_kernel.argtypes = [ctypes.c_char_p]

    class RawModule:
        def __init__(self, code=None, options=(), backend=None, jitify=False):
            self.code, self.options, self.backend = code, options, backend

        def get_function(self, name):
            return _Kernel(lib, name)

    fake = types.ModuleType("emulated_cupy")
    fake.__dict__.update(
        ndarray=ndarray, asarray=asarray, ascontiguousarray=ascontiguousarray,
        empty=empty, zeros=zeros, ones=ones, empty_like=empty_like, zeros_like=zeros_like,
        concatenate=concatenate, copyto=copyto, dtype=np.dtype,
        random=types.SimpleNamespace(default_rng=_Generator),
        RawModule=RawModule, uint8=np.uint8, uint16=np.uint16, float16=np.float16,
        float32=np.float32, float64=np.float64,
        cuda=types.SimpleNamespace(
            runtime=types.SimpleNamespace(
                getDeviceCount=lambda: 1,
                getDeviceProperties=lambda device: {"name": b"host emulation (no GPU)"}),
            Device=lambda: types.SimpleNamespace(id=0),
            Event=_Event, get_elapsed_time=_elapsed_ms),
    )
    return fake
