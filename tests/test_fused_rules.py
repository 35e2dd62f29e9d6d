"""Every fused update rule under the wrappers, against plain Keras.

For each rule of csrc/normopt/update_rules.h: a wrapper around the Keras
optimizer takes the fused path (asserted), and its variables match the same
Keras optimizer, unwrapped, applied to gradients normalized (or clipped) in
NumPy from the formula (tests/reference.py), over several steps; float32,
float64, float16 and bfloat16 variables, with decoupled weight decay where
the configuration sets one.
"""

import numpy as np
import pytest

import keras
import normopt
import reference as R
from conftest import covering
from helpers import TOL
from normopt.ops import library, step_plan

EPS = 1e-7
SHAPES = [(5,), (3, 4), (), (2, 3, 2)]
STEPS = 3

# rule -> the Keras optimizer configuration that runs it
CONFIGS = {rule: (lambda make=make: make(keras.optimizers))
           for rule, make in R.RULE_KERAS.items()}
DTYPES = ["float32", "float64", "float16", "bfloat16"]
WRAPPERS = {
    "normalized": (lambda inner: normopt.NormalizedOptimizer(inner, "l2", fused=True),
                   lambda g: R.transform(g, "l2", "normalize", 1.0, EPS)),
    "clipped": (lambda inner: normopt.ClippedOptimizer(inner, "avg_l1", clipnorm=0.3,
                                                       fused=True),
                lambda g: R.transform(g, "avg_l1", "clip", 0.3, EPS)),
}


@pytest.fixture(autouse=True)
def require_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


def test_every_rule_of_the_header_has_a_configuration():
    from normopt.kernels import cupy_kernels

    assert set(cupy_kernels.rule_names()) == set(CONFIGS)
    for rule, make in CONFIGS.items():
        assert step_plan.update_kernel(make()) == rule


def tolerance(rule, dtype, lr):
    tol = dict(TOL[dtype])
    if dtype in ("float16", "bfloat16"):
        # Keras runs 16-bit variables' updates in 16 bits, the fused rule in
        # float32: a few 16-bit roundings per step apart.
        tol = dict(rtol=3 * tol["rtol"], atol=3 * tol["atol"])
        if rule == "lion":
            # sign() of a sum that rounds to either side of 0 moves w by 2 lr.
            tol["atol"] = max(tol["atol"], 2 * lr * STEPS)
    return tol


@pytest.mark.parametrize("rule, dtype, wrapper", covering(list(CONFIGS), DTYPES, list(WRAPPERS)))
def test_fused_rule_matches_keras_on_transformed_gradients(rule, dtype, wrapper):
    wrap, transform = WRAPPERS[wrapper]
    rng = np.random.RandomState(7)
    init = [rng.standard_normal(s) for s in SHAPES]
    fused_vars = [keras.Variable(w.astype(dtype), dtype=dtype) for w in init]
    plain_vars = [keras.Variable(w.astype(dtype), dtype=dtype) for w in init]
    opt = wrap(CONFIGS[rule]())
    plain = CONFIGS[rule]()
    for step in range(STEPS):
        grads = [rng.standard_normal(s) * 10.0 ** rng.uniform(-1, 1) for s in SHAPES]
        grads = [g.astype(dtype).astype(np.float64) for g in grads]
        opt.apply([keras.ops.convert_to_tensor(g, dtype) for g in grads], fused_vars)
        assert opt.last_path.name == "fused", opt.last_path.reason
        plain.apply([keras.ops.convert_to_tensor(transform(g), dtype) for g in grads],
                    plain_vars)
    lr = float(keras.ops.convert_to_numpy(plain.learning_rate))
    for a, b in zip(fused_vars, plain_vars):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras.ops.cast(a, "float64")),
            keras.ops.convert_to_numpy(keras.ops.cast(b, "float64")),
            **tolerance(rule, dtype, lr))
    for a, b in zip(opt.inner_optimizer.variables, plain.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras.ops.cast(a, "float64")),
            keras.ops.convert_to_numpy(keras.ops.cast(b, "float64")),
            **tolerance(rule, dtype, lr), err_msg=a.path)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_lamb_trust_ratio_is_one_where_a_norm_is_zero(wrapper):
    """Lamb's ratio is 1 where ||w|| = 0 (a zero variable) or ||u|| = 0 (a
    zero gradient on zero slots), as in Keras; the other tensors' ratios are
    their own."""
    wrap, transform = WRAPPERS[wrapper]
    rng = np.random.RandomState(3)
    init = [np.zeros(6), rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [rng.standard_normal(6), np.zeros((3, 4)), rng.standard_normal(5)]
    fused_vars = [keras.Variable(w.astype("float32")) for w in init]
    plain_vars = [keras.Variable(w.astype("float32")) for w in init]
    opt = wrap(keras.optimizers.Lamb(0.01))
    plain = keras.optimizers.Lamb(0.01)
    opt.apply([keras.ops.convert_to_tensor(g, "float32") for g in grads], fused_vars)
    assert opt.last_path.name == "fused", opt.last_path.reason
    plain.apply([keras.ops.convert_to_tensor(transform(g), "float32") for g in grads],
                plain_vars)
    for a, b in zip(fused_vars, plain_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL["float32"])
    np.testing.assert_array_equal(fused_vars[1].numpy(), init[1].astype("float32"))
    assert np.abs(fused_vars[0].numpy()).max() > 0


@pytest.mark.parametrize("wrapper, granularity", [
    ("normalized", "unit"), ("normalized", "global"), ("adaptive", "unit"),
    ("adaptive", "tensor")])
def test_lamb_under_other_scales_matches_the_tf_path(wrapper, granularity):
    """A trust-ratio rule's two passes take g' from unit-wise, global and
    adaptive-clipping scales as a one-phase rule does: the fused Lamb steps
    match the pure-TF ones, over tensors of several of the op's chunks."""
    rng = np.random.RandomState(5)
    shapes = [(300, 70), (7, 3), (40000,), ()]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) * 10.0 ** rng.uniform(-1, 1) for s in shapes]
             for _ in range(STEPS)]

    def run(fused):
        inner = keras.optimizers.Lamb(0.01, weight_decay=2.0**-7)
        if wrapper == "adaptive":
            opt = normopt.AdaptiveClippedOptimizer(inner, clip_factor=0.05,
                                                   granularity=granularity, fused=fused)
        else:
            opt = normopt.NormalizedOptimizer(inner, "l2", granularity=granularity,
                                              fused=fused)
        variables = [keras.Variable(w.astype("float32")) for w in init]
        for gs in grads:
            opt.apply([keras.ops.convert_to_tensor(g, "float32") for g in gs], variables)
        assert opt.last_path.name == ("fused" if fused else "tf"), opt.last_path.reason
        return [v.numpy() for v in variables + list(opt.inner_optimizer.variables)]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_allclose(a, b, **TOL["float32"])
