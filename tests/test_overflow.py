"""Issue 11, items 2 and 3: norms and scales of huge but finite gradients.

Item 3: with float32 entries of about 1e19 (or 3e38) and float64 entries of
about 1e160, the plain statistics (sum g^2, sum|g|, m2, max + min) overflow
although the norm is representable, and 1/norm of a norm above 2^126 is
flushed to zero: the update was silently zero. Every representable norm must
now come out finite and right, and g / norm must not vanish, on every path:
the raw compiled ops, the pure-TF functions (eagerly and under XLA), the
wrappers on the fused, fused_scale, tf and XLA paths, the Numba CPU kernels,
the host-emulated CUDA kernels (csrc/cuda) and the Numba CUDA kernels under
the simulator. A norm that is not representable (l1 of [3e38, -2.5e38]) is
inf, and the scale 0, as before.

Item 2: `std` on the TF/XLA path was NaN for a mean above ~1.8e19 (0 * inf
in the implicit zeros' share of an IndexedSlices' m2), dense and sparse.

Everything is compared with the float64 NumPy reference (reference.py).
The keras.ops norms, scales and wrapper steps (eager and compiled) run on
every backend; the compiled op, IndexedSlices and tf.function's XLA on
TensorFlow.
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import normopt
import reference as R
from conftest import covering
from neutral import (FLOAT64, PURE, TENSORFLOW, compiled, compiled_apply, f64, neutral, norm_of,
                     scale_gradient)
from neutral import tensor as to_tensor
from normopt import normalizations as N


class SubclassedRMSprop(keras.optimizers.RMSprop):
    """RMSprop as a subclass: a subclass may change update_step, so no fused
    rule takes it and a wrapper runs it on the fused_scale path."""


EPS = 1e-7
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32_MAX = float(np.finfo(np.float32).max)


def _case(seed, n, scale, dtype, spike=None):
    rng = np.random.RandomState(seed)
    g = rng.standard_normal(n) * scale + 0.3 * scale
    if spike is not None:
        g[: len(spike)] = spike
    return g.astype(dtype)


# name -> one gradient tensor whose plain statistics (or 1/norm) overflow
CASES = {
    # sum g^2 ~ 4e41, m2 overflow: l2, avg_l2, l1_l2, avg_l1_l2 and std
    "f32_1e19": _case(0, 70_001, 1e19, np.float32),
    # max + min, l1 + l2 overflow; 1/norm below 2^-126 for every norm
    "f32_3e38": _case(1, 37, 1e36, np.float32, spike=[3e38, 2.9e38, -2.5e38]),
    # the same in double
    "f64_1e160": _case(2, 70_001, 1e160, np.float64),
    "f64_1e307": _case(3, 37, 1e305, np.float64, spike=[1.7e308, 1.6e308, -1.2e308]),
    # 16-bit storage, float32 accumulation
    "bf16_1e19": _case(4, 4_099, 1e19, np.float32),
}
NORMS = list(R.NORM_NAMES)
# the cases a backend can hold (float64 ones where it keeps float64)
HELD = [name for name in CASES if FLOAT64 or not name.startswith("f64")]


def tensor(name):
    g = CASES[name]
    return to_tensor(g, "bfloat16" if name.startswith("bf16") else g.dtype.name)


def as_f64(t):
    return f64(t)


def acc_max(name):
    return float(np.finfo(np.float64).max) if name.startswith("f64") else F32_MAX


def expected_norm(name, norm):
    """The float64 reference norm; inf where the accumulation type cannot hold
    it. Entries near 1e160 would overflow the reference itself: it measures
    g * 2^-e (exact) and multiplies back, e the exponent of max|g|."""
    g = as_f64(tensor(name))
    c = np.ldexp(1.0, -int(np.frexp(np.abs(g).max())[1]))
    with np.errstate(over="ignore"):
        want = R.norm(g * c, norm, 0.0) / c + EPS
    return np.inf if want > acc_max(name) else want


def check_norm(got, name, norm, rtol=2e-5):
    want = expected_norm(name, norm)
    got = float(got)
    if np.isinf(want):
        assert got == np.inf, (name, norm, got)
    else:
        assert np.isfinite(got), (name, norm, got)
        np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"{name} {norm}")


def expected_scaled(name, norm, mode, clipnorm=1.0):
    g = as_f64(tensor(name))
    n = expected_norm(name, norm)
    return R.clip(g, n, clipnorm) if mode == "clip" else R.normalize(g, n)


def check_scaled(got, name, norm, mode, clipnorm=1.0, rtol=2e-5):
    want = expected_scaled(name, norm, mode, clipnorm)
    got = as_f64(got).reshape(want.shape)
    # rounding of a 16-bit store; results below the smallest normal number may
    # flush to zero (denormals off), hence the absolute floor
    tol = 1e-2 if name.startswith("bf16") else rtol
    atol = 1e-6 * max(np.abs(want).max(), 1e-300)
    assert np.isfinite(got).all()
    if np.isfinite(expected_norm(name, norm)):
        assert np.abs(got).max() > 0, "the scaled gradient vanished"
    np.testing.assert_allclose(got, want, rtol=tol, atol=atol, err_msg=f"{name} {norm} {mode}")


def needs_library():
    from normopt.ops import library

    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


def every_cheap_covering_costly(axes, cheap, costly, ident=str, costly_axes=None,
                                neutral_values=()):
    """pytest.params of (*combo, value): every combination of `axes` with each
    value of `cheap`; with `costly` (XLA, whose compile dominates) a covering
    subset (conftest.covering) of `costly_axes` (sub-lists of `axes`; default
    `axes` itself), every other combination with --runslow. ident(value)
    names the value in the test id; the values in `neutral_values` are
    marked backend_neutral. Off TensorFlow, where every new shape, dtype and
    norm costs compiles, `cheap` too covers `axes` (the rest --runslow)."""
    def param(combo, value, marks=()):
        name = "-".join(str(v) for v in combo) + "-" + ident(value)
        if value in neutral_values:
            marks = (*marks, neutral)
        return pytest.param(*combo, value, marks=marks, id=name)

    default = {tuple(p.values) for p in covering(*(costly_axes or axes)) if not p.marks}
    cheap_default = {tuple(p.values) for p in covering(*axes) if not p.marks}
    return ([param(combo, value,
                   () if TENSORFLOW or combo in cheap_default else (pytest.mark.slow,))
             for combo in itertools.product(*axes) for value in cheap]
            + [param(combo, costly, () if combo in default else (pytest.mark.slow,))
               for combo in itertools.product(*axes)])


# False: eager; True: compiled (TensorFlow: XLA; JAX: jax.jit)
XLA_ID = {False: "tf", True: "xla"}.get if TENSORFLOW else {False: "eager", True: "jit"}.get


# ------------------------------------------------------------- raw ops


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_fused_norms(name, norm):
    from normopt.ops import raw_ops as fused

    needs_library()
    # the same tensor twice: as one of several chunks, and alone
    got = fused.norms([tensor(name), tensor(name)[:1000]], norm, EPS).numpy()
    check_norm(got[0], name, norm)


@pytest.mark.parametrize("mode", ["normalize", "clip"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_fused_scale(name, norm, mode):
    from normopt.ops import raw_ops as fused

    needs_library()
    out = fused.scale([tensor(name)], norm, mode, 1.0, EPS)[0]
    check_scaled(out, name, norm, mode)


# ------------------------------------- keras.ops, eager and compiled


@pytest.mark.parametrize("name, norm, xla", every_cheap_covering_costly(
    [HELD, NORMS], [False], True, XLA_ID, neutral_values=(False, True)))
def test_tf_norm(name, norm, xla):
    fn = lambda t: norm_of(t, norm, EPS)  # noqa: E731
    if xla:
        fn = compiled(fn)
    check_norm(fn(tensor(name)), name, norm)


@pytest.mark.parametrize("name, norm, mode, xla", every_cheap_covering_costly(
    [[c for c in ["f32_1e19", "f32_3e38", "f64_1e307"] if c in HELD], NORMS,
     ["normalize", "clip"]], [False], True, XLA_ID, neutral_values=(False, True)))
def test_tf_scale(name, norm, mode, xla):
    fn = lambda t: scale_gradient(t, norm, mode, 1.0, EPS)  # noqa: E731
    if xla:
        fn = compiled(fn)
    check_scaled(fn(tensor(name)), name, norm, mode)


# Under XLA by default the norms whose statistics hold every other one's
# (the sums and means of l1_l2 and avg_l1_l2, min_max's max and min, std's
# m2 with the implicit zeros); every norm eagerly, and under XLA with
# --runslow.
SPARSE_XLA_DEFAULT = ("l1_l2", "avg_l1_l2", "min_max", "std")


@pytest.mark.parametrize("norm, xla", [
    pytest.param(norm, xla, id=f"{norm}-{'xla' if xla else 'tf'}",
                 marks=(pytest.mark.slow,) if xla and norm not in SPARSE_XLA_DEFAULT else ())
    for norm in NORMS for xla in (False, True)])
def test_tf_norm_of_indexed_slices(norm, xla):
    import tensorflow as tf

    """Sparse: 3 rows of 1e19-sized values in a 50x40 tensor (with a
    duplicate index), measured as the dense tensor."""
    rng = np.random.RandomState(5)
    values = (rng.standard_normal((4, 40)) * 1e19 + 3e19).astype(np.float32)
    slices = tf.IndexedSlices(tf.constant(values), tf.constant([3, 7, 3, 20]),
                              tf.constant([50, 40]))
    dense = tf.convert_to_tensor(slices).numpy().astype(np.float64)
    fn = lambda s: N.tf_norm(s, norm, EPS)  # noqa: E731
    if xla:
        fn = tf.function(fn, jit_compile=True)
    got = float(fn(slices))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, R.norm(dense, norm, EPS), rtol=2e-5)


# ------------------------------------------ item 2: std with a huge mean


@pytest.mark.parametrize("xla", [False, True], ids=XLA_ID)
@pytest.mark.parametrize("sparse", [pytest.param(False, marks=neutral), True],
                         ids=["dense", "sparse"])
def test_std_with_mean_above_1p8e19_is_not_nan(sparse, xla):
    """mean^2 overflows float32 above ~1.8e19: the implicit zeros' share
    0 * mean^2 of a dense tensor (or an IndexedSlices covering every row)
    was 0 * inf = NaN."""
    rng = np.random.RandomState(6)
    values = (2e19 + rng.standard_normal((6, 5)) * 1e18).astype(np.float32)
    if sparse:
        import tensorflow as tf

        # every row present: no implicit zeros
        g = tf.IndexedSlices(tf.constant(values), tf.constant([5, 4, 3, 2, 1, 0]),
                             tf.constant([6, 5]))
    else:
        g = to_tensor(values)
    fn = lambda t: norm_of(t, "std", EPS)  # noqa: E731
    if xla:
        fn = compiled(fn)
    got = float(fn(g))
    assert np.isfinite(got), got
    np.testing.assert_allclose(got, R.norm(values, "std", EPS), rtol=1e-4)


@pytest.mark.parametrize("xla", [False, True], ids=["tf", "xla"])
def test_std_of_sparse_huge_rows_with_implicit_zeros(xla):
    """A constant 2e19 in 3 of 10 rows: mean 6e18, std from the zeros' share."""
    import tensorflow as tf

    values = np.full((3, 4), 2e19, np.float32)
    g = tf.IndexedSlices(tf.constant(values), tf.constant([0, 2, 5]), tf.constant([10, 4]))
    fn = lambda t: N.tf_norm(t, "std", EPS)  # noqa: E731
    if xla:
        fn = tf.function(fn, jit_compile=True)
    dense = tf.convert_to_tensor(g).numpy()
    np.testing.assert_allclose(float(fn(g)), R.norm(dense, "std", EPS), rtol=1e-5)


def test_std_agrees_between_fused_and_tf_for_a_huge_mean():
    import tensorflow as tf
    from normopt.ops import raw_ops as fused

    needs_library()
    rng = np.random.RandomState(7)
    g = tf.constant((2e19 + rng.standard_normal(1000) * 1e18).astype(np.float32))
    want = R.norm(g.numpy(), "std", EPS)
    np.testing.assert_allclose(float(fused.norms([g], "std", EPS)[0]), want, rtol=1e-4)
    np.testing.assert_allclose(float(N.tf_norm(g, "std", EPS)), want, rtol=1e-4)


# ------------------------------------------------------------- wrappers

# path -> (fused argument, inner optimizer, reference, path that must run, XLA)
# "tf" and "xla" are the keras.ops path eagerly and compiled (TensorFlow's
# XLA, JAX's jit: neutral.compiled_apply), on every backend.
LR = 0.125
PATHS = {
    "fused": (True, lambda: keras.optimizers.SGD(LR), lambda: R.SGD(LR), "fused", False),
    "fused_scale": (None, lambda: SubclassedRMSprop(LR), lambda: R.RMSprop(LR),
                    "fused_scale", False),
    "tf": (False, lambda: keras.optimizers.SGD(LR), lambda: R.SGD(LR), PURE, False),
    "xla": (None, lambda: keras.optimizers.SGD(LR), lambda: R.SGD(LR), PURE, True),
}
# (float64 where the backend keeps it)
WRAPPER_CASES = ["f32_1e19", "f32_3e38"] + (["f64_1e160", "f64_1e307"] if FLOAT64 else [])


WRAPPER_NORMS = ["l2", "l1_l2", "max", "min_max", "std", "avg_l1"]
WRAPPERS = ["normalized", "clipped"]


# Under XLA by default: one norm per wrapper (each norm's formula under XLA
# is test_tf_norm's and test_tf_scale's), every norm with --runslow.
@pytest.mark.parametrize("norm, wrapper, path", every_cheap_covering_costly(
    [WRAPPER_NORMS, WRAPPERS], [p for p in PATHS if p != "xla"], "xla",
    costly_axes=[["l2", "std"], WRAPPERS], neutral_values=("tf", "xla")))
def test_wrapper_steps(norm, wrapper, path):
    fused_arg, inner, reference, expected, xla = PATHS[path]
    if expected.startswith("fused"):
        needs_library()
    cls = normopt.NormalizedOptimizer if wrapper == "normalized" else normopt.ClippedOptimizer
    mode = "normalize" if wrapper == "normalized" else "clip"
    grads = [tensor(name) for name in WRAPPER_CASES]
    variables = [keras.Variable(np.zeros(g.shape, CASES[name].dtype), dtype=CASES[name].dtype)
                 for g, name in zip(grads, WRAPPER_CASES)]
    opt = cls(inner(), normalization=norm, fused=fused_arg)
    opt.build(variables)
    step = lambda: opt.apply(grads, variables)  # noqa: E731
    if xla:
        step = compiled_apply(opt, grads, variables)
    ref = reference()
    ref_w = [np.zeros(g.shape) for g in grads]
    for _ in range(2):
        step()
        for i, name in enumerate(WRAPPER_CASES):
            g = expected_scaled(name, norm, mode)
            ref_w[i] = ref.step(i, ref_w[i], g)
    assert opt.last_path.name == expected, opt.last_path
    for name, w, r in zip(WRAPPER_CASES, variables, ref_w):
        got = f64(w)
        assert np.isfinite(got).all()
        if np.isfinite(expected_norm(name, norm)):
            assert np.abs(got).max() > 0, f"{name}: the update was zero"
        np.testing.assert_allclose(got, r, rtol=1e-4, atol=1e-6 * np.abs(r).max(),
                                   err_msg=name)


# -------------------------------------------------- reference kernels


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_numba_cpu(name, norm):
    numba_cpu = pytest.importorskip("normopt.kernels.numba_cpu")
    g = CASES[name] if not name.startswith("bf16") else None
    if g is None:
        import ml_dtypes

        g = CASES[name].astype(ml_dtypes.bfloat16)
    check_norm(numba_cpu.norms([g, g[:100]], norm, EPS, chunk_size=4096)[0], name, norm)
    for mode in ("normalize", "clip"):
        out = numba_cpu.scale([g], norm, mode, 1.0, EPS, chunk_size=4096)[0]
        check_scaled(out, name, norm, mode)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    from test_cuda_compile import HostEmulated, build_emulation

    return HostEmulated(build_emulation(tmp_path_factory, 8))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["f32_1e19", "f32_3e38", "f64_1e160", "f64_1e307"])
def test_host_emulated_cuda(emulated, name, norm):
    g = CASES[name]
    if name.endswith("1e19") or name.endswith("1e160"):
        g = g[:5_003]  # the emulation runs blocks as threads: keep it small
    CASES_SMALL = {name: g}
    check = dict(CASES)
    CASES.update(CASES_SMALL)
    try:
        norms = emulated.norms([g, g[:10]], norm, EPS, chunk_size=1024)
        check_norm(norms[0], name, norm)
        for mode in ("normalize", "clip"):
            check_scaled(emulated.scale([g], norm, mode, 1.0, EPS, chunk_size=1024)[0],
                         name, norm, mode)
        w = np.zeros_like(g)
        emulated.apply_sgd([w], [g], lr=LR, kind=norm, eps=EPS, chunk_size=1024)
        np.testing.assert_allclose(w, -LR * expected_scaled(name, norm, "normalize"),
                                   rtol=2e-5, atol=1e-6 * LR * np.abs(
                                       expected_scaled(name, norm, "normalize")).max())
    finally:
        CASES.clear()
        CASES.update(check)


# normopt.kernels without normopt/__init__.py (which imports Keras and
# TensorFlow, ~9 s here), as benchmarks/gpu_validate.py does; a short GIL
# switch interval, since the simulator busy-waits on its block threads.
_SIM_SCRIPT = r"""
import json, os, sys, types
import numpy as np
sys.setswitchinterval(1e-5)
pkg = types.ModuleType("normopt")
pkg.__path__ = [os.path.join(os.getcwd(), "normopt")]
sys.modules["normopt"] = pkg
from normopt.kernels import numba_cuda
assert numba_cuda.SIMULATED
cases = {k: np.load(v) for k, v in json.loads(sys.argv[1]).items()}
out = {}
for name, g in cases.items():
    for norm in %r:
        n = numba_cuda.norms([g], norm, 1e-7, chunk_size=64, threads=4)[0]
        s = numba_cuda.scale([g], norm, "normalize", 1.0, 1e-7, chunk_size=64, threads=4)[0]
        out[name + "/" + norm] = [float(n), [float(x) for x in s]]
print(json.dumps(out))
assert "tensorflow" not in sys.modules and "keras" not in sys.modules
"""


def test_numba_cuda_simulator(tmp_path):
    pytest.importorskip("numba")
    small = {"f32_1e19": CASES["f32_1e19"][:300], "f32_3e38": CASES["f32_3e38"],
             "f64_1e160": CASES["f64_1e160"][:300]}
    paths = {}
    for name, g in small.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], g)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, "-c", _SIM_SCRIPT % (NORMS,), json.dumps(paths)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    saved = dict(CASES)
    try:
        CASES.update(small)
        for name in small:
            for norm in NORMS:
                n, s = got[f"{name}/{norm}"]
                check_norm(n, name, norm)
                check_scaled(np.array(s), name, norm, "normalize")
    finally:
        CASES.clear()
        CASES.update(saved)
