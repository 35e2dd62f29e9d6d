"""normalization="spectral": the largest singular value of the gradient seen
as a matrix, against numpy.linalg.norm(matrix, 2) (tests/reference.py), on
the keras.ops path and the fused op, with its persistent vectors saved."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference as R
from normopt import AdaptiveClippedOptimizer, ClippedOptimizer, NormalizedOptimizer
from normopt.ops import paths, spectral_math

EPS = 1e-7
RTOL = 1e-3


def _rng(seed=0):
    return np.random.default_rng(seed)


def _with_singular_values(rng, rows, cols, values):
    """A rows x cols matrix with the given leading singular values."""
    k = len(values)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (u * np.asarray(values)) @ v.T


def hard_cases():
    rng = _rng(1)
    u, w = rng.standard_normal(40), rng.standard_normal(24)
    cases = {
        "gaussian": rng.standard_normal((96, 80)),
        "near_rank_one": np.outer(u, w) + 1e-4 * rng.standard_normal((40, 24)),
        "clustered": _with_singular_values(
            rng, 60, 50, [1.0, 0.9999, 0.9995, 0.999, 0.99] + list(np.linspace(0.98, 0.01, 40))),
        "two_close_then_gap": _with_singular_values(rng, 30, 30, [2.0, 1.98, 0.5, 0.4]),
        "row": rng.standard_normal((1, 37)),
        "column": rng.standard_normal((37, 1)),
        "zeros": np.zeros((6, 5)),
        "three_axes": rng.standard_normal((4, 6, 9)),
        "huge": 1e30 * rng.standard_normal((12, 7)),
        "tiny": 1e-30 * rng.standard_normal((12, 7)),
        "diagonal": np.diag([1.0, 3.0, 2.0]),
    }
    return cases


@pytest.mark.parametrize("case", sorted(hard_cases()))
def test_keras_ops_norm_matches_numpy(case):
    g = hard_cases()[case].astype(np.float32)
    vector = tf.zeros([g.shape[-1]], tf.float32)
    norm, new_vector, steps = spectral_math.spectral_norm(tf.constant(g), vector, EPS)
    want = R.spectral(g, EPS)
    np.testing.assert_allclose(float(norm), want, rtol=RTOL)
    assert 1 <= int(steps) <= spectral_math.MAX_ITERATIONS
    if case in ("row", "column"):
        # rank one: the Krylov space is invariant after the first step
        assert int(steps) <= 2
    assert np.all(np.isfinite(new_vector.numpy()))
    np.testing.assert_allclose(np.linalg.norm(new_vector.numpy()), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(512, 512), (1024, 256), (64, 2048), (8, 16, 300)])
@pytest.mark.parametrize("seed", [0, 1])
def test_large_gaussian_matrices_both_paths(shape, seed):
    """Gaussian matrices (close top singular values: the slowest case for
    Lanczos) from a cold start, keras.ops and the fused op."""
    from normopt.ops import raw_ops

    g = _rng(10 + seed).standard_normal(shape).astype(np.float32)
    want = R.spectral(g, EPS)
    norm, _, _ = spectral_math.spectral_norm(tf.constant(g), tf.zeros([shape[-1]]), EPS)
    np.testing.assert_allclose(float(norm), want, rtol=RTOL)
    w = tf.Variable(np.zeros(shape, np.float32))
    raw_ops.apply_step("sgd", [w], [], [tf.constant(g)], lr=1.0, step=1.0, hyper=[],
                       decay=tf.zeros([1]), kind="spectral", mode="normalize", clipnorm=1.0,
                       epsilon=EPS, spectral_vectors=[tf.zeros([shape[-1]])])
    np.testing.assert_allclose(-w.numpy(), g / want, rtol=RTOL, atol=1e-7)


def _op_step(g, dtype="float32"):
    """w after one fused SGD step (lr 1) from w = 0 normalizing g (a `dtype`
    matrix) by its spectral norm: -g / spectral(g)."""
    from normopt.ops import raw_ops

    acc = "float64" if dtype == "float64" else "float32"
    w = tf.Variable(tf.zeros(g.shape, dtype))
    _, new = raw_ops.apply_step(
        "sgd", [w], [], [tf.cast(tf.constant(g), dtype)], lr=1.0, step=1.0, hyper=[],
        decay=tf.zeros([1], acc), kind="spectral", mode="normalize", clipnorm=1.0,
        epsilon=EPS, spectral_vectors=[tf.zeros([g.shape[-1]], acc)])
    return tf.cast(w, "float64").numpy(), new[0].numpy()


@pytest.mark.parametrize("case", sorted(hard_cases()))
def test_fused_op_norm_matches_numpy(case):
    g = hard_cases()[case].astype(np.float32)
    w, vector = _op_step(g)
    np.testing.assert_allclose(-w, g / R.spectral(g, EPS), rtol=RTOL, atol=1e-30)
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_fused_op_16_bit_and_float64(dtype):
    g = tf.cast(tf.constant(_rng(2).standard_normal((50, 30))), dtype).numpy()
    g64 = tf.cast(g, "float64").numpy()
    w, _ = _op_step(g, dtype)
    want = R.spectral(g64, EPS)
    # the norm, through the rounding of the 16-bit step (unbiased: the median)
    big = np.abs(g64) > 0.1
    np.testing.assert_allclose(np.median(g64[big] / -w[big]), want,
                               rtol=1e-5 if dtype == "float64" else RTOL)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_keras_ops_norm_16_bit_and_float64(dtype):
    g = tf.cast(tf.constant(_rng(2).standard_normal((50, 30))), dtype)
    acc = "float64" if dtype == "float64" else "float32"
    norm, vector, _ = spectral_math.spectral_norm(g, tf.zeros([30], acc), EPS)
    assert norm.dtype == acc and vector.dtype == acc
    np.testing.assert_allclose(float(norm), R.spectral(tf.cast(g, "float64").numpy(), EPS),
                               rtol=1e-5 if dtype == "float64" else RTOL)


def test_persistent_vector_is_used():
    """From the previous step's vector, a slightly changed gradient takes
    few Lanczos steps; and a start that is exactly a lower singular vector
    of the new gradient does not trap the estimate (the fixed start mix)."""
    rng = _rng(3)
    g = rng.standard_normal((200, 120)).astype(np.float32)
    _, v, cold = spectral_math.spectral_norm(tf.constant(g), tf.zeros([120]), EPS)
    g2 = g + 0.01 * rng.standard_normal(g.shape).astype(np.float32)
    norm, _, warm = spectral_math.spectral_norm(tf.constant(g2), v, EPS)
    np.testing.assert_allclose(float(norm), R.spectral(g2, EPS), rtol=RTOL)
    assert int(warm) <= 4 < int(cold)
    # e_1 is the right singular vector of sigma = 1 here, sigma_1 = 3
    d = np.diag([1.0, 3.0, 2.0]).astype(np.float32)
    norm, _, _ = spectral_math.spectral_norm(tf.constant(d), tf.constant([1.0, 0.0, 0.0]), 0.0)
    np.testing.assert_allclose(float(norm), 3.0, rtol=1e-6)


def _sgd_steps(wrapper, weights, grads_per_step, lr=0.1):
    """Applies each step's gradients through `wrapper` (its inner SGD at lr),
    returns the variables' values after every step."""
    variables = [keras.Variable(w, name=f"v{i}") for i, w in enumerate(weights)]
    out = []
    for grads in grads_per_step:
        wrapper.apply([tf.constant(g) for g in grads], variables)
        out.append([v.numpy() for v in variables])
    return out


def _reference_scale(kind, g, w, clipnorm=0.5, clip_factor=0.05, eps=1e-3):
    n = R.spectral(g, EPS)
    if kind == "normalize":
        return 1.0 / n
    if kind == "clip":
        return clipnorm / n if n >= clipnorm else 1.0
    t = clip_factor * max(R.spectral(w, EPS), eps)
    return t / n if n > t else 1.0


WRAPPERS = {
    "normalize": lambda fused: NormalizedOptimizer(
        keras.optimizers.SGD(0.1), "spectral", fused=fused),
    "clip": lambda fused: ClippedOptimizer(
        keras.optimizers.SGD(0.1), "spectral", clipnorm=0.5, fused=fused),
    "adaptive": lambda fused: AdaptiveClippedOptimizer(
        keras.optimizers.SGD(0.1), clip_factor=0.05, eps=1e-3, normalization="spectral",
        granularity="tensor", fused=fused),
}


def _check_wrapper_steps(kind, fused, expect_path):
    rng = _rng(4)
    weights = [rng.standard_normal((30, 20)).astype(np.float32),
               rng.standard_normal((3, 4, 5)).astype(np.float32),
               rng.standard_normal((7,)).astype(np.float32)]
    steps = [[rng.standard_normal(w.shape).astype(np.float32) for w in weights]
             for _ in range(3)]
    opt = WRAPPERS[kind](fused)
    got = _sgd_steps(opt, weights, steps)
    assert opt.last_path.name == expect_path, opt.last_path
    w = [x.astype(np.float64) for x in weights]
    for step, grads in enumerate(steps):
        for i, g in enumerate(grads):
            # every step, the first included; a vector's spectral norm is l2
            w[i] = w[i] - 0.1 * _reference_scale(kind, g, w[i]) * g
            np.testing.assert_allclose(got[step][i], w[i], rtol=2e-3, atol=1e-5,
                                       err_msg=f"step {step}, variable {i}")


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_wrappers_pure_path(kind):
    _check_wrapper_steps(kind, False, paths.TF)


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_wrappers_fused_path(kind):
    _check_wrapper_steps(kind, True, paths.FUSED)


def test_spectral_takes_granularity_tensor_only():
    for granularity in ("unit", "global"):
        with pytest.raises(ValueError, match="'spectral' normalization measures a whole tensor"):
            NormalizedOptimizer(keras.optimizers.SGD(), "spectral", granularity=granularity)
    # AdaptiveClippedOptimizer's default granularity is "unit"
    with pytest.raises(ValueError, match="granularity='tensor'"):
        AdaptiveClippedOptimizer(keras.optimizers.SGD(), normalization="spectral")


def test_saved_variables_and_names():
    """One vector per matrix measured by the spectral norm (two for the
    adaptive wrapper: gradient and weight), after skipped_steps, in variable
    order; none for vectors, excluded variables or other norms."""
    variables = [keras.Variable(np.ones((4, 3), "float32"), name="a"),
                 keras.Variable(np.ones((5,), "float32"), name="b"),
                 keras.Variable(np.ones((2, 2, 6), "float64"), name="c"),
                 keras.Variable(np.ones((3, 3), "float32"), name="skip")]
    opt = AdaptiveClippedOptimizer(keras.optimizers.SGD(), normalization="spectral",
                                   granularity="tensor")
    opt.exclude_from_normalization(var_names=["skip"])
    opt.build(variables)
    own = [(v.name, tuple(v.shape), v.dtype) for v in opt._variables]
    assert own[:2] == [("iteration", (), "int64"), ("learning_rate", (), "float32")]
    assert own[2:] == [("skipped_steps", (), "int64"),
                   ("a_spectral_grad", (3,), "float32"), ("a_spectral_weight", (3,), "float32"),
                   ("c_spectral_grad", (6,), "float64"), ("c_spectral_weight", (6,), "float64")]
    plain = NormalizedOptimizer(keras.optimizers.SGD(), "l2")
    plain.build(variables)
    assert [v.name for v in plain._variables] == ["iteration", "learning_rate", "skipped_steps"]


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="out")(h)
    return keras.Model(inputs, outputs)


def _vectors(optimizer):
    return [v for v in optimizer._variables if "_spectral_" in v.name]


@pytest.mark.parametrize("fused", [False, None])
def test_resume_is_exact(tmp_path, fused):
    """Saved mid-training (the persistent vectors with it), loaded and
    continued: bit for bit the weights of the uninterrupted run."""
    rng = _rng(5)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = rng.standard_normal((64, 3)).astype("float32")

    def compiled(model):
        model.compile(AdaptiveClippedOptimizer(keras.optimizers.Adam(0.01), clip_factor=0.1,
                                               normalization="spectral", granularity="tensor",
                                               fused=fused), "mse", jit_compile=False)
        return model

    first = compiled(_model())
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    vectors = [v.numpy() for v in _vectors(first.optimizer)]
    assert len(vectors) == 4 and all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    first.save(tmp_path / "m.keras")
    resumed = keras.models.load_model(tmp_path / "m.keras")
    resumed.jit_compile = False
    for a, b in zip(_vectors(resumed.optimizer), vectors):
        np.testing.assert_array_equal(a.numpy(), b)
    # the uninterrupted run goes on; the resumed one from the file
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    if fused is None:
        assert resumed.optimizer.last_path.name == paths.FUSED
    for a, b in zip(_vectors(resumed.optimizer), _vectors(first.optimizer)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    straight = first
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- the op and the plan


def test_constants_agree_with_the_header():
    """The fused op's Lanczos (csrc/ops/spectral_norm.h) stops where the
    keras.ops one does."""
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "csrc", "ops", "spectral_norm.h")
    text = open(path).read()

    def constant(name):
        return float(re.search(rf"constexpr \w+ {name} = ([0-9.e+-]+);", text).group(1))

    assert constant("kSpectralTolerance") == spectral_math.TOLERANCE
    assert constant("kSpectralMaxSteps") == spectral_math.MAX_ITERATIONS
    assert constant("kSpectralBreakdown") == spectral_math.BREAKDOWN
    assert constant("kSpectralStartMix") == spectral_math.START_MIX
    assert "2654435761" in text and "2135587861" in text


def test_op_takes_a_norm_per_tensor_in_one_call():
    """raw_ops.apply_step (SGD) with kinds spectral, l1, max, spectral and a
    vector per matrix: every variable moves by its own norm, the vectors
    come back normalized, in one call."""
    from normopt.ops import raw_ops

    rng = _rng(6)
    shapes = [(20, 9), (5,), (4, 3), (2, 3, 7)]
    kinds = ["spectral", "l1", "max", "spectral"]
    ws = [rng.standard_normal(s).astype("float32") for s in shapes]
    gs = [rng.standard_normal(s).astype("float32") for s in shapes]
    variables = [tf.Variable(w) for w in ws]
    vectors = [tf.zeros([9]), tf.zeros([7])]
    _, new = raw_ops.apply_step(
        "sgd", variables, [], [tf.constant(g) for g in gs], lr=0.1, step=1.0, hyper=[],
        decay=tf.zeros([4]), kind="l2", mode="normalize", clipnorm=1.0, epsilon=EPS,
        kinds=kinds, spectral_vectors=vectors)
    for v, w, g, kind in zip(variables, ws, gs, kinds):
        n = R.spectral(g, EPS) if kind == "spectral" else R.norm(g, kind, EPS)
        np.testing.assert_allclose(v.numpy(), w - 0.1 * g / n, rtol=1e-4, atol=1e-6)
    assert [tuple(v.shape) for v in new] == [(9,), (7,)]
    for v in new:
        np.testing.assert_allclose(np.linalg.norm(v.numpy()), 1.0, rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must hold 2 vectors"):
        raw_ops.apply_step(
            "sgd", variables, [], [tf.constant(g) for g in gs], lr=0.1, step=1.0, hyper=[],
            decay=tf.zeros([4]), kind="l2", mode="normalize", clipnorm=1.0, epsilon=EPS,
            kinds=kinds, spectral_vectors=vectors[:1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs NormoptApply"):
        raw_ops.scale([tf.constant(gs[0])], "spectral", "normalize", 1.0, EPS)


def test_wrapper_step_is_one_op_call():
    """A step under a map of four norms (spectral among them) is one
    NormoptApply in the traced graph."""
    rng = _rng(7)
    variables = [keras.Variable(rng.standard_normal(s).astype("float32"), name=n)
                 for n, s in (("a", (6, 5)), ("b", (4,)), ("c", (3, 2)), ("d", (5, 5)))]
    opt = NormalizedOptimizer(keras.optimizers.Adam(0.01), "l2", normalization_map={
        "a": "spectral", "b": "l1", "c": "max"})
    opt.build(variables)
    grads = [tf.constant(rng.standard_normal(v.shape).astype("float32")) for v in variables]
    step = tf.function(lambda: opt.apply(grads, variables), autograph=False)
    graph = step.get_concrete_function().graph
    applies = [op for op in graph.get_operations() if op.type == "NormoptApply"]
    assert len(applies) == 1
    assert [k.decode() for k in applies[0].get_attr("kinds")] == ["spectral", "l1", "max", "l2"]
    step()
    assert opt.last_path.name == paths.FUSED


def test_plan_keeps_spectral_off_where_the_op_cannot():
    """Sparse gradients, the scale-only op and GPU variables take the
    keras.ops path for the spectral norm, each with its reason."""
    from normopt.ops import scale_math, step_plan

    def settings(**kw):
        return step_plan.Settings(fused=None, normalization="spectral", granularity="tensor",
                                  scaling=scale_math.Normalize(), **kw)

    def context(*facts):
        return step_plan.Context(gradients=facts, library_loaded=True,
                                 kernel_devices=frozenset({"CPU", "GPU"}))

    def fact(name, rank=2, **kw):
        return step_plan.Gradient(name=name, dtype="float32", variable_dtype="float32",
                                  rank=rank, **kw)

    adam = keras.optimizers.Adam()
    plan = step_plan.plan_step(settings(), adam, context(fact("w"), fact("b", rank=1)))
    assert plan.name == paths.FUSED
    assert [e.norm for e in plan.entries] == ["spectral", "spectral"]
    plan = step_plan.plan_step(settings(), adam, context(fact("emb", sparse=True)))
    assert plan.name == paths.TF and "sparse gradient of emb under the spectral" in plan.path.reason
    plan = step_plan.plan_step(settings(), keras.optimizers.Adafactor(), context(fact("w")))
    assert plan.name == paths.TF and "scale-only op has no spectral pass" in plan.path.reason
    plan = step_plan.plan_step(settings(), adam, context(fact("w", device="GPU")))
    assert plan.name == paths.TF and "not the spectral norm" in plan.path.reason
    mixed = settings(norms=("l1", "l2"))
    plan = step_plan.plan_step(mixed, adam, context(fact("w", device="GPU"), fact("v", device="GPU")))
    assert plan.name == paths.TF and "normalization_map" in plan.path.reason
    assert step_plan.spectral_indices(["spectral", "l2", "spectral", "spectral"], (
        fact("a"), fact("b"), fact("c", rank=1), fact("d", excluded=True))) == [0]
