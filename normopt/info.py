"""`normopt info`: what this installation can run."""

import importlib
import platform


def add_arguments(parser):
    del parser


def package_version(module):
    """`module.__version__`, "installed", or why it cannot be imported."""
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # any import failure is information here
        return f"not available ({type(exc).__name__}: {exc})".splitlines()[0]


def _origin(status):
    """Where the loaded library came from: the package or the per-user cache."""
    origin = status.get("origin")
    if origin == "package":
        return "package (built when normopt was installed)"
    if origin == "cache":
        return "per-user cache (built on first use or by `normopt build`)"
    return None


def _built_for(status):
    from normopt.ops import build

    if status.get("origin") is None:
        return None
    return build.describe(status.get("built_for"))


def _cuda_kernels(status, tf_cuda):
    """Whether the loaded library has CUDA kernels, for which GPUs, or why not."""
    from normopt.ops import build

    if not status["loaded"]:
        return None
    record = status.get("built_for")
    if record is None:
        return "not recorded (a library built before normopt recorded it)"
    summary = build.cuda_summary(record)
    if tf_cuda and not build.has_cuda_kernels(record):
        summary += " (`normopt build --force` rebuilds it, with nvcc on the PATH)"
    return summary


def _kernels(status):
    """'NormoptNorms (CPU, GPU), ...': the devices TensorFlow has kernels for."""
    from normopt.ops import library

    if not status["loaded"]:
        return None
    return ", ".join(f"{op} ({', '.join(devices) or 'none'})"
                     for op, devices in library.registered_kernels().items())


def _gpu_kernels_used(status):
    from normopt.ops import library

    if not status["loaded"]:
        return None
    if not any("GPU" in d for d in library.registered_kernels().values()):
        return "no (none registered)"
    if library.gpu_ops_enabled():
        return f"yes ({library.GPU_OPT_IN_ENV}=1)"
    return (f"no: set {library.GPU_OPT_IN_ENV}=1 to use them (not yet validated "
            "on a GPU)")


def _backend_path(backend):
    """Which path the wrappers take on Keras's backend."""
    if backend == "tensorflow":
        return "fused (the op library) where it can run, else tf (keras.ops)"
    return ("keras (keras.ops; the op library is TensorFlow's, used on the "
            "TensorFlow backend only)")


def collect():
    """Everything `normopt info` prints, as a dict."""
    import importlib.util

    import keras

    import normopt

    backend = keras.backend.backend()
    head = {
        "normopt": normopt.__version__,
        "python": platform.python_version(),
    }
    keras_lines = {
        "keras": keras.version(),
        "keras backend": backend,
        "wrapper path": _backend_path(backend),
    }
    tail = {
        "numba": package_version("numba"),
        "cupy": package_version("cupy"),
        "normalizations": ", ".join(normopt.normalization_names()),
    }
    if importlib.util.find_spec("tensorflow") is None:
        return {**head, "tensorflow": "not installed (no op library: it is a "
                "TensorFlow custom op)", **keras_lines, **tail}
    import tensorflow as tf

    from normopt.ops import library

    status = library.details()
    gpus = tf.config.list_physical_devices("GPU")
    return {
        **head,
        "tensorflow": tf.__version__,
        **keras_lines,
        "tf built with CUDA": tf.test.is_built_with_cuda(),
        "GPUs visible to TF": [g.name for g in gpus] or "none",
        "op library loaded": status["loaded"],
        "op library path": status["path"],
        "op library from": _origin(status),
        "op library built for": _built_for(status),
        "op library note": status.get("note"),
        "op library reason": status["reason"],
        "CUDA kernels": _cuda_kernels(status, tf.test.is_built_with_cuda()),
        "op kernels": _kernels(status),
        "GPU op kernels used": _gpu_kernels_used(status),
        "compiled path under": "no strategy, " + ", ".join(importlib.import_module(
            "normopt.ops.step_plan").FUSED_STRATEGIES),
        **tail,
    }


def run(args):
    del args
    for key, value in collect().items():
        if value is None:
            continue
        print(f"{key + ':':<22} {value}")
    return 0
