"""normopt.tf_keras: the wrappers on Keras 2 (tf_keras), new-style and legacy.

    parity      each wrapper on new-style and legacy SGD and Adam (and
                RMSprop, which has no fused tf_keras rule) against the plain
                tf_keras optimizer fed NumPy-normalized (clipped) gradients,
                eager and in tf.function, with the path asserted
    original    the original wrapper's README snippets and test contract
                (string identifiers, the nine norms, a custom normalizer
                written with tf_keras.backend, compile/fit, constraints,
                no gradients, config round trip)
    save/load   .h5, .keras and SavedModel resume exactly; a custom normalizer
                loads once registered again and fails clearly otherwise
    beside      Keras 3 keeps working in the same process (`import normopt`
                without tf-keras and TF_USE_LEGACY_KERAS=1 need a fresh
                process: test_distribute.py's launch checks them)
"""

import copy
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import reference as R

tf_keras = pytest.importorskip("tf_keras")

import normopt  # noqa: E402
from normopt import normalizations  # noqa: E402
from normopt.ops import step_plan  # noqa: E402
from normopt.tf_keras import (  # noqa: E402
    AdaptiveClippedOptimizer,
    ClippedOptimizer,
    NormalizedOptimizer,
)

# Hyperparameters exactly representable in float32.
LR, MU, B1, B2 = 0.0625, 0.875, 0.875, 0.96875
TOL = dict(rtol=2e-5, atol=2e-6)

INNERS = {
    "new_sgd_nesterov": lambda: tf_keras.optimizers.SGD(LR, momentum=MU, nesterov=True),
    # a schedule: the fused step reads the current learning rate
    "new_adam": lambda: tf_keras.optimizers.Adam(
        tf_keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5),
        beta_1=B1, beta_2=B2),
    # legacy `decay`: lr / (1 + decay * iterations)
    "legacy_sgd_momentum": lambda: tf_keras.optimizers.legacy.SGD(LR, momentum=MU, decay=0.25),
    "legacy_adam_amsgrad": lambda: tf_keras.optimizers.legacy.Adam(LR, B1, B2, amsgrad=True),
    "legacy_sgd": lambda: tf_keras.optimizers.legacy.SGD(LR),
    # decoupled weight decay, applied by the op before the rule
    "new_adamw": lambda: tf_keras.optimizers.AdamW(LR, weight_decay=0.25, beta_1=B1, beta_2=B2),
    "new_rmsprop": lambda: tf_keras.optimizers.RMSprop(LR, rho=B1, momentum=0.5, centered=True),
    "new_adagrad": lambda: tf_keras.optimizers.Adagrad(LR),
    "new_adamax": lambda: tf_keras.optimizers.Adamax(LR, beta_1=B1, beta_2=B2),
    "new_lion": lambda: tf_keras.optimizers.Lion(LR / 16, beta_1=B1, beta_2=B2),
    "legacy_rmsprop": lambda: tf_keras.optimizers.legacy.RMSprop(LR),  # no fused rule
}
FUSED_SCALE_ONLY = {"legacy_rmsprop"}


def _variables(seed=0):
    rng = np.random.RandomState(seed)
    return [rng.standard_normal((4, 3)).astype(np.float32),
            rng.standard_normal((3,)).astype(np.float32)]


def _grads(step):
    rng = np.random.RandomState(100 + step)
    return [rng.standard_normal((4, 3)) * 3.0, rng.standard_normal((3,)) * 0.1]


def _unit_norms(x, name):
    """One norm per index of the last axis (over all others); <= 1 axis: one."""
    if x.ndim <= 1:
        return np.float64(R.norm(x, name))
    return np.array([R.norm(x[..., j], name) for j in range(x.shape[-1])])


def _scaled(kind, g, w, clipnorm=0.5, clip_factor=0.25, eps=1e-3, name="l2"):
    """The wrapper's gradient, from the formulas (float64)."""
    g = np.asarray(g, np.float64)
    if kind == "normalize":
        return R.normalize(g, R.norm(g, name))
    if kind == "clip":
        return R.clip(g, R.norm(g, name), clipnorm)
    gn = _unit_norms(g, name)
    t = clip_factor * np.maximum(_unit_norms(np.asarray(w, np.float64), name), eps)
    return np.where(gn > t, g * t / gn, g)


def _wrapper(kind, inner, **kwargs):
    if kind == "normalize":
        return NormalizedOptimizer(inner, normalization="l2", **kwargs)
    if kind == "clip":
        return ClippedOptimizer(inner, normalization="l2", clipnorm=0.5, **kwargs)
    return AdaptiveClippedOptimizer(inner, clip_factor=0.25, eps=1e-3, **kwargs)


def _plain_copy(inner):
    return type(inner).from_config(inner.get_config())


# Every inner under NormalizedOptimizer in both modes, but the rules shared
# with Keras 3 beyond SGD and Adam (eager: the same op runs in a function).
EAGER_ONLY = {"new_rmsprop", "new_adagrad", "new_adamax", "new_lion"}
PARITY = [("normalize", name, mode) for name in INNERS for mode in ("eager", "function")
          if mode == "eager" or name not in EAGER_ONLY] + [
    ("clip", "new_adam", "function"), ("clip", "legacy_sgd_momentum", "eager"),
    ("adaptive", "legacy_adam_amsgrad", "function"), ("adaptive", "new_sgd_nesterov", "eager"),
]


@pytest.mark.parametrize("kind, inner_name, mode", PARITY)
def test_matches_plain_tf_keras_on_numpy_scaled_gradients(kind, inner_name, mode):
    inner = INNERS[inner_name]()
    plain = _plain_copy(inner)
    opt = _wrapper(kind, inner)
    start = _variables()
    ws = [tf.Variable(w) for w in start]
    ref = [tf.Variable(w) for w in start]

    def step(gs):
        opt.apply_gradients(zip(gs, ws))

    run = tf.function(step) if mode == "function" else step
    for t in range(3):
        gs = _grads(t)
        run([tf.constant(g, tf.float32) for g in gs])
        scaled = [_scaled(kind, g, w.numpy()) for g, w in zip(gs, ref)]
        plain.apply_gradients(zip([tf.constant(g, tf.float32) for g in scaled], ref))
        for a, b in zip(ws, ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)
    want = "fused_scale" if inner_name in FUSED_SCALE_ONLY else "fused"
    assert opt.last_path.name == want, opt.last_path
    assert int(opt.iterations) == int(plain.iterations) == 3
    for a, b in zip(opt.inner_optimizer.variables(), plain.variables()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)


def test_pure_tf_path_matches_the_fused_one():
    ws = [[tf.Variable(w) for w in _variables()] for _ in range(2)]
    opts = [NormalizedOptimizer(tf_keras.optimizers.legacy.Adam(LR, B1, B2), fused=f)
            for f in (None, False)]
    for t in range(2):
        for opt, w in zip(opts, ws):
            opt.apply_gradients(zip([tf.constant(g, tf.float32) for g in _grads(t)], w))
    assert opts[0].last_path.name == "fused"
    assert opts[1].last_path == ("tf", "fused=False")
    for a, b in zip(*ws):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)


def test_new_style_sgd_without_momentum_writes_its_momentum_as_tf_keras_does():
    """tf_keras's new SGD always has a momentum slot, m = -lr g at momentum 0:
    the fused step keeps it so (rule sgd_momentum, mu = 0)."""
    inner = tf_keras.optimizers.SGD(LR)
    plain = _plain_copy(inner)
    opt = NormalizedOptimizer(inner)
    ws, ref = [tf.Variable(w) for w in _variables()], [tf.Variable(w) for w in _variables()]
    gs = _grads(0)
    opt.apply_gradients(zip([tf.constant(g, tf.float32) for g in gs], ws))
    plain.apply_gradients(zip([tf.constant(_scaled("normalize", g, None), tf.float32)
                               for g in gs], ref))
    assert opt.last_path.name == "fused"
    for a, b in zip(inner.variables + ws, plain.variables + ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)


# The spectral norm keeps a vector per variable, the Keras 3 wrappers' state:
# refused here (test_refuses_what_it_cannot_wrap).
STATISTICS_NORMS = sorted(n for n in normalizations.normalization_names()
                          if not step_plan.is_matrix_norm(n))


@pytest.mark.parametrize("name", STATISTICS_NORMS)
def test_every_builtin_norm(name):
    inner = tf_keras.optimizers.legacy.SGD(LR)
    opt, plain = NormalizedOptimizer(inner, normalization=name), _plain_copy(inner)
    ws, ref = [tf.Variable(w) for w in _variables()], [tf.Variable(w) for w in _variables()]
    gs = _grads(1)
    opt.apply_gradients(zip([tf.constant(g, tf.float32) for g in gs], ws))
    plain.apply_gradients(zip([tf.constant(_scaled("normalize", g, None, name=name), tf.float32)
                               for g in gs], ref))
    assert opt.last_path.name == "fused"
    for a, b in zip(ws, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)


def test_global_granularity_exclusions_and_gradient_norms():
    inner = tf_keras.optimizers.legacy.Adam(LR, B1, B2)
    opt = NormalizedOptimizer(inner, normalization="l2", granularity="global")
    plain = _plain_copy(inner)
    ws = [tf.Variable(w, name=n) for w, n in zip(_variables(), ("kernel", "bias"))]
    ref = [tf.Variable(w) for w in _variables()]
    opt.exclude_from_normalization(var_names=["bias"])
    gs = _grads(2)
    tf.function(lambda g: opt.apply_gradients(zip(g, ws)))([tf.constant(g, tf.float32) for g in gs])
    # one norm over the kernel's gradient alone (the bias is excluded)
    scaled = [gs[0] / R.norm(gs[0], "l2"), gs[1]]
    plain.apply_gradients(zip([tf.constant(g, tf.float32) for g in scaled], ref))
    assert opt.last_path.name == "fused"
    for a, b in zip(ws, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)
    np.testing.assert_allclose(opt.gradient_norms.numpy(),
                               [np.sqrt((g * g).sum()) for g in gs], rtol=1e-6)


def test_skip_nonfinite_leaves_every_state_alone():
    opt = ClippedOptimizer(tf_keras.optimizers.Adam(LR), skip_nonfinite=True)
    ws = [tf.Variable(w) for w in _variables()]
    gs = [tf.constant(g, tf.float32) for g in _grads(0)]
    opt.apply_gradients(zip(gs, ws))
    before = [v.numpy() for v in ws + opt.inner_optimizer.variables]
    bad = [gs[0], tf.constant([1.0, np.inf, 0.0])]
    opt.apply_gradients(zip(bad, ws))
    assert opt.last_path.name == "fused"
    assert int(opt.skipped_steps) == 1 and int(opt.iterations) == 1
    for v, b in zip(ws + opt.inner_optimizer.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def _sparse(g, rows):
    return tf.IndexedSlices(tf.constant(g[rows], tf.float32), tf.constant(rows),
                            tf.constant(g.shape))


def _dense_of(g, rows):
    d = np.zeros_like(g)
    d[rows] = g[rows]
    return d


@pytest.mark.parametrize("inner_name, path", [
    ("new_adam", "fused"),
    # the legacy SGD moves the momentum of the indexed rows only
    ("legacy_sgd_momentum", "tf"),
])
def test_sparse_gradients(inner_name, path):
    inner = INNERS[inner_name]()
    opt, plain = NormalizedOptimizer(inner), _plain_copy(inner)
    ws, ref = [tf.Variable(_variables()[0])], [tf.Variable(_variables()[0])]
    rows = [3, 0]
    for t in range(2):
        g = _grads(t)[0]
        opt.apply_gradients([(_sparse(g, rows), ws[0])])
        scaled = g / R.norm(_dense_of(g, rows), "l2")
        plain.apply_gradients([(_sparse(scaled, rows), ref[0])])
        np.testing.assert_allclose(ws[0].numpy(), ref[0].numpy(), **TOL)
    assert opt.last_path.name == path, opt.last_path
    if path == "tf":
        assert "indexed rows only" in opt.last_path.reason
        with pytest.raises(normopt.FusedPathUnavailable, match="indexed rows only"):
            NormalizedOptimizer(INNERS[inner_name](), fused=True).apply_gradients(
                [(_sparse(g, rows), tf.Variable(_variables()[0]))])


@pytest.mark.parametrize("inner, option", [
    (lambda: tf_keras.optimizers.Adam(LR, use_ema=True), "use_ema"),
    (lambda: tf_keras.optimizers.legacy.SGD(LR, clipnorm=1.0), "clipnorm"),
])
def test_options_the_fused_rule_lacks_take_pure_tf_with_the_reason(inner, option):
    opt = NormalizedOptimizer(inner())
    opt.apply_gradients(zip([tf.constant(g, tf.float32) for g in _grads(0)],
                            [tf.Variable(w) for w in _variables()]))
    assert opt.last_path.name == "tf" and option in opt.last_path.reason
    with pytest.raises(normopt.FusedPathUnavailable, match=option):
        NormalizedOptimizer(inner(), fused=True)


def test_refuses_what_it_cannot_wrap():
    import keras

    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        NormalizedOptimizer(keras.optimizers.SGD())
    with pytest.raises(TypeError, match="already a normopt wrapper"):
        NormalizedOptimizer(NormalizedOptimizer("sgd"))
    with pytest.raises(ValueError, match="Unknown normalization"):
        ClippedOptimizer("sgd", normalization="nope")
    with pytest.raises(ValueError, match="weight_decay"):
        NormalizedOptimizer("sgd", weight_decay=0.1)
    with pytest.raises(ValueError, match="spectral.*Keras 3 wrappers"):
        NormalizedOptimizer("sgd", normalization="spectral")


# ------------------------------------------------ the original wrapper's API


def _data(n=64):
    rng = np.random.RandomState(1337)
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = tf_keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    return x, y


def _model(optimizer, **dense_kwargs):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.Dense(10, input_shape=(10,), **dense_kwargs),
        tf_keras.layers.Activation("relu"),
        tf_keras.layers.Dense(2),
        tf_keras.layers.Activation("softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


@pytest.mark.parametrize("module", ["tf_keras.optimizers", "tf_keras.optimizers.legacy"])
def test_readme_usage(module):
    import importlib

    Adam, SGD = (getattr(importlib.import_module(module), n) for n in ("Adam", "SGD"))
    # --- the README's snippet, but the import line
    sgd = SGD(0.01, momentum=0.9, nesterov=True)
    sgd = NormalizedOptimizer(sgd, normalization='l2')

    adam = Adam(0.001)
    adam = ClippedOptimizer(adam, normalization='l2', clipnorm=0.5)
    # ---
    x, y = _data()
    for opt in (sgd, adam):
        model = _model(opt)
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert opt.last_path.name == "fused"
        assert int(opt.iterations) == 4
        config = tf_keras.optimizers.serialize(opt)
        again = tf_keras.optimizers.deserialize(copy.deepcopy(config))
        assert type(again) is type(opt)
        assert type(again.inner_optimizer) is type(opt.inner_optimizer)
        assert tf_keras.optimizers.serialize(again) == config


def test_readme_custom_normalization():
    from tf_keras.optimizers import Adam
    from tf_keras import backend as K

    try:
        # --- the README's snippet, but the import line
        # dummy normalizer which is basically `avg_l1` normalizer
        def dummy_normalization(grad):
            norm = K.mean(K.abs(grad)) + K.epsilon()
            return norm

        # give the new normalizer a name
        normalizer_name = 'mean'

        NormalizedOptimizer.set_normalization_function(normalizer_name, dummy_normalization)

        # now these models can be used just like before
        adam = Adam(0.001)
        adam = NormalizedOptimizer(adam, normalization=normalizer_name)
        # ---
        names = NormalizedOptimizer.get_normalization_functions()
        assert "mean" in names and set(R.NORM_NAMES) <= set(names)
        plain = _plain_copy(adam.inner_optimizer)
        ws, ref = [tf.Variable(w) for w in _variables()], [tf.Variable(w) for w in _variables()]
        gs = _grads(0)
        adam.apply_gradients(zip([tf.constant(g, tf.float32) for g in gs], ws))
        plain.apply_gradients(zip([tf.constant(_scaled("normalize", g, None, name="avg_l1"),
                                               tf.float32) for g in gs], ref))
        assert adam.last_path.name == "fused_tf_norms"
        for a, b in zip(ws, ref):
            np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)
    finally:
        normopt.unregister_normalization("mean")


def test_the_step_is_traced_as_written_in_a_users_tf_function(custom_norm):
    """As Keras 3's: a user's tf.function does not have AutoGraph convert the
    wrapper's step, so the custom normalization runs as written here."""
    files = []

    def l1_here(g):
        files.append(sys._getframe().f_code.co_filename)
        return tf.reduce_sum(tf.abs(g)) + 1e-7

    custom_norm("l1_here", l1_here)
    var = tf.Variable(np.ones((3, 2), np.float32))
    opt = NormalizedOptimizer(tf_keras.optimizers.SGD(0.1), "l1_here")

    @tf.function
    def step(grad):
        opt.apply_gradients([(grad, var)])

    step(tf.fill((3, 2), 2.0))
    assert files and set(files) == {__file__}
    np.testing.assert_allclose(var.numpy(), 1 - 0.1 * 2 / (12 + 1e-7), rtol=1e-6)


def test_string_identifier_constraints_and_no_gradients():
    """The original tests' contract: a string optimizer, variable
    constraints after the update, and a model without gradients refused."""
    x, y = _data(16)
    opt = ClippedOptimizer("sgd", normalization="l2")
    model = _model(opt, kernel_constraint=lambda w: 0.0 * w + 1.0,
                   bias_constraint=lambda b: 0.0 * b + 2.0)
    model.train_on_batch(x[:10], y[:10])
    assert opt.last_path.name == "fused"
    kernel, bias = model.layers[0].get_weights()
    np.testing.assert_array_equal(kernel, 1.0)
    np.testing.assert_array_equal(bias, 2.0)

    inp = tf_keras.Input([3])
    out = tf_keras.layers.Dense(10)(inp)
    out = tf_keras.layers.Lambda(
        lambda t: tf.reshape(tf.cast(tf.argmax(t, axis=-1), "float32"), [-1, 1]))(out)
    no_grad = tf_keras.Model(inp, out)
    no_grad.compile(NormalizedOptimizer("sgd"), "mse")
    with pytest.raises(ValueError, match="No gradients provided"):
        no_grad.fit(np.zeros([10, 3]), np.zeros([10, 1], np.float32), batch_size=10, verbose=0)


# ---------------------------------------------------------------- save/load


def _resumes_exactly(model, loaded, x, y):
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert loaded.optimizer.last_path == model.optimizer.last_path
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("make, suffix", [
    (lambda: NormalizedOptimizer(tf_keras.optimizers.Adam(0.01), normalization="std"), ".h5"),
    (lambda: ClippedOptimizer(tf_keras.optimizers.legacy.SGD(0.05, momentum=0.9),
                              normalization="l2", clipnorm=0.5, skip_nonfinite=True), ".h5"),
    # tf_keras's own format
    (lambda: NormalizedOptimizer(tf_keras.optimizers.legacy.Adam(0.01, amsgrad=True),
                                 granularity="unit"), ".keras"),
], ids=["new_adam", "legacy_sgd", "legacy_adam_keras_format"])
def test_h5_and_keras_round_trips_resume_exactly(make, suffix, tmp_path):
    x, y = _data()
    model = _model(make())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    path = str(tmp_path / ("model" + suffix))
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == 4
    _resumes_exactly(model, loaded, x, y)


def test_h5_round_trip_under_loss_scaling(tmp_path):
    """A LossScaleOptimizer around the wrapper (what model.compile makes
    under a mixed_float16 policy) saves and loads with it. (tf_keras
    restarts a LossScaleOptimizer's state from .h5, around any optimizer.)"""
    x, y = _data()
    opt = tf_keras.mixed_precision.LossScaleOptimizer(
        NormalizedOptimizer(tf_keras.optimizers.Adam(0.01)))
    model = _model(opt)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert opt.inner_optimizer.last_path.name == "fused"
    path = str(tmp_path / "scaled.h5")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert type(loaded.optimizer.inner_optimizer) is NormalizedOptimizer
    assert loaded.optimizer.inner_optimizer.get_config() == opt.inner_optimizer.get_config()
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert loaded.optimizer.inner_optimizer.last_path.name == "fused"


def test_savedmodel_round_trip_resumes_exactly(tmp_path):
    """As for any tf_keras optimizer, load_model rebuilds the optimizer from
    its config, and the SavedModel's checkpoint restores its state."""
    x, y = _data()
    opt = AdaptiveClippedOptimizer(tf_keras.optimizers.legacy.Adam(0.01, amsgrad=True),
                                   clip_factor=0.05, skip_nonfinite=True)
    opt.exclude_from_normalization(var_names=["bias"])
    model = _model(opt)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    opt.skipped_steps.assign(3)
    path = str(tmp_path / "saved")
    model.save(path, save_format="tf")
    loaded = tf_keras.models.load_model(path)
    assert loaded.optimizer.get_config() == opt.get_config()
    loaded.optimizer.build(loaded.trainable_variables)
    loaded.load_weights(os.path.join(path, "variables", "variables")).expect_partial()
    assert int(loaded.optimizer.skipped_steps) == 3 and int(loaded.optimizer.iterations) == 4
    _resumes_exactly(model, loaded, x, y)
    assert opt.last_path.name == "fused"


def test_custom_normalizer_loads_once_registered_again(tmp_path):
    from tf_keras import backend as K

    def mean_norm(grad):
        return K.mean(K.abs(grad)) + K.epsilon()

    NormalizedOptimizer.set_normalization_function("mean", mean_norm)
    try:
        x, y = _data()
        model = _model(NormalizedOptimizer(tf_keras.optimizers.Adam(0.01), normalization="mean"))
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        path = str(tmp_path / "custom.h5")
        model.save(path)
        normopt.unregister_normalization("mean")
        with pytest.raises(ValueError,
                           match="Unknown normalization 'mean'.*set_normalization_function"):
            tf_keras.models.load_model(path)
        NormalizedOptimizer.set_normalization_function("mean", mean_norm)
        loaded = tf_keras.models.load_model(path)
        assert loaded.optimizer.normalization == "mean"
        _resumes_exactly(model, loaded, x, y)
        assert loaded.optimizer.last_path.name == "fused_tf_norms"
    finally:
        normopt.unregister_normalization("mean")


# ------------------------------------------------------- beside Keras 3


def test_keras3_wrappers_still_train_in_the_same_process():
    import keras

    NormalizedOptimizer(tf_keras.optimizers.SGD(LR)).apply_gradients(
        [(tf.constant([1.0, 2.0]), tf.Variable([0.0, 0.0]))])
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.5))
    v = keras.Variable([3.0, 4.0])
    opt.apply([tf.constant([3.0, 4.0])], [v])
    np.testing.assert_allclose(v.numpy(), [3.0 - 0.3, 4.0 - 0.4], rtol=1e-6)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)])
    model.compile(normopt.NormalizedOptimizer(keras.optimizers.Adam(0.01)), "mse")
    model.fit(*_data(32), epochs=1, batch_size=16, verbose=0)
    assert model.optimizer.last_path.name == "fused" and int(model.optimizer.iterations) == 2


def test_not_on_another_keras3_backend():
    from normopt.tf_keras import _check_keras_backend

    _check_keras_backend("tensorflow")
    with pytest.raises(ImportError, match="backend is 'jax'.*KERAS_BACKEND=tensorflow"):
        _check_keras_backend("jax")


# `import normopt` without tf-keras and TF_USE_LEGACY_KERAS=1: in a fresh
# process, which test_distribute.py's launch (2 logical CPUs) provides
# (test_without_tf_keras_and_with_tf_use_legacy_keras there).
