"""Whole wrapper steps against the NumPy float64 reference (reference.py).

Every built-in norm and a custom one, through NormalizedOptimizer and
ClippedOptimizer, over SGD (plain, momentum, nesterov), Adam, amsgrad and
AdamW, several steps, shapes including 0-D, odd and empty. Each case runs on
the keras.ops path (on every backend) and on the fused path (TensorFlow);
the test asserts which path ran. Norm and inner optimizer are independent
parts of a step (the fused op too: a norm kernel, then a rule's update), so
by default every norm and every inner optimizer runs once per wrapper and
path (conftest.covering); their whole product with --runslow.
"""

import numpy as np
import pytest

import keras
import normopt
import reference as R
from helpers import INNER_KINDS, SHAPES, TOL, keras_inner, make_grads, reference_inner
from keras import ops
from conftest import covering
from neutral import FLOAT64, PURE, TENSORFLOW, cases, f64, neutral, param, tensor

NORMS = list(R.NORM_NAMES) + ["linf"]
STEPS = 3
LR = 0.0625
CLIPNORM = 1.0

# path parameter -> (fused argument, expected path for a built-in norm,
#                    expected path for a custom norm)
PATHS = {
    "pure": (False, PURE, PURE),
    "fused": (True, "fused", "fused_tf_norms"),
}
# the keras.ops path on every backend, the fused op on TensorFlow
PATH_PARAMS = [param("pure"), param("fused", neutral_=False)]


def custom_l2_half(g):
    """A custom normalization: half the l2 norm plus eps."""
    if keras.backend.standardize_dtype(g.dtype) != "float64":
        g = ops.cast(g, "float32")
    return ops.sqrt(ops.sum(ops.square(g))) / 2 + keras.config.epsilon()


def custom_l2_half_np(g):
    return np.sqrt((np.asarray(g, np.float64) ** 2).sum()) / 2 + 1e-7


def run_case(wrapper_cls, norm, inner_kind, path, dtype="float32", shapes=SHAPES,
             norm_fn=None, **wrapper_kwargs):
    fused_arg, expect_builtin, expect_custom = PATHS[path]
    mode = "clip" if wrapper_cls is normopt.ClippedOptimizer else "normalize"
    rng = np.random.RandomState(1)
    init = [rng.standard_normal(s) for s in shapes]
    variables = [
        keras.Variable(w.astype(dtype), name=f"v{i}", dtype=dtype)
        for i, w in enumerate(init)
    ]
    opt = wrapper_cls(keras_inner(inner_kind, LR), normalization=norm,
                      fused=fused_arg, **wrapper_kwargs)
    ref = reference_inner(inner_kind, LR)
    ref_w = [f64(w) for w in variables]
    for step in range(STEPS):
        grads = [g.astype(dtype) for g in make_grads(shapes, seed=step)]
        opt.apply([tensor(g) for g in grads], variables)
        for i, g in enumerate(grads):
            g64 = np.asarray(g, np.float64)
            g_ref = R.transform(g64, norm, mode, CLIPNORM, norm_fn=norm_fn)
            ref_w[i] = ref.step(i, ref_w[i], g_ref)
    expected = expect_custom if norm_fn is not None else expect_builtin
    assert opt.last_path.name == expected, opt.last_path
    for w, r in zip(variables, ref_w):
        np.testing.assert_allclose(f64(w), r, **TOL[dtype])
    assert int(f64(opt.iterations)) == STEPS


@pytest.mark.parametrize("path", PATH_PARAMS)
@pytest.mark.parametrize("norm,inner_kind", covering(NORMS, INNER_KINDS))
def test_normalized(norm, inner_kind, path):
    run_case(normopt.NormalizedOptimizer, norm, inner_kind, path)


@pytest.mark.parametrize("path", PATH_PARAMS)
@pytest.mark.parametrize("norm,inner_kind", covering(NORMS, INNER_KINDS))
def test_clipped(norm, inner_kind, path):
    run_case(normopt.ClippedOptimizer, norm, inner_kind, path,
             clipnorm=CLIPNORM)


@pytest.mark.parametrize("path", PATH_PARAMS)
@pytest.mark.parametrize("inner_kind,wrapper", cases(["nesterov", "adam"], ["normalized", "clipped"]))
def test_custom_normalization(custom_norm, inner_kind, wrapper, path):
    custom_norm("half_l2", custom_l2_half)
    cls = (normopt.NormalizedOptimizer if wrapper == "normalized"
           else normopt.ClippedOptimizer)
    kwargs = {"clipnorm": CLIPNORM} if wrapper == "clipped" else {}
    run_case(cls, "half_l2", inner_kind, path, norm_fn=custom_l2_half_np,
             **kwargs)


@pytest.mark.parametrize("path", PATH_PARAMS if FLOAT64 else list(PATHS))
@pytest.mark.parametrize("norm", ["l2", "std", "min_max"])
@pytest.mark.parametrize("inner_kind", ["nesterov", "adam"])
def test_float64(norm, inner_kind, path):
    run_case(normopt.NormalizedOptimizer, norm, inner_kind, path,
             dtype="float64")


def _sgd_one_step(clipnorm, grad):
    """Returns the applied gradient of one clipped plain-SGD step with lr 1."""
    w = keras.Variable(np.zeros_like(grad), dtype="float32")
    opt = normopt.ClippedOptimizer(keras.optimizers.SGD(1.0), "l1",
                                   clipnorm=clipnorm, fused=False)
    opt.apply([tensor(grad)], [w])
    return -f64(w).astype(np.float32)


@neutral
def test_clip_boundary():
    grad = np.array([0.25, -0.5, 1.0, -0.125], np.float32)
    eps = np.float32(keras.config.epsilon())
    norm32 = np.float32(np.float32(np.abs(grad).sum()) + eps)
    at = float(norm32)
    above = float(np.nextafter(norm32, np.float32(np.inf)))
    below = float(np.nextafter(norm32, np.float32(0)))
    # norm == clipnorm: the clip branch is taken with scale clipnorm/norm == 1
    np.testing.assert_array_equal(_sgd_one_step(at, grad), grad)
    # clipnorm just above the norm: unchanged
    np.testing.assert_array_equal(_sgd_one_step(above, grad), grad)
    # clipnorm just below the norm: scaled by clipnorm / norm < 1
    got = _sgd_one_step(below, grad)
    np.testing.assert_allclose(got, grad * (below / at), rtol=1e-6)
    assert np.all(np.abs(got) < np.abs(grad))
    # far below: clipped to a norm of exactly the clipnorm
    got = _sgd_one_step(0.5, grad)
    np.testing.assert_allclose(np.abs(got).sum(), 0.5, rtol=1e-6)


@pytest.mark.parametrize("path", PATH_PARAMS)
def test_empty_and_none_gradients_pass_through(path):
    fused_arg = PATHS[path][0]
    a = keras.Variable(np.ones((0, 3), np.float32))
    b = keras.Variable(np.ones((2,), np.float32))
    c = keras.Variable(np.ones((2,), np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(1.0), fused=fused_arg)
    opt.apply([ops.zeros((0, 3)), tensor([3.0, 4.0], "float32"), None], [a, b, c])
    assert a.shape == (0, 3)
    np.testing.assert_allclose(f64(b), 1 - np.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_array_equal(f64(c), [1.0, 1.0])
    assert opt.last_path.name == PATHS[path][1]


@neutral
def test_plan_follows_each_steps_gradients():
    """Off TensorFlow a step reuses the last plan while its gradients'
    variables, dtypes, shapes and the settings are those of the last step
    (step_plan.PlanCache); any change plans anew. One global l2 norm, so a
    stale plan would measure the wrong gradients."""
    a = keras.Variable(np.zeros(2, np.float32))
    b = keras.Variable(np.zeros(2, np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(1.0), "l2", granularity="global",
                                      fused=False)
    ga, gb = np.array([3.0, 4.0]), np.array([0.0, 12.0])
    steps = [([ga, gb], [a, b]), ([ga, gb], [a, b]), ([ga, None], [a, b]),
             ([gb, ga], [b, a]), ([ga, gb], [a, b])]
    want = {id(a): np.zeros(2), id(b): np.zeros(2)}
    plans = []
    for grads, variables in steps:
        present = [g for g in grads if g is not None]
        norm = np.sqrt(sum((g * g).sum() for g in present)) + keras.config.epsilon()
        for g, v in zip(grads, variables):
            if g is not None:
                want[id(v)] = want[id(v)] - g / norm
        opt.apply([None if g is None else tensor(g, "float32") for g in grads], variables)
        plans.append(opt._plan([tensor(g, "float32") for g in present],
                               [v for g, v in zip(grads, variables) if g is not None]))
        for v in (a, b):
            np.testing.assert_allclose(f64(v), want[id(v)], rtol=1e-6)
    assert opt.last_path.name == PURE
    # the same step's plan again (the cache's point), not one of another step
    assert (plans[1] is plans[0]) == (not TENSORFLOW)
    assert plans[2] is not plans[1] and plans[3] is not plans[2]
    assert [len(p.entries) for p in plans] == [2, 2, 1, 2, 2]
