"""The norm implementations the norms benchmark compares.

Each one measures the norm of one gradient tensor, given as a NumPy array,
and returns it as a Python float, blocking until the result is on the host
(GPU implementations synchronize the device):

    tf_eager     normopt.normalizations.tf_norm, eager
    tf_function  the same inside tf.function (graph)
    tf_xla       the same inside tf.function(jit_compile=True)
    fused_op     normopt.ops.raw_ops.norms, the compiled C++ op (one call, N=1)
    numba_cpu    normopt.kernels.numba_cpu.norms
    cupy         normopt.kernels.cupy_kernels.norms (GPU)
    numba_cuda   normopt.kernels.numba_cuda.norms (GPU)

`unavailable_reason(name)` is None when an implementation can run here and
otherwise says why not; `prepare(name, x, norm, eps)` returns the zero-arg
call to time (data already on the implementation's device).
"""

import importlib

import numpy as np

IMPLEMENTATIONS = (
    "tf_eager",
    "tf_function",
    "tf_xla",
    "fused_op",
    "numba_cpu",
    "cupy",
    "numba_cuda",
)


def _import_reason(module):
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure to import makes it unavailable
        return f"{module} cannot be imported ({type(exc).__name__}: {exc})".splitlines()[0]
    return None


def _cupy_gpu_reason():
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA GPU usable by CuPy ({type(exc).__name__}: {exc})".splitlines()[0]
    return None if count > 0 else "no CUDA GPU usable by CuPy (0 devices)"


def _numba_cuda_reason():
    try:
        from numba import cuda

        if cuda.is_available():
            return None
    except Exception as exc:
        return f"numba.cuda unusable ({type(exc).__name__}: {exc})".splitlines()[0]
    return "no CUDA GPU usable by numba.cuda"


def unavailable_reason(name):
    """None if `name` can run on this machine, else the reason it cannot."""
    if name in ("tf_eager", "tf_function", "tf_xla"):
        return None
    if name == "fused_op":
        from normopt.ops import library_status

        status = library_status()
        if not status["loaded"]:
            return f"op library not loaded: {status['reason']}"
        return _import_reason("normopt.ops.raw_ops")
    if name == "numba_cpu":
        return _import_reason("normopt.kernels.numba_cpu")
    if name == "cupy":
        return _cupy_gpu_reason() or _import_reason("normopt.kernels.cupy_kernels")
    if name == "numba_cuda":
        return _numba_cuda_reason() or _import_reason("normopt.kernels.numba_cuda")
    raise KeyError(f"unknown implementation {name!r}; known: {IMPLEMENTATIONS}")


def _first(result):
    """The first norm of a result of any array kind, as a Python float."""
    if hasattr(result, "numpy"):
        result = result.numpy()
    elif hasattr(result, "get"):  # CuPy
        result = result.get()
    elif hasattr(result, "copy_to_host"):  # Numba device array
        result = result.copy_to_host()
    return float(np.asarray(result, dtype=np.float64).reshape(-1)[0])


def _tf_call(x, norm, eps, mode):
    import tensorflow as tf

    from normopt import normalizations

    g = tf.constant(x)

    def norm_of(t):
        return normalizations.tf_norm(t, norm, eps)

    if mode == "tf_function":
        norm_of = tf.function(norm_of)
    elif mode == "tf_xla":
        norm_of = tf.function(norm_of, jit_compile=True)
    return lambda: float(norm_of(g).numpy())


def prepare(name, x, norm, eps):
    """The zero-arg call timing implementation `name` on array `x`."""
    if name in ("tf_eager", "tf_function", "tf_xla"):
        return _tf_call(x, norm, eps, name)
    if name == "fused_op":
        import tensorflow as tf

        from normopt.ops import raw_ops as fused

        g = [tf.constant(x)]
        return lambda: _first(fused.norms(g, norm, eps))
    if name == "numba_cpu":
        from normopt.kernels import numba_cpu

        g = [np.ascontiguousarray(x)]
        return lambda: _first(numba_cpu.norms(g, norm, eps))
    if name == "cupy":
        import cupy

        from normopt.kernels import cupy_kernels

        g = [cupy.asarray(x)]

        def call():
            out = cupy_kernels.norms(g, norm, eps)
            cupy.cuda.Device().synchronize()
            return _first(out)

        return call
    if name == "numba_cuda":
        from numba import cuda

        from normopt.kernels import numba_cuda

        g = [cuda.to_device(x)]

        def call():
            out = numba_cuda.norms(g, norm, eps)
            cuda.synchronize()
            return _first(out)

        return call
    raise KeyError(f"unknown implementation {name!r}; known: {IMPLEMENTATIONS}")


def reference_norm(x, norm, eps):
    """The pure-TF norm of `x` computed in float64, to check each result."""
    import tensorflow as tf

    from normopt import normalizations

    return float(normalizations.tf_norm(tf.constant(x.astype(np.float64)), norm, eps))
