"""Mixed precision, sparse (IndexedSlices) and non-finite gradients."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import normopt
import reference as R
from conftest import covering


@pytest.fixture
def policy():
    def set_policy(name):
        keras.config.set_dtype_policy(name)

    yield set_policy
    keras.config.set_dtype_policy("float32")


def regression_data(n=128, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 6)).astype("float32")
    return x, np.stack([x.sum(1), x[:, 0] * 2], 1).astype("float32")


# Each wrapper and each policy once (the other two pairs with --runslow): a
# mixed policy gives both wrappers the same float32 variables and (under
# mixed_float16) the same LossScaleOptimizer around them, which unscales
# before the norm (test_explicit_loss_scale_optimizer_around_wrapper clips
# under one).
@pytest.mark.parametrize("wrapper, policy_name", covering(
    ["normalized", "clipped"], ["mixed_float16", "mixed_bfloat16"]))
def test_mixed_precision_training(policy, policy_name, wrapper):
    policy(policy_name)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(2, dtype="float32"),
    ])
    inner = keras.optimizers.Adam(1e-2)
    opt = (normopt.NormalizedOptimizer(inner, "l2") if wrapper == "normalized"
           else normopt.ClippedOptimizer(inner, "l2", clipnorm=0.5))
    model.compile(optimizer=opt, loss="mse")
    if policy_name == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.optimizer.inner_optimizer is opt
    x, y = regression_data()
    hist = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]
    assert int(opt.iterations.numpy()) > 0
    # float32 variables under a mixed policy: the compiled op runs the step
    assert opt.last_path.name == "fused", opt.last_path


def test_explicit_loss_scale_optimizer_around_wrapper():
    """A scaled loss is unscaled before our norm: clipping sees true gradients."""
    var = keras.Variable(np.zeros(4, np.float32))
    wrapper = normopt.ClippedOptimizer(keras.optimizers.SGD(1.0), "l2", clipnorm=1.0,
                                       fused=False)
    lso = keras.optimizers.LossScaleOptimizer(wrapper, initial_scale=1024.0)
    g = np.array([0.1, 0.2, -0.2, 0.0], np.float32)  # norm 0.3 < clipnorm
    lso.apply([tf.constant(g * 1024.0)], [var])
    np.testing.assert_allclose(-var.numpy(), g, rtol=1e-6)


def _lso_step(optimizer, grad, start):
    """`start` after one LossScaleOptimizer(optimizer) step on `grad` (the
    gradient of the loss LossScaleOptimizer scales)."""
    lso = keras.optimizers.LossScaleOptimizer(optimizer)
    var = keras.Variable(np.asarray(start, np.float32))
    lso.apply([tf.constant(np.asarray(grad, np.float32)) * lso.initial_scale], [var])
    return var.numpy()


@pytest.mark.parametrize("fused,path", [(None, "fused"), (False, "tf")])
def test_inner_loss_scale_factor_under_a_loss_scale_optimizer(fused, path):
    """Keras's test_finite_step_with_inner_loss_scale with the wrapper in
    between: LossScaleOptimizer clears the factor of the optimizer it wraps
    (the wrapper), and the wrapper clears its inner optimizer's, as Keras
    would, so the factor does not divide the update."""
    grad, start = [1.0, 6.0, 7.0, 2.0], [1.0, 2.0, 3.0, 4.0]
    want = _lso_step(keras.optimizers.SGD(0.5, loss_scale_factor=100), grad, start)
    np.testing.assert_allclose(want, [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4)
    wrapper = normopt.ClippedOptimizer(keras.optimizers.SGD(0.5, loss_scale_factor=100),
                                       clipnorm=1e30, fused=fused)
    np.testing.assert_allclose(_lso_step(wrapper, grad, start), want, rtol=1e-6)
    assert wrapper.last_path.name == path
    assert wrapper.inner_optimizer.loss_scale_factor is None
    # normalized: Keras's result on the NumPy-normalized gradient
    wrapper = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.5, loss_scale_factor=100),
                                          fused=fused)
    unit = np.asarray(grad) / R.norm(np.asarray(grad), "l2")
    want = _lso_step(keras.optimizers.SGD(0.5, loss_scale_factor=100), unit, start)
    np.testing.assert_allclose(_lso_step(wrapper, grad, start), want, rtol=1e-6)
    assert wrapper.last_path.name == path


@pytest.mark.parametrize("fused,path", [(False, "tf"), (True, "fused")])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_gradient_whose_squares_overflow(dtype, fused, path):
    var = keras.Variable(np.zeros(256, np.float32).astype(dtype), dtype=dtype)
    g = np.full(256, 2000.0)  # sum of squares 1e9: beyond float16's 65504
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(1.0), "l2", fused=fused)
    opt.apply([tf.constant(g, dtype)], [var])
    assert opt.last_path.name == path
    got = -var.numpy().astype(np.float64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, R.normalize(g, R.norm(g, "l2")), rtol=1e-2)


def test_sparse_gradient_uses_the_dense_norm_on_both_paths():
    table = keras.Variable(np.zeros((1000, 4), np.float32))
    values = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    indices = np.array([7, 3, 7])
    slices = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                              tf.constant([1000, 4]))
    dense = np.zeros((1000, 4))
    np.add.at(dense, indices, values)
    for name in ("l2", "avg_l1", "std", "min_max"):
        for fused in (False, None):
            table.assign(np.zeros((1000, 4), np.float32))
            opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(1.0), name, fused=fused)
            seen = []
            original = opt.inner_optimizer.apply

            def spy(grads, variables, original=original):
                seen.extend(grads)
                return original(grads, variables)

            opt.inner_optimizer.apply = spy
            opt.apply([slices], [table])
            np.testing.assert_allclose(-table.numpy(), dense / R.norm(dense, name),
                                       rtol=1e-5, atol=1e-7)
            if fused is False:  # the pure-TF path hands Keras the rows
                assert opt.last_path.name == "tf"
                assert isinstance(seen[0], tf.IndexedSlices), "densified"
                assert seen[0].values.shape[0] == 2  # duplicates summed, not densified
            else:  # the op reads the rows (tests/test_sparse_fused.py)
                assert opt.last_path.name == "fused", opt.last_path.reason
                assert seen == []


def test_embedding_model_trains_with_sparse_gradients():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((3,), dtype="int32"),
        keras.layers.Embedding(500, 8),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1),
    ])
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2")
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randint(0, 500, (256, 3)).astype("int32")
    y = (x.sum(1, keepdims=True) / 750.0).astype("float32")
    hist = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))


@pytest.mark.parametrize("fused", [False, None])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_skip_nonfinite_changes_nothing_and_counts(fused, bad):
    w = keras.Variable(np.ones(5, np.float32))
    b = keras.Variable(np.ones(3, np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.1), "l2", fused=fused,
                                      skip_nonfinite=True)
    good = [tf.ones(5), tf.ones(3)]
    opt.apply(good, [w, b])
    before = [v.numpy().copy() for v in opt.variables + [w, b]]
    bad_grads = [tf.constant([1.0, bad, 1.0, 1.0, 1.0]), tf.ones(3)]
    step = tf.function(lambda: opt.apply(bad_grads, [w, b]))
    step()
    after = [v.numpy() for v in opt.variables + [w, b]]
    skipped = int(opt.skipped_steps.numpy())
    assert skipped == 1
    changed = [i for i, (x, y) in enumerate(zip(before, after))
               if not np.array_equal(x, y, equal_nan=True)]
    # only the skip counter moved
    assert [opt.variables[i].name for i in changed] == ["skipped_steps"]
    assert int(opt.iterations.numpy()) == 1
    opt.apply(good, [w, b])
    assert int(opt.iterations.numpy()) == 2


@pytest.mark.parametrize("fused,path", [(None, "fused"), (False, "tf")])
def test_skipped_eager_step_sets_last_path(fused, path):
    """A skipped step names the path it would have taken, in eager mode as
    under tf.function (which traces both branches)."""
    w = keras.Variable(np.ones(3, np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1), "l2", fused=fused,
                                      skip_nonfinite=True)
    opt.apply([tf.constant([1.0, np.nan, 1.0])], [w])
    assert int(opt.skipped_steps.numpy()) == 1
    np.testing.assert_array_equal(w.numpy(), np.ones(3, np.float32))
    assert opt.last_path is not None and opt.last_path.name == path
    traced = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1), "l2", fused=fused,
                                         skip_nonfinite=True)
    tf.function(lambda: traced.apply([tf.constant([1.0, np.nan, 1.0])], [w]))()
    assert traced.last_path == opt.last_path


def test_nonfinite_without_skip_behaves_like_inner():
    w = keras.Variable(np.ones(3, np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1), "l2", fused=False)
    opt.apply([tf.constant([1.0, np.nan, 1.0])], [w])
    assert np.all(np.isnan(w.numpy()))  # NaN norm: every element becomes NaN
    assert int(opt.skipped_steps.numpy()) == 0


def test_skipped_steps_saved_with_model(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    opt = normopt.NormalizedOptimizer("sgd", skip_nonfinite=True)
    model.compile(optimizer=opt, loss="mse")
    x, y = regression_data(64)
    y[5] = np.inf
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    assert int(opt.skipped_steps.numpy()) == 3
    model.save(tmp_path / "skip.keras")
    loaded = keras.models.load_model(tmp_path / "skip.keras")
    assert loaded.optimizer.skip_nonfinite is True
    assert int(loaded.optimizer.skipped_steps.numpy()) == 3
