import itertools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No more busy threads than cores: under pytest-xdist the cores are shared
# among the workers, and each worker's Numba and TensorFlow pools (and those
# of the processes its tests start) get their share. The host emulation of
# the CUDA kernels runs on the calling thread (fibers).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
os.environ.setdefault("NUMBA_NUM_THREADS", _THREADS)
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _THREADS)
os.environ.setdefault("TF_NUM_INTEROP_THREADS", _THREADS)
# XLA (JAX's jit, TensorFlow's jit_compile) compiles each of the suite's many
# small steps to run it a few times: LLVM's backend optimizations cost more
# than they save there (the JAX run's CPU time -17%). Fast-math stays off, so
# the floating-point results are those of the default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests: "ci" keeps CI to a couple of minutes and draws the same
# examples every run (a red CI is then reproducible); --runslow loads
# "ci-full" (more examples, same determinism); run deeper, with fresh random
# draws, with pytest --hypothesis-profile=long.
settings.register_profile(
    "ci",
    max_examples=10,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci-full",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")


@pytest.fixture
def custom_norm():
    """Registers a custom normalization for one test, removed afterwards."""
    import normopt

    registered = []

    def register(name, fn, **kwargs):
        normopt.register_normalization(name, fn, **kwargs)
        registered.append(name)

    yield register
    for name in registered:
        normopt.unregister_normalization(name)


# ---- backends: the TensorFlow process and the others (JAX, PyTorch)
#
# Keras fixes its backend at import, so each backend is its own pytest
# process (the README's test command runs TensorFlow's, then JAX's with
# KERAS_BACKEND=jax). A test that runs on every backend carries the marker
# `backend_neutral` (on the test, a parameter, or `pytestmark` for a whole
# file) and lives in one of the files below. On TensorFlow every test runs;
# on any other backend only these files are collected (the others import
# TensorFlow or its op library at the top), and the tests in them without
# the marker (tf.function, IndexedSlices, the fused op, tf.distribute) are
# deselected: they ran in the TensorFlow process. OTHER_BACKEND_FILES hold
# what is specific to JAX or PyTorch: collected only off TensorFlow, every
# test in them marked here (each skips itself on a backend it does not cover).
OTHER_BACKEND_FILES = ("test_backends.py", "test_spectral_backends.py", "test_jax_eager.py",
                       "test_torch_norms.py")
BACKEND_NEUTRAL_FILES = OTHER_BACKEND_FILES + (
    "test_wrapper_math.py",
    "test_normalizations.py",
    "test_overflow.py",
    "test_granularity.py",
    "test_gradient_norms.py",
    "test_save_load.py",
    "test_saved_fixtures.py",
    "test_saved_across_backends.py",
)


def keras_backend():
    """The Keras backend of this process (imports Keras), or the one named in
    NORMOPT_TESTS_KERAS_BACKEND: a test that starts a pytest child needing
    no Keras sets it there (importing Keras imports TensorFlow, ~9 s)."""
    named = os.environ.get("NORMOPT_TESTS_KERAS_BACKEND")
    if named:
        return named
    import keras

    return keras.backend.backend()


def _tensorflow_process():
    return keras_backend() == "tensorflow"


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    if _tensorflow_process():
        return True if name in OTHER_BACKEND_FILES else None
    return True if name not in BACKEND_NEUTRAL_FILES else None


def pytest_report_header(config):
    return f"Keras backend: {keras_backend()}"


def pytest_configure(config):
    # xdist's loadfile hands out files with the most tests first by default;
    # the collection order (LONGEST_FIRST) is the better guess of their cost.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    config.addinivalue_line(
        "markers", "slow: exhaustive sweeps, run with --runslow"
    )
    if config.getoption("--runslow") and not config.getoption(
        "hypothesis_profile", None
    ):
        settings.load_profile("ci-full")


def covering(*axes):
    """pytest.params over the product of `axes` (lists of values): a covering
    subset, every value of every axis at least once (as many cases as the
    longest axis), runs by default; the rest of the product is marked slow
    and runs with --runslow.

        @pytest.mark.parametrize("shapes,dtype", covering(SHAPES, DTYPES))
    """
    longest = max(len(axis) for axis in axes)
    keep = {tuple(axis[i % len(axis)] for axis in axes) for i in range(longest)}
    return [
        pytest.param(*combo, marks=() if combo in keep else (pytest.mark.slow,))
        for combo in itertools.product(*axes)
    ]


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", help="run tests marked slow"
    )


# The files that take longest (seconds of one worker in a clean CI run on a
# 2-core machine, 2026-12-07; (*) a run whose TensorFlow imports compiled
# from source, less with bytecode), longest first. Under pytest-xdist's --dist
# loadfile a worker takes the next file when it finishes one; handing out the
# long ones first keeps a long file from starting last and running alone at
# the end. test_kernels_numba.py goes first: it compiles the Numba CPU
# kernels for every dtype into Numba's on-disk cache
# (normopt/kernels/__pycache__), which the processes started later load
# instead of compiling again (the simulator suite's child alone spent ~35 s
# compiling them).
LONGEST_FIRST = (
    "test_kernels_numba.py",     # 46 (Numba compiles)
    "test_cuda_compile.py",      # 89
    "test_distribute.py",        # 60
    "test_packaging.py",         # 84 (*)
    "test_kernels_cudasim.py",   # 52
    "test_fused_determinism.py",  # 45 (*)
    "test_faults.py",            # 44 (*)
    "test_overflow.py",          # 44
    "test_bench_fit.py",         # 43
    "test_keras_integration.py",  # 34
    "test_experiments.py",       # 33
    "test_multiworker.py",       # 33
    "test_save_load.py",         # 31
    "test_fused_switch.py",      # 29
    "test_cli.py",               # 23 (*)
    "test_lm_experiment.py",     # 23
)


# First: the other hooks (`-m backend_neutral` included) see the markers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
    _select_backend_neutral(config, items)
    # A download of ~600 MB and three full builds: only when asked for by name.
    if "cuda_wheel" not in (config.getoption("markexpr") or ""):
        wheel = pytest.mark.skip(reason="builds against TensorFlow's CUDA wheel; "
                                 "run with -m cuda_wheel")
        for item in items:
            if "cuda_wheel" in item.keywords:
                item.add_marker(wheel)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow sweep; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _select_backend_neutral(config, items):
    """On TensorFlow: every backend_neutral test is in BACKEND_NEUTRAL_FILES
    (else the other backends would never collect it). Elsewhere: only the
    backend_neutral tests stay, the rest reported as deselected."""
    for item in items:
        if item.path.name in OTHER_BACKEND_FILES:
            item.add_marker(pytest.mark.backend_neutral)
    neutral = [item for item in items if "backend_neutral" in item.keywords]
    if _tensorflow_process():
        stray = sorted({item.path.name for item in neutral
                        if item.path.name not in BACKEND_NEUTRAL_FILES})
        if stray:
            raise pytest.UsageError(
                f"backend_neutral tests in {', '.join(stray)}: add the file to "
                "BACKEND_NEUTRAL_FILES in tests/conftest.py")
        return
    if len(neutral) < len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if "backend_neutral" not in item.keywords])
        items[:] = neutral
