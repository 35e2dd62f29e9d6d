"""Loading the compiled op library.

`load()` returns the module of raw ops (`tf.load_op_library`) or None and
never raises; `status()` says whether it loaded, from where, what it was built
against, and if not, why. Setting NORMOPT_DISABLE_OPS=1 in the environment
makes the library count as not loaded (the wrappers then run on pure
TensorFlow).

Where the library comes from, in order:

1. package: `normopt/ops/_normopt_ops*.so`, built at install time. Loaded when
   the TensorFlow version, ABI flags and kind (CPU-only or CUDA build) it
   records (normopt/ops/build.py: read_record) are those of the running
   TensorFlow, or when it records nothing (a library built before records
   existed, loaded as before).
2. cache: the per-user cache entry for this TensorFlow and these sources
   (build.ensure_cached), loaded only when private to this user (see
   build.untrusted). When there is none yet, it is built there on first use
   (one line on stderr says so, naming what differs, and how long it took):
   after a TensorFlow upgrade or a switch between TensorFlow's CPU and CUDA
   wheels, or, for an installed copy (sources in normopt/_src), when the
   install could not build it (no compiler, no cmake, TensorFlow not
   importable at install time). A source checkout without a built library
   just reports it (build it with `pip install -e .` or `normopt build`).
   NORMOPT_AUTOBUILD=0 turns the automatic build off; `normopt build` builds
   explicitly.

`status()` is dict(loaded, path, reason); `details()` adds where the library
came from and what it was built for; `registered_kernels()` lists the
devices TensorFlow has kernels of the ops for. On a CUDA build of
TensorFlow, a library without GPU kernels says why on one line when it is
built, and when it is loaded with NORMOPT_ENABLE_GPU_OPS=1.
"""

import glob
import os
import sys
import threading
import time

from normopt.ops import build

DISABLE_ENV = "NORMOPT_DISABLE_OPS"
AUTOBUILD_ENV = build.AUTOBUILD_ENV
# The GPU kernels (csrc/ops/*_gpu.cc) compile and link but have not yet run
# on a GPU: a CUDA build uses them only when this variable is set to 1.
GPU_OPT_IN_ENV = "NORMOPT_ENABLE_GPU_OPS"
OPS = ("NormoptNorms", "NormoptScale", "NormoptApply")
_HERE = os.path.dirname(os.path.abspath(__file__))
_PATTERN = "_normopt_ops*.so"

_lock = threading.Lock()
_cache = {}  # "module", "path", "reason", "origin", "record", "note" once attempted


def _disabled():
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def _autobuild():
    return os.environ.get(AUTOBUILD_ENV, "").strip() not in ("0", "false", "no", "off")


def library_path():
    """Path of the library built into the package, or None when there is none."""
    found = sorted(glob.glob(os.path.join(_HERE, _PATTERN)))
    return found[0] if found else None


def _load_file(path):
    import tensorflow as tf

    return tf.load_op_library(path)


def _announce(text):
    print(f"normopt: {text}", file=sys.stderr, flush=True)


def _from_cache(tf_info, why):
    """(path, note) of a cache library for tf_info, building it if allowed.

    `why` says why the package library is not used. Raises build.BuildError.
    """
    entry, lib = build.cache_entry(tf_info)
    if lib is not None and build.cached_library(lib, tf_info):
        return lib, None
    if not _autobuild():
        raise build.BuildError(f"{why}; automatic builds are off ({AUTOBUILD_ENV}=0): "
                               "run `normopt build`")
    missing = build.missing_tools()
    if missing:
        raise build.BuildError(f"{why}, and it cannot be built here: {missing}")
    version = tf_info["tf_version"]
    state = {}

    def announce_start():  # the line is finished when the build is
        state["start"] = time.perf_counter()
        print(f"normopt: {why}: building it for TensorFlow {version} into "
              f"{entry} ...", end="", file=sys.stderr, flush=True)

    try:
        lib, built, waited, took = build.ensure_cached(tf_info, on_start=announce_start)
    except Exception as exc:  # a failed build, or an OSError in the cache
        if not isinstance(exc, build.BuildError):
            exc = f"{type(exc).__name__}: {exc}"
        if "start" in state:
            seconds = time.perf_counter() - state["start"]
            print(f" failed after {seconds:.1f} s ({exc}); using pure TensorFlow",
                  file=sys.stderr, flush=True)
        raise build.BuildError(f"{why}; building it for TensorFlow {version} failed: "
                               f"{exc}") from exc
    if built:
        print(f" done in {took:.1f} s", file=sys.stderr, flush=True)
        _say_why_no_gpu_kernels(tf_info, build.read_record(lib))
        note = f"{why}: built it for TensorFlow {version} into {entry} in {took:.1f} s"
    else:
        note = f"{why}: another process built it for TensorFlow {version} into {entry}"
        if waited >= 0.5:
            _announce(f"{note} (waited {waited:.1f} s)")
    return lib, note


def _attempt():
    """dict(module, path, reason, origin, record, note)."""
    result = dict(module=None, path=library_path(), reason=None, origin=None,
                  record=None, note=None)
    try:
        tf_info = build.current_tf()
    except Exception as exc:  # TensorFlow itself cannot be imported
        result["reason"] = f"TensorFlow cannot be imported: {type(exc).__name__}: {exc}"
        return result
    path = result["path"]
    why = f"no {_PATTERN} in {_HERE}: the op library was not built at install time"
    if path is None and not build.sources_are_packaged():
        result["reason"] = (
            f"no {_PATTERN} in {_HERE}: the op library was not built (in a source "
            "checkout, `pip install -e .` or `normopt build --in-place` builds it; "
            "see the build output for why it failed)")
        return result
    if path is not None:
        record = build.read_record(path)
        if record is None or build.compatible(record, tf_info):
            result.update(origin="package", record=record)
            return _load_into(result, path)
        why = (f"the op library in {_HERE} was built for "
               + "; for ".join(build.differences(record, tf_info)))
    try:
        lib, note = _from_cache(tf_info, why)
    except Exception as exc:  # no sources, no tools, a failed build: fall back
        result["reason"] = str(exc) if isinstance(exc, build.BuildError) else (
            f"{why}; building it failed: {type(exc).__name__}: {exc}")
        return result
    result.update(origin="cache", record=build.read_record(lib), note=note)
    return _load_into(result, lib)


def _load_into(result, path):
    result["path"] = path
    try:
        result["module"] = _load_file(path)
    except Exception as exc:  # any load failure means "not loaded"
        result["reason"] = f"loading {path} failed: {type(exc).__name__}: {exc}"
    return result


def gpu_ops_enabled():
    return os.environ.get(GPU_OPT_IN_ENV, "").strip() == "1"


def _say_why_no_gpu_kernels(tf_info, record):
    """One line when a CUDA build of TensorFlow gets a library without GPU
    kernels: said when it is built, and at load when the GPU kernels are
    asked for ($NORMOPT_ENABLE_GPU_OPS=1)."""
    if tf_info.get("tf_cuda") == "1" and record and not build.has_cuda_kernels(record):
        build.warn_once(f"the op library has no GPU kernels ({build.cuda_summary(record)}); "
                        "variables on a GPU take the pure-TF path")


def _loaded():
    with _lock:
        if not _cache:
            _cache.update(_attempt())
            if _cache["module"] is not None and gpu_ops_enabled():
                _say_why_no_gpu_kernels(build.current_tf(), _cache["record"])
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


def details():
    """status() plus "origin", "built_for" and "note".

    origin: "package" or "cache" (where `path` is), None when nothing was
    loaded; built_for: the record the library carries (build.read_record),
    None when it records nothing; note: why the cache was used, if it was.
    """
    result = status()
    if _disabled():
        return dict(result, origin=None, built_for=None, note=None)
    cache = _loaded()
    return dict(result, origin=cache["origin"], built_for=cache["record"], note=cache["note"])


def registered_kernels():
    """{op name: sorted device types} of the kernels TensorFlow has registered
    for the normopt ops (empty lists before the library is loaded)."""
    from tensorflow.python.framework import kernels

    found = {}
    for op in OPS:
        try:
            registered = kernels.get_registered_kernels_for_op(op).kernel
        except Exception:  # an op TensorFlow does not know
            registered = []
        found[op] = sorted({k.device_type for k in registered})
    return found


def reset():
    """Forgets the load attempt (tests; the op module itself stays loaded)."""
    with _lock:
        _cache.clear()

