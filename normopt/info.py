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


def collect():
    """Everything `normopt info` prints, as a dict."""
    import keras
    import tensorflow as tf

    import normopt
    from normopt.ops import library_status

    status = library_status()
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "normopt": normopt.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.version(),
        "tf built with CUDA": tf.test.is_built_with_cuda(),
        "GPUs visible to TF": [g.name for g in gpus] or "none",
        "op library loaded": status["loaded"],
        "op library path": status["path"],
        "op library reason": status["reason"],
        "numba": package_version("numba"),
        "cupy": package_version("cupy"),
        "normalizations": ", ".join(normopt.normalization_names()),
    }


def run(args):
    del args
    for key, value in collect().items():
        if value is None:
            continue
        print(f"{key + ':':<22} {value}")
    return 0
