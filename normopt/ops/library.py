"""Loading the compiled op library (`normopt/ops/_normopt_ops*.so`).

`load()` returns the module of raw ops (`tf.load_op_library`) or None and
never raises; `status()` says whether it loaded, from where, and if not, why.
Setting NORMOPT_DISABLE_OPS=1 in the environment makes the library count as
not loaded (the wrappers then run on pure TensorFlow).
"""

import glob
import os
import threading

DISABLE_ENV = "NORMOPT_DISABLE_OPS"
_HERE = os.path.dirname(os.path.abspath(__file__))
_PATTERN = "_normopt_ops*.so"

_lock = threading.Lock()
_cache = {}  # "module", "path", "reason" once a load was attempted


def _disabled():
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def library_path():
    """Path of the built library file, or None when there is none."""
    found = sorted(glob.glob(os.path.join(_HERE, _PATTERN)))
    return found[0] if found else None


def _attempt():
    path = library_path()
    if path is None:
        return None, None, (
            f"no {_PATTERN} in {_HERE}: the op library was not built (install "
            "with `pip install --no-build-isolation -e .`, which runs CMake; "
            "see the build output for why it failed)"
        )
    try:
        import tensorflow as tf

        return tf.load_op_library(path), path, None
    except Exception as exc:  # any load failure means "not loaded"
        return None, path, f"loading {path} failed: {type(exc).__name__}: {exc}"


def _loaded():
    with _lock:
        if not _cache:
            module, path, reason = _attempt()
            _cache.update(module=module, path=path, reason=reason)
        return _cache


def load():
    """The loaded op module, or None (disabled, not built, or failed)."""
    if _disabled():
        return None
    return _loaded()["module"]


def status():
    """{"loaded": bool, "path": str|None, "reason": str|None}."""
    if _disabled():
        return {
            "loaded": False,
            "path": library_path(),
            "reason": f"disabled by the environment variable {DISABLE_ENV}",
        }
    cache = _loaded()
    return {
        "loaded": cache["module"] is not None,
        "path": cache["path"],
        "reason": cache["reason"],
    }
