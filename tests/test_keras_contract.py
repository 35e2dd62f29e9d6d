"""The wrappers keep the Keras optimizer contract on every path.

Unknown variables, None gradients, a loss scale set on the wrapper (as
keras.optimizers.MultiOptimizer sets it), base-optimizer options that belong
to the inner optimizer, clipping options the wrapper refuses, custom norms of
the wrong shape, and optimizer state saved once. Expected values come from
NumPy (reference.py) or from plain Keras on NumPy-transformed gradients.
"""

import warnings

import h5py
import numpy as np
import pytest
import tensorflow as tf

import keras
import normopt
import reference as R
from helpers import unfused_inner
from normopt import keras_wrapper as wrappers

# path -> (fused argument, inner optimizer factory, path the step must take,
#          run the step under XLA)
PATHS = {
    "fused": (True, lambda lr=1.0: keras.optimizers.SGD(lr), "fused", False),
    "fused_scale": (None, lambda lr=1.0: unfused_inner(lr), "fused_scale", False),
    "tf": (False, lambda lr=1.0: keras.optimizers.SGD(lr), "tf", False),
    "xla": (None, lambda lr=1.0: keras.optimizers.SGD(lr), "tf", True),
}


def run(fn, xla):
    """fn() eagerly, or traced and compiled by XLA."""
    return tf.function(fn, jit_compile=True)() if xla else fn()


# 1. unknown variables


@pytest.mark.parametrize("path", list(PATHS))
def test_unknown_variable_is_keras_value_error(path):
    fused, inner, expected, xla = PATHS[path]
    opt = normopt.NormalizedOptimizer(inner(), fused=fused)
    a = keras.Variable(np.zeros(2, np.float32))
    b = keras.Variable(np.zeros(1, np.float32))
    run(lambda: opt.apply_gradients([(tf.ones(2), a)]), xla)
    assert opt.last_path.name == expected
    with pytest.raises(ValueError, match="Unknown variable.*recreate a new optimizer"):
        run(lambda: opt.apply_gradients([(tf.ones(1), b)]), xla)


# 4. a loss scale set on the wrapper


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("true_norm", [1.0, 20.0])
def test_loss_scale_factor_on_the_wrapper_is_honoured(path, true_norm):
    """MultiOptimizer(..., loss_scale_factor=s) sets s on the wrapper itself."""
    fused, inner, expected, xla = PATHS[path]
    s = 128.0
    g = np.array([0.6, -0.8], np.float32) * true_norm
    var = keras.Variable(np.zeros(2, np.float32))
    wrapper = normopt.ClippedOptimizer(inner(), "l2", clipnorm=10.0, fused=fused)
    multi = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(wrapper), loss_scale_factor=s
    )
    assert wrapper.loss_scale_factor == s
    run(lambda: multi.apply([tf.constant(g * s)], [var]), xla)
    assert wrapper.last_path.name == expected

    clipped = R.clip(g, R.norm(g, "l2"), 10.0).astype(np.float32)
    ref_var = keras.Variable(np.zeros(2, np.float32))
    inner().apply([tf.constant(clipped)], [ref_var])  # plain Keras
    np.testing.assert_allclose(var.numpy(), ref_var.numpy(), rtol=1e-6, atol=1e-7)


def test_loss_scale_factor_scales_the_loss_and_survives_config():
    opt = normopt.NormalizedOptimizer("sgd", loss_scale_factor=64.0)
    assert float(opt.scale_loss(tf.constant(2.0))) == 128.0
    again = normopt.NormalizedOptimizer.from_config(opt.get_config())
    assert again.loss_scale_factor == 64.0


# 5. LossScaleOptimizer inside the wrapper


@pytest.mark.parametrize("wrapper", [normopt.NormalizedOptimizer, normopt.ClippedOptimizer])
def test_loss_scale_optimizer_as_inner_is_refused(wrapper):
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0))
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(NormalizedOptimizer"):
        wrapper(lso)


# 6. base-optimizer options


NON_DEFAULT = {
    "weight_decay": 0.5,
    "use_ema": True,
    "ema_momentum": 0.5,
    "ema_overwrite_frequency": 3,
    "gradient_accumulation_steps": 2,
}


def test_every_inner_option_is_checked():
    assert set(NON_DEFAULT) == set(wrappers.INNER_OPTIONS)
    # Every option of keras.optimizers.Optimizer is either the wrapper's own,
    # the inner optimizer's or refused: a new Keras option fails here.
    import inspect

    # The TF backend's Optimizer takes *args: read the base class's signature.
    signatures = [inspect.signature(c.__init__).parameters
                  for c in keras.optimizers.Optimizer.__mro__ if "__init__" in vars(c)]
    base = next(set(p) for p in signatures if "learning_rate" in p)
    own = {"self", "learning_rate", "name", "loss_scale_factor", "kwargs"}
    assert base == own | set(wrappers.INNER_OPTIONS) | set(wrappers.CLIP_OPTIONS)


@pytest.mark.parametrize("option", list(NON_DEFAULT))
def test_inner_option_is_read_and_set_through_the_wrapper(option):
    inner = keras.optimizers.AdamW(**{option: NON_DEFAULT[option]})
    opt = normopt.NormalizedOptimizer(inner)
    assert getattr(opt, option) == NON_DEFAULT[option]
    value = {"weight_decay": 0.25, "use_ema": False, "ema_momentum": 0.75,
             "ema_overwrite_frequency": 5, "gradient_accumulation_steps": 4}[option]
    setattr(opt, option, value)
    assert getattr(inner, option) == value


@pytest.mark.parametrize("option", list(NON_DEFAULT))
@pytest.mark.parametrize("wrapper", [normopt.NormalizedOptimizer, normopt.ClippedOptimizer])
def test_inner_option_given_to_the_wrapper_is_refused(wrapper, option):
    with pytest.raises(ValueError, match=f"`{option}`.*inner optimizer"):
        wrapper("adam", **{option: NON_DEFAULT[option]})


@pytest.mark.parametrize("option", ["clipnorm", "clipvalue", "global_clipnorm"])
def test_clipping_options_on_the_wrapper_are_refused(option):
    with pytest.raises(ValueError, match=f"does not support `{option}`"):
        normopt.NormalizedOptimizer("sgd", **{option: 1.0})
    opt = normopt.NormalizedOptimizer("sgd")
    assert getattr(opt, option) is None
    with pytest.raises(ValueError, match=f"does not support `{option}`"):
        setattr(opt, option, 1.0)


@pytest.mark.parametrize("option", ["clipvalue", "global_clipnorm"])
def test_clipped_optimizer_refuses_other_clipping(option):
    with pytest.raises(ValueError, match=f"does not support `{option}`"):
        normopt.ClippedOptimizer("sgd", clipnorm=1.0, **{option: 1.0})
    opt = normopt.ClippedOptimizer("sgd", clipnorm=2.0)
    assert opt.clipnorm == 2.0
    with pytest.raises(ValueError, match="clipnorm"):
        opt.clipnorm = -1.0


def test_unknown_argument_is_refused():
    with pytest.raises(ValueError, match="not recognized"):
        normopt.NormalizedOptimizer("sgd", momentum=0.9)


@pytest.mark.parametrize("path", ["fused", "tf"])
def test_exclude_from_weight_decay_through_the_wrapper(path):
    fused = path == "fused"
    lr, wd = 0.1, 0.5
    kernel = keras.Variable(np.ones((3, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    opt = normopt.NormalizedOptimizer(
        keras.optimizers.AdamW(lr, weight_decay=wd), "l2", fused=fused)
    opt.exclude_from_weight_decay(var_names=["bias"])
    gk = np.arange(6, dtype=np.float32).reshape(3, 2) - 2
    gb = np.array([3.0, 4.0], np.float32)
    opt.apply([tf.constant(gk), tf.constant(gb)], [kernel, bias])
    assert opt.last_path.name == path

    want_k = R.Adam(lr, weight_decay=wd).step(0, np.ones((3, 2)), R.transform(gk, "l2"))
    want_b = R.Adam(lr).step(1, np.ones(2), R.transform(gb, "l2"))  # no decay
    np.testing.assert_allclose(kernel.numpy(), want_k, rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), want_b, rtol=1e-5)


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


def test_swap_ema_weights_under_mixed_precision(mixed_float16):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.Dense(1, dtype="float32")])
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1, use_ema=True))
    model.compile(optimizer=opt, loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.RandomState(0)
    x = rng.rand(32, 4).astype("float32")
    y = rng.rand(32, 1).astype("float32")
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[swap])
    # After fit the model holds the EMA, as with plain SGD(use_ema=True).
    averages = opt.inner_optimizer._model_variables_moving_average
    for w, a in zip(model.trainable_variables, averages):
        np.testing.assert_array_equal(w.numpy(), a.numpy())


# 8. None gradients


@pytest.mark.parametrize("path", list(PATHS))
def test_all_none_gradients_raise_as_keras(path):
    fused, inner, _, xla = PATHS[path]
    opt = normopt.NormalizedOptimizer(inner(), fused=fused)
    a = keras.Variable(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        run(lambda: opt.apply([None], [a]), xla)


@pytest.mark.parametrize("path", list(PATHS))
def test_some_none_gradients_warn_as_keras(path):
    fused, inner, expected, xla = PATHS[path]
    opt = normopt.NormalizedOptimizer(inner(), fused=fused)
    a = keras.Variable(np.zeros(2, np.float32))
    b = keras.Variable(np.ones(2, np.float32), name="frozen")
    with pytest.warns(UserWarning, match="Gradients do not exist for variables.*frozen"):
        run(lambda: opt.apply([tf.constant([3.0, 4.0]), None], [a, b]), xla)
    assert opt.last_path.name == expected
    assert int(opt.iterations.numpy()) == 1
    np.testing.assert_array_equal(b.numpy(), [1.0, 1.0])


# 9. custom norms must be scalars


@pytest.mark.parametrize("path", list(PATHS))
def test_custom_norm_of_wrong_shape_is_a_clear_error(path, custom_norm):
    fused, inner, _, xla = PATHS[path]
    custom_norm("elementwise", lambda g: tf.abs(g) + 1.0)
    opt = normopt.NormalizedOptimizer(inner(), "elementwise", fused=fused)
    a = keras.Variable(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="'elementwise'.*shape.*must be a scalar"):
        run(lambda: opt.apply([tf.constant([1.0, 2.0, 3.0])], [a]), xla)


# 7. state saved once; files of 0.1.0 still load and resume


def _optimizer_datasets(path):
    names = []
    with h5py.File(path) as f:
        f["optimizer"].visititems(
            lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_optimizer_state_is_saved_once(tmp_path):
    import fixtures.make_saved_state as F

    model, x, y = F.model_and_data()
    model.compile(optimizer=F.make_optimizer("normalized_adam"), loss="mse")
    F.fit(model, x, y, epochs=1)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    opt = model.optimizer
    stored = _optimizer_datasets(path)
    assert len(stored) == len(opt.variables)
    assert sorted(n for n in stored if not n.startswith("inner_optimizer/")) == [
        f"vars/{i}" for i in range(len(opt._variables))]


def test_loading_into_an_unbuilt_optimizer_warns_once(tmp_path):
    import fixtures.make_saved_state as F

    model, _, _ = F.model_and_data()
    model.compile(optimizer=F.make_optimizer("normalized_adam"), loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(F.fixture_path("v0.1.0", "normalized_adam", ".weights.h5"))
    skipping = [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert len(skipping) == 1, [str(w.message) for w in skipping]


def test_gradient_accumulation_averages_normalized_micro_batches():
    """Documented: each micro-batch gradient is normalized, then averaged."""
    var = keras.Variable(np.zeros(2, np.float32))
    opt = normopt.NormalizedOptimizer(
        keras.optimizers.SGD(1.0, gradient_accumulation_steps=2), "l2")
    g1, g2 = np.array([3.0, 4.0]), np.array([-1.0, 0.0])
    opt.apply([tf.constant(g1, tf.float32)], [var])
    np.testing.assert_array_equal(var.numpy(), [0.0, 0.0])
    opt.apply([tf.constant(g2, tf.float32)], [var])
    want = -(R.transform(g1, "l2") + R.transform(g2, "l2")) / 2
    np.testing.assert_allclose(var.numpy(), want, rtol=1e-6)
    assert int(opt.iterations.numpy()) == 1
