"""The wrappers inside real Keras training: fit/evaluate, tapes, tf.function, XLA."""

import functools

import numpy as np
import pytest
import tensorflow as tf

import keras
import normopt
import reference as R
from conftest import covering

ALL_OPTIMIZERS = [
    lambda: keras.optimizers.SGD(0.01),
    lambda: keras.optimizers.SGD(0.01, momentum=0.9),
    lambda: keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
    lambda: keras.optimizers.Adam(1e-3),
    lambda: keras.optimizers.AdamW(1e-3),
    lambda: keras.optimizers.RMSprop(1e-3),
    lambda: keras.optimizers.Adagrad(1e-2),
    lambda: keras.optimizers.Adadelta(1.0),
    lambda: keras.optimizers.Adamax(1e-3),
    lambda: keras.optimizers.Nadam(1e-3),
    lambda: keras.optimizers.Ftrl(1e-2),
    lambda: keras.optimizers.Lion(1e-4),
    lambda: keras.optimizers.Lamb(1e-3),
    lambda: keras.optimizers.Adafactor(1e-2),
    lambda: "adam",
]


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(3),
    ])


def data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 4)).astype("float32")
    y = (x[:, :3] * 2 + 1).astype("float32")
    return x, y


@pytest.mark.parametrize("make_inner, wrapper",
                         covering(ALL_OPTIMIZERS, ["normalized", "clipped"]))
def test_fit_evaluate_with_every_keras_optimizer(make_inner, wrapper):
    inner = make_inner()
    opt = (normopt.NormalizedOptimizer(inner, "l2") if wrapper == "normalized"
           else normopt.ClippedOptimizer(inner, "l2", clipnorm=0.5))
    model = small_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = data()
    before = [w.numpy().copy() for w in model.trainable_weights]
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert np.isfinite(model.evaluate(x, y, verbose=0))
    assert int(opt.iterations.numpy()) == 8
    changed = [not np.array_equal(b, w.numpy())
               for b, w in zip(before, model.trainable_weights)]
    assert all(changed)
    assert opt.last_path is not None


def test_learning_rate_schedule_and_iterations():
    sched = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(sched), "l2", fused=False)
    w = keras.Variable(np.zeros(3, np.float32))
    g = np.array([3.0, 0.0, 4.0])
    ref = np.zeros(3)
    for step in range(4):
        assert int(opt.iterations.numpy()) == step
        np.testing.assert_allclose(float(opt.learning_rate), 0.5 * 0.5**step, rtol=1e-6)
        opt.apply([tf.constant(g, tf.float32)], [w])
        ref = ref - 0.5 * 0.5**step * R.normalize(g, R.norm(g, "l2"))
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-5)


def test_learning_rate_get_set_through_wrapper():
    inner = keras.optimizers.Adam(1e-3)
    opt = normopt.ClippedOptimizer(inner, clipnorm=2.0)
    np.testing.assert_allclose(float(opt.learning_rate), 1e-3, rtol=1e-6)
    opt.learning_rate = 0.25
    np.testing.assert_allclose(float(inner.learning_rate), 0.25)
    assert opt.iterations is inner.iterations


@functools.cache
def _tape_training(step_fn_kind, fused):
    """(losses, trainable weights, optimizer) of 5 tape steps; computed once
    per (kind, fused) for the tests that compare them."""
    model = small_model(1)
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "std", fused=fused)
    x, y = data(32, 1)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_weights)
        opt.apply(grads, model.trainable_weights)
        return loss

    if step_fn_kind == "function":
        step = tf.function(step)
    elif step_fn_kind == "xla":
        step = tf.function(step, jit_compile=True)
    losses = [float(step(x, y)) for _ in range(5)]
    return losses, [w.numpy() for w in model.trainable_weights], opt


@pytest.mark.parametrize("kind", ["function", "xla"])
def test_gradient_tape_in_tf_function_and_xla_match_eager(kind):
    eager_losses, eager_w, _ = _tape_training("eager", False)
    losses, weights, opt = _tape_training(kind, None)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    for a, b in zip(weights, eager_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if kind == "xla":
        assert opt.last_path.name == "tf"
        assert "XLA" in opt.last_path.reason
    else:
        assert opt.last_path.name == "fused"


def test_xla_step_matches_fused_step():
    """XLA compiles the pure-TF math: same numbers as the compiled op's path
    (fused=None, which takes it in a tf.function: asserted below; the
    training is the one the test above compares with eager)."""
    fused_losses, fused_w, fused_opt = _tape_training("function", None)
    xla_losses, xla_w, xla_opt = _tape_training("xla", None)
    assert fused_opt.last_path.name == "fused"
    assert xla_opt.last_path.name == "tf" and "XLA" in xla_opt.last_path.reason
    np.testing.assert_allclose(xla_losses, fused_losses, rtol=1e-5)
    for a, b in zip(xla_w, fused_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# normalized with --runslow: NormalizedOptimizer's step under XLA against
# the fused one is test_xla_step_matches_fused_step's (a tape in a
# jit-compiled tf.function), and model.fit's jit_compile=True is the clipped
# case's (the wrapper sees XLA the same way in both).
@pytest.mark.parametrize("wrapper", [pytest.param("normalized", marks=pytest.mark.slow),
                                     "clipped"])
def test_model_fit_jit_compile_matches_fused_fit(wrapper):
    """model.fit with jit_compile=True (pure TF under XLA) vs without (fused):
    the same losses and weights, and the XLA fit trains (its loss falls)."""
    def train(jit_compile):
        opt = (normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2")
               if wrapper == "normalized"
               else normopt.ClippedOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), "max",
                                             clipnorm=0.1))
        model = small_model(2)
        model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
        x, y = data(64, 2)
        hist = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return hist.history["loss"], [w.numpy() for w in model.weights], opt

    fused_loss, fused_w, fused_opt = train(False)
    xla_loss, xla_w, xla_opt = train(True)
    assert fused_opt.last_path.name == "fused"
    assert xla_opt.last_path.name == "tf" and "XLA" in xla_opt.last_path.reason
    assert xla_loss[-1] < xla_loss[0]
    np.testing.assert_allclose(xla_loss, fused_loss, rtol=1e-5)
    for a, b in zip(xla_w, fused_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_model_fit_with_jit_compile_true():
    """(Default run: the clipped case of the parity test above fits this
    optimizer under XLA, on the pure path, and its loss falls.)"""
    opt = normopt.ClippedOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), "max",
                                   clipnorm=0.1)
    model = small_model()
    model.compile(optimizer=opt, loss="mse", jit_compile=True)
    x, y = data()
    hist = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert opt.last_path.name == "tf" and "XLA" in opt.last_path.reason


def test_fit_decreases_loss():
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2))
    model = small_model()
    model.compile(optimizer=opt, loss="mse")
    x, y = data(256)
    hist = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
