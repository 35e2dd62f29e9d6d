"""Unit-wise and global norms, exclusions and adaptive gradient clipping.

Every granularity x every built-in norm x NormalizedOptimizer /
ClippedOptimizer / AdaptiveClippedOptimizer, one SGD(lr=1) step (so the
variable moves by exactly -g'), against a NumPy reference written here from
the definitions (DESIGN.md, "Beyond per-tensor"): per unit the norm is taken
over all axes but the last; a tensor of at most one axis is one unit; the
global norm is that of all non-excluded gradients concatenated.

The keras.ops path (eager, and compiled: TensorFlow's XLA, JAX's jit) runs
on every backend, in float64 where the backend keeps it (neutral.WIDE); the
compiled op and IndexedSlices on TensorFlow.
"""

import numpy as np
import pytest

import keras
import normopt
import reference as R
from conftest import covering
from neutral import (BACKEND, FLOAT64, PURE, TENSORFLOW, WIDE, apply, compiled_apply, f64, neutral,
                     neutral_if_float64, numpy_dtype, tensor)

NORMS = list(R.NORM_NAMES)
GRANULARITIES = ["tensor", "unit", "global"]
SHAPES = [(4, 3), (3,), (2, 2, 3, 5), ()]
EPS = 1e-7
CLIPNORM = 0.75
CLIP_FACTOR = 0.05
WEIGHT_EPS = 1e-3


def units_of(a):
    """The units of an array as rows: (units, elements per unit)."""
    a = np.asarray(a, np.float64)
    if a.ndim <= 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1]).T


def per_unit(a, values):
    """`values` (one per unit) laid out to multiply `a` elementwise."""
    a = np.asarray(a)
    return np.full(a.shape, values[0]) if a.ndim <= 1 else np.broadcast_to(values, a.shape)


def reference_norms(arrays, name, granularity, excluded=()):
    """Per array: the norm of each element's unit (an array of its shape)."""
    if granularity == "global":
        kept = [a for i, a in enumerate(arrays) if i not in excluded]
        n = R.norm(np.concatenate([np.ravel(a) for a in kept]), name, EPS)
        return [np.full(np.shape(a), n) for a in arrays]
    out = []
    for a in arrays:
        if granularity == "tensor":
            out.append(np.full(np.shape(a), R.norm(a, name, EPS)))
        else:
            out.append(per_unit(a, [R.norm(u, name, EPS) for u in units_of(a)]))
    return out


def reference_step(kind, grads, weights, name, granularity, excluded=()):
    """g' of each gradient (excluded ones unchanged)."""
    gn = reference_norms(grads, name, granularity, excluded)
    out = []
    if kind == "adaptive":
        wn = reference_norms(weights, name, granularity, excluded)
    for i, (g, n) in enumerate(zip(grads, gn)):
        g = np.asarray(g, np.float64)
        if i in excluded:
            out.append(g)
        elif kind == "normalized":
            out.append(g / n)
        elif kind == "clipped":
            out.append(np.where(n >= CLIPNORM, g * CLIPNORM / n, g))
        else:
            threshold = CLIP_FACTOR * np.maximum(wn[i], WEIGHT_EPS)
            out.append(np.where(n > threshold, g * threshold / n, g))
    return out


def make_wrapper(kind, name, granularity, fused, lr=1.0, inner=None):
    """The wrapper of `kind` around `inner` (default SGD(lr))."""
    inner = inner or keras.optimizers.SGD(lr)
    if kind == "normalized":
        return normopt.NormalizedOptimizer(inner, name, fused=fused, granularity=granularity)
    if kind == "clipped":
        return normopt.ClippedOptimizer(inner, name, clipnorm=CLIPNORM, fused=fused,
                                        granularity=granularity)
    return normopt.AdaptiveClippedOptimizer(inner, clip_factor=CLIP_FACTOR, eps=WEIGHT_EPS,
                                            normalization=name, granularity=granularity,
                                            fused=fused)


def data(seed=0, dtype="float64"):
    rng = np.random.RandomState(seed)
    grads = [rng.standard_normal(s) * 10.0 ** rng.uniform(-1, 1, s[-1:] if s else ())
             for s in SHAPES]
    weights = [rng.standard_normal(s) * 0.3 for s in SHAPES]
    # a unit of zero weights: the adaptive threshold falls back to eps
    weights[0][:, 1] = 0.0
    return [np.asarray(g, dtype) for g in grads], [np.asarray(w, dtype) for w in weights]


def one_step(opt, grads, weights, dtype, xla=False, exclude=None):
    variables = [keras.Variable(w, dtype=dtype, name=f"v{i}") for i, w in enumerate(weights)]
    if exclude is not None:
        exclude(opt, variables)
    tensors = [tensor(g, dtype) for g in grads]
    if xla:
        compiled_apply(opt, tensors, variables)()
    else:
        opt.apply(tensors, variables)
    return [w - f64(v) for v, w in zip(variables, weights)]


TOL = {"float64": dict(rtol=1e-9, atol=1e-12), "float32": dict(rtol=2e-5, atol=1e-6)}


KINDS = ["normalized", "clipped", "adaptive"]
# Every granularity x norm of NormalizedOptimizer on the keras.ops path
# (TensorFlow; off it, where each new shape and norm costs compiles, a
# covering subset); the other wrappers, and fused=None (the compiled op: SGD
# has a fused rule), on a covering subset by default and in full with
# --runslow.
CASES = [
    pytest.param(*p.values, fused, id="-".join(p.values) + ("-tf" if fused is False else "-auto"),
                 marks=(() if fused is False and p.values[0] == "normalized" and TENSORFLOW
                        else p.marks)
                 + ((neutral,) if fused is False else ()))
    for fused in (False, None) for p in covering(KINDS, GRANULARITIES, NORMS)]


@pytest.mark.parametrize("kind,granularity,name,fused", CASES)
def test_matches_numpy(kind, granularity, name, fused):
    grads, weights = data(dtype=WIDE)
    opt = make_wrapper(kind, name, granularity, fused)
    got = one_step(opt, grads, weights, WIDE)
    want = reference_step(kind, grads, weights, name, granularity)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL[WIDE])
    # fused=None: the compiled op does every granularity and adaptive clipping
    assert opt.last_path.name == (PURE if fused is False else "fused")


@neutral_if_float64
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_adaptive_threshold_keeps_float64(granularity):
    """clip_factor * max(norm(w), eps) in float64: Keras's ops.maximum
    narrows two float64 tensors to float32 on PyTorch (its type promotion),
    which put the update 1e-8 relative off there."""
    grads, weights = data(2, "float64")
    opt = make_wrapper("adaptive", "std", granularity, False)
    got = one_step(opt, grads, weights, "float64")
    want = reference_step("adaptive", grads, weights, "std", granularity)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL["float64"])
    assert opt.last_path.name == PURE


# Several chunks (16384 elements each) and unit blocks (256 units each) of
# the compiled op: a chunk that starts mid-row, a unit-wise tensor of two
# unit blocks, a multi-chunk vector.
BIG_SHAPES = [(60, 300), (300,), (3, 5, 7, 40), (20000,)]
# relative to |w| + |g'|, plus half the float16 subnormal spacing
STORED_TOL = {"float32": (2e-5, 0.0), "bfloat16": (1e-2, 0.0), "float16": (2e-3, 2**-25)}


@pytest.mark.parametrize("kind,granularity,name,dtype",
                         covering(KINDS, GRANULARITIES, ["l1", "l2", "std", "min_max"],
                                  ["float32", "bfloat16", "float16"]))
def test_fused_dtypes_and_chunks_match_numpy(kind, granularity, name, dtype):
    rng = np.random.RandomState(7)
    grads = [rng.standard_normal(s) * 10.0 ** rng.uniform(-1, 1, s[-1:]) for s in BIG_SHAPES]
    weights = [rng.standard_normal(s) * 0.5 for s in BIG_SHAPES]
    grads = [tensor(g, dtype) for g in grads]
    variables = [keras.Variable(tensor(w, dtype)) for w in weights]
    w0 = [f64(v) for v in variables]
    opt = make_wrapper(kind, name, granularity, None)
    opt.apply(grads, variables)
    assert opt.last_path.name == "fused"
    want = reference_step(kind, [f64(g) for g in grads], w0, name, granularity)
    rtol, atol = STORED_TOL[dtype]
    for v, w, g in zip(variables, w0, want):
        got = w - f64(v)
        # the variable is stored in `dtype`: its rounding bounds the error
        assert np.all(np.abs(got - g) <= rtol * (np.abs(w) + np.abs(g)) + atol), (
            np.max(np.abs(got - g)))


@pytest.mark.parametrize("granularity", ["unit", "global"])
@pytest.mark.parametrize("name", ["l2", "std"])
def test_fused_norm_that_overflows_is_rescued(granularity, name):
    """float32 sums of squares of 1e30s overflow; the norms do not."""
    g = np.full((4, 3), 1e30, np.float32)
    g[:, 1] = -2e30
    g[0, 2] = 3e30
    small = np.float32([0.5, -1.5])
    opt = make_wrapper("normalized", name, granularity, None)
    variables = [keras.Variable(np.zeros((4, 3), np.float32)), keras.Variable(np.zeros(2, np.float32))]
    opt.apply([tensor(g), tensor(small)], variables)
    assert opt.last_path.name == "fused"
    want = reference_step("normalized", [g.astype(np.float64), small.astype(np.float64)],
                          None, name, granularity)
    for v, w in zip(variables, want):
        np.testing.assert_allclose(-f64(v), w, rtol=2e-5)


# Compiled: TensorFlow's XLA, JAX's jit of stateless_apply.
@neutral
@pytest.mark.parametrize("kind,granularity,name",
                         covering(["normalized", "adaptive"], GRANULARITIES, ["l2", "std", "min_max"]))
def test_xla_matches_numpy(kind, granularity, name):
    grads, weights = data(1, "float32")
    opt = make_wrapper(kind, name, granularity, None)
    got = one_step(opt, grads, weights, "float32", xla=True)
    assert opt.last_path.name == PURE
    assert ("XLA" if TENSORFLOW else BACKEND) in opt.last_path.reason
    want = reference_step(kind, grads, weights, name, granularity)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL["float32"])


@pytest.mark.parametrize("how,granularity,fused", [
    pytest.param(*p.values, marks=(*p.marks, neutral) if p.values[2] is False else p.marks)
    for p in covering(["list", "names"], GRANULARITIES, [False, None])])
def test_exclusions(how, granularity, fused):
    grads, weights = data(2, WIDE)
    opt = make_wrapper("normalized", "l2", granularity, fused)

    def exclude(opt, variables):
        if how == "list":
            opt.exclude_from_normalization(var_list=[variables[1], variables[3]])
        else:
            opt.exclude_from_normalization(var_names=["v1", "^v3$"])

    got = one_step(opt, grads, weights, WIDE, exclude=exclude)
    want = reference_step("normalized", grads, weights, "l2", granularity, excluded=(1, 3))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL[WIDE])
    # handed on untouched: only the rounding of w - g remains
    np.testing.assert_allclose(got[1], grads[1], rtol=0,
                               atol=1e-15 if FLOAT64 else
                               1e-6 * (np.abs(weights[1]) + np.abs(grads[1])).max())
    assert opt.last_path.name == (PURE if fused is False else "fused")


@neutral
def test_exclusion_after_build_is_refused():
    opt = normopt.NormalizedOptimizer("sgd")
    opt.build([keras.Variable(np.zeros(2))])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_normalization(var_names=["bias"])


def test_sparse_gradient_uses_the_dense_equivalent_per_unit():
    import tensorflow as tf

    table = np.zeros((50, 4))
    values = np.arange(12, dtype=np.float64).reshape(3, 4) - 5
    indices = np.array([7, 3, 7])
    dense = np.zeros((50, 4))
    np.add.at(dense, indices, values)
    for kind, name in [("normalized", "l2"), ("normalized", "min_max"), ("clipped", "std"),
                       ("adaptive", "avg_l1")]:
        for granularity in GRANULARITIES:
            opt = make_wrapper(kind, name, granularity, None)
            var = keras.Variable(table + 0.25, dtype="float64")
            opt.apply([tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                        tf.constant([50, 4]))], [var])
            want = reference_step(kind, [dense], [table + 0.25], name, granularity)[0]
            np.testing.assert_allclose(0.25 + table - f64(var), want, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{kind} {name} {granularity}")


@neutral
@pytest.mark.parametrize("granularity", ["unit"])
def test_mixed_precision_trains(granularity):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(2, dtype="float32")])
        opt = normopt.AdaptiveClippedOptimizer(keras.optimizers.Adam(1e-2),
                                               granularity=granularity)
        model.compile(optimizer=opt, loss="mse")
        rng = np.random.RandomState(0)
        x = rng.standard_normal((128, 6)).astype("float32")
        y = np.stack([x.sum(1), x[:, 0] * 2], 1).astype("float32")
        hist = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"]))
        assert hist.history["loss"][-1] < hist.history["loss"][0]
    finally:
        keras.config.set_dtype_policy("float32")


@neutral
def test_mixed_precision_step_matches_numpy():
    """Unit norms of an unscaled float16 gradient under a LossScaleOptimizer."""
    grads, weights = data(3, "float16")
    wrapper = make_wrapper("normalized", "l2", "unit", None)
    lso = keras.optimizers.LossScaleOptimizer(wrapper, initial_scale=256.0)
    variables = [keras.Variable(w, dtype="float32") for w in weights]
    apply(lso, [tensor(g.astype(np.float32) * 256.0) for g in grads], variables)
    want = reference_step("normalized", [g.astype(np.float64) for g in grads], weights,
                          "l2", "unit")
    for v, w0, g in zip(variables, weights, want):
        np.testing.assert_allclose(w0.astype(np.float64) - f64(v), g, rtol=2e-3, atol=2e-3)


@neutral
@pytest.mark.parametrize("kind,granularity", covering(KINDS, GRANULARITIES))
def test_save_load_keeps_every_argument(tmp_path, kind, granularity):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    opt = make_wrapper(kind, "avg_l2", granularity, None, lr=0.01)
    opt.exclude_from_normalization(var_names=["bias"])
    model.compile(optimizer=opt, loss="mse")
    # built (its variables saved and loaded back) without a training step:
    # a step changes no argument, and its compile costs more than the rest
    opt.build(model.trainable_variables)
    assert opt.built
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").optimizer
    assert type(loaded) is type(opt)
    assert loaded.get_config() == opt.get_config()
    assert loaded.granularity == granularity
    assert loaded._exclusion_names == ["bias"]
    if kind == "adaptive":
        assert (loaded.clip_factor, loaded.eps) == (CLIP_FACTOR, WEIGHT_EPS)


@neutral
@pytest.mark.parametrize("bad", [dict(granularity="layer"), dict(granularity=None)])
def test_bad_granularity(bad):
    with pytest.raises(ValueError, match="granularity"):
        normopt.NormalizedOptimizer("sgd", **bad)


@neutral
@pytest.mark.parametrize("clip_factor", [0, -1.0, float("nan"), float("inf"), "0.1", True])
def test_bad_clip_factor(clip_factor):
    with pytest.raises(ValueError, match="clip_factor"):
        normopt.AdaptiveClippedOptimizer("sgd", clip_factor=clip_factor)


@neutral
@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf"), None])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        normopt.AdaptiveClippedOptimizer("sgd", eps=eps)


@neutral
def test_adaptive_global_without_variables():
    opt = normopt.AdaptiveClippedOptimizer("sgd", granularity="global")
    opt.exclude_from_normalization(var_names=["."])
    with pytest.raises(ValueError, match="needs at least one variable"):
        opt.build([keras.Variable(np.zeros(2))])
    with pytest.raises(ValueError, match="needs at least one variable"):
        normopt.AdaptiveClippedOptimizer("sgd", granularity="global").build([])


# A global norm over gradients of several dtypes: the norm of all of them
# concatenated, its statistics accumulated in the widest dtype (float64 here),
# each variable updated in its own dtype. The pure-TF path measures and
# scales; with fused=None the op scales and updates each dtype by the norm
# TensorFlow measured (path fused_tf_norms), except adaptive clipping, which
# keeps the pure-TF path and says why.
MIXED_PATH = {"normalized": "fused_tf_norms", "clipped": "fused_tf_norms", "adaptive": "tf"}


def mixed_step(kind, name, fused, grads, weights, dtypes, exclude=None):
    opt = make_wrapper(kind, name, "global", fused)
    variables = [keras.Variable(tensor(np.asarray(w, numpy_dtype(d)), d), dtype=d)
                 for w, d in zip(weights, dtypes)]
    if exclude is not None:
        opt.exclude_from_normalization(var_list=[variables[i] for i in exclude])
    opt.apply([tensor(np.asarray(g, numpy_dtype(d)), d) for g, d in zip(grads, dtypes)],
              variables)
    return opt, [np.asarray(w, np.float64) - f64(v) for v, w in zip(variables, weights)]


def assert_mixed_path(opt, kind, fused):
    if fused is False:
        assert opt.last_path == (PURE, "fused=False")
        return
    assert opt.last_path.name == MIXED_PATH[kind]
    assert "several dtypes" in opt.last_path.reason


# fused=False: the keras.ops path, on every backend that keeps float64
FUSED_ARGS = [None, pytest.param(False, marks=(neutral,) if FLOAT64 else ())]


@pytest.mark.parametrize("fused", FUSED_ARGS)
@pytest.mark.parametrize("kind", KINDS)
def test_global_norm_over_float32_and_float64(kind, fused):
    """The issue's case: [3, 4] (float32) and [0, 12] (float64), SGD(1)."""
    grads = [np.array([3.0, 4.0]), np.array([0.0, 12.0])]
    weights = [np.array([1.0, -1.0]), np.array([0.5, 2.0])]
    opt, got = mixed_step(kind, "l2", fused, grads, weights, ["float32", "float64"])
    assert_mixed_path(opt, kind, fused)
    want = reference_step(kind, grads, weights, "l2", "global")
    np.testing.assert_allclose(got[0], want[0], **TOL["float32"])
    np.testing.assert_allclose(got[1], want[1], **TOL["float64"])
    np.testing.assert_allclose(f64(opt.gradient_norms), [5.0, 12.0], rtol=1e-6)


@pytest.mark.parametrize("fused", FUSED_ARGS)
@pytest.mark.parametrize("kind,name", covering(KINDS, ["l2", "std", "min_max", "avg_l1"]))
def test_global_norm_over_float32_and_float64_accumulates_in_float64(kind, name, fused):
    """float32 statistics would miss the float64 variables' tolerance."""
    grads, weights = data(4)
    dtypes = ["float32", "float64", "float32", "float64"]
    grads = [np.asarray(g, d).astype(np.float64) for g, d in zip(grads, dtypes)]
    weights = [np.asarray(w, d).astype(np.float64) for w, d in zip(weights, dtypes)]
    opt, got = mixed_step(kind, name, fused, grads, weights, dtypes)
    assert_mixed_path(opt, kind, fused)
    want = reference_step(kind, grads, weights, name, "global")
    for g, w, d in zip(got, want, dtypes):
        np.testing.assert_allclose(g, w, **TOL[d])


# fused=None: TensorFlow measures, the op scales and updates; fused=False:
# the keras.ops path, on every backend
@pytest.mark.parametrize("fused", [None, pytest.param(False, marks=neutral)])
@pytest.mark.parametrize("dtypes", [["float16", "float32", "bfloat16", "float32"],
                                    ["float16", "bfloat16", "float16", "float16"]])
def test_global_norm_over_16_bit_and_float32_gradients(dtypes, fused):
    grads, weights = data(5)
    grads = [np.asarray(g, np.float32).astype(numpy_dtype(d)).astype(np.float64)
             for g, d in zip(grads, dtypes)]
    weights = [np.asarray(w, np.float32).astype(numpy_dtype(d)).astype(np.float64)
               for w, d in zip(weights, dtypes)]
    opt, got = mixed_step("normalized", "l2", fused, grads, weights, dtypes)
    assert_mixed_path(opt, "normalized", fused)
    want = reference_step("normalized", grads, weights, "l2", "global")
    for g, w, w0, d in zip(got, want, weights, dtypes):
        rtol, atol = STORED_TOL[d]
        assert np.all(np.abs(g - w) <= rtol * (np.abs(w0) + np.abs(w)) + atol), d


def test_global_norm_over_one_dtype_besides_an_excluded_one_stays_fused():
    """Only the gradients in the norm count: an excluded float64 one leaves
    one dtype, which the op measures itself."""
    grads, weights = data(6)
    dtypes = ["float32", "float64", "float32", "float32"]
    opt, got = mixed_step("clipped", "l2", None, grads, weights, dtypes, exclude=[1])
    assert opt.last_path == ("fused", None)
    want = reference_step("clipped", grads, weights, "l2", "global", excluded=(1,))
    for g, w, d in zip(got, want, dtypes):
        np.testing.assert_allclose(g, w, **TOL[d])
