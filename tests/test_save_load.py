"""Serialization: get_config/from_config and .keras save/load with continued training.

On every backend: the keras.ops path, eager and compiled (jit_compile);
on TensorFlow also the fused op.
"""

import numpy as np
import pytest

import keras
import normopt
from conftest import covering
from keras import ops
from neutral import PURE, TENSORFLOW, f64, neutral, saved_variables


def model_and_data(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(2),
    ])
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((96, 5)).astype("float32")
    y = np.stack([x.sum(1), x[:, 0] * x[:, 1]], 1).astype("float32")
    return model, x, y


def make_opt(kind, fused):
    if kind == "normalized":
        return normopt.NormalizedOptimizer(
            keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 3, 0.9),
                                  amsgrad=True),
            "avg_l1_l2", fused=fused)
    return normopt.ClippedOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        "std", clipnorm=0.3, fused=fused)


def fit(model, x, y, epochs):
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0)


def goes_on(model, x, y):
    """The uninterrupted run: `model`, just saved, trains 2 more epochs on
    the path it took (its compiled training function reused); its weights
    are the reference the loaded copy must reach (4 epochs without a save)."""
    fit(model, x, y, 2)
    return [f64(w) for w in model.weights]


def _neutral_when(params, keep, elsewhere=None):
    """`params` (pytest.params), marked backend_neutral where keep(values);
    off TensorFlow (each fit compiles) those `elsewhere` rejects only with
    --runslow."""
    out = []
    for p in params:
        marks = p.marks
        if keep(p.values):
            marks = (*marks, neutral)
            if not TENSORFLOW and elsewhere is not None and not elsewhere(p.values):
                marks = (*marks, pytest.mark.slow)
        out.append(pytest.param(*p.values, marks=marks))
    return out


def _slow_on_tensorflow(params, slow):
    """`params`, those slow(values) marked slow in the TensorFlow process
    (where another default case or file checks what they check)."""
    return [pytest.param(*p.values, marks=(*p.marks, pytest.mark.slow))
            if TENSORFLOW and slow(p.values) else p for p in params]


# By default on TensorFlow the pure path throughout (bitwise); a switch
# between the fused and the pure path after a save and load, each way, is
# test_fused_switch.py's (every fused rule family, SGD with nesterov
# momentum under ClippedOptimizer(std) included) and the fused/XLA cases
# below; here with --runslow.
@pytest.mark.parametrize("kind, paths", _slow_on_tensorflow(_neutral_when(covering(
    ["normalized", "clipped"], [(False, False), (None, False), (False, None)]),
    lambda values: values[1] == (False, False)), lambda values: values[1] != (False, False)))
def test_save_load_continue_is_identical(tmp_path, kind, paths):
    fused_save, fused_load = paths

    # 2 epochs, save, load, 2 more
    model, x, y = model_and_data()
    model.compile(optimizer=make_opt(kind, fused_save), loss="mse")
    fit(model, x, y, 2)
    path = tmp_path / "m.keras"
    model.save(path)
    saved_state = [f64(v) for v in saved_variables(model.optimizer)]
    uninterrupted = goes_on(model, x, y)
    loaded = keras.models.load_model(path)
    opt = loaded.optimizer
    assert type(opt) is type(model.optimizer)
    assert opt.normalization == model.optimizer.normalization
    assert type(opt.inner_optimizer) is type(model.optimizer.inner_optimizer)
    assert opt.inner_optimizer.get_config() == model.optimizer.inner_optimizer.get_config()
    if kind == "clipped":
        assert opt.clipnorm == 0.3
    assert len(saved_variables(opt)) == len(saved_state)
    for a, b in zip(saved_variables(opt), saved_state):
        np.testing.assert_array_equal(f64(a), b)
    assert int(f64(opt.iterations)) == 6
    opt.fused = fused_load
    fit(loaded, x, y, 2)
    for a, b in zip(loaded.weights, uninterrupted):
        if fused_save is None or fused_load is None:
            np.testing.assert_allclose(f64(a), b, rtol=1e-5, atol=1e-6)
        else:  # same path throughout: bitwise on CPU
            np.testing.assert_array_equal(f64(a), b)


@neutral
def test_get_config_round_trip():
    opt = normopt.ClippedOptimizer(keras.optimizers.RMSprop(0.01, rho=0.8), "min_max",
                                   clipnorm=2.5, fused=False, name="clippy")
    cfg = opt.get_config()
    again = normopt.ClippedOptimizer.from_config(cfg)
    assert again.get_config() == cfg
    assert again.name == "clippy"
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, normopt.ClippedOptimizer)
    assert restored.get_config() == cfg


@neutral
def test_custom_normalization_save_load(tmp_path):
    def half_l1(g):
        return ops.sum(ops.abs(g)) / 2 + keras.config.epsilon()

    normopt.register_normalization("half_l1", half_l1)
    try:
        model, x, y = model_and_data()
        model.compile(optimizer=normopt.NormalizedOptimizer("sgd", "half_l1"), loss="mse")
        fit(model, x, y, 1)
        path = tmp_path / "custom.keras"
        model.save(path)
    finally:
        normopt.unregister_normalization("half_l1")

    with pytest.raises(Exception, match="half_l1"):
        keras.models.load_model(path)

    normopt.register_normalization("half_l1", half_l1)
    try:
        loaded = keras.models.load_model(path)
        assert loaded.optimizer.normalization == "half_l1"
        fit(loaded, x, y, 1)
    finally:
        normopt.unregister_normalization("half_l1")


# (fused argument, jit_compile) of each path a model can be trained under:
# "tf" and "xla" are the keras.ops path eager and compiled (on JAX, jit)
TRAIN_PATHS = {"fused": (True, False), "tf": (False, False), "xla": (None, True)}
EXPECTED_PATH = {"fused": "fused", "tf": PURE, "xla": PURE}


# tf -> xla with --runslow on TensorFlow: the pure path is saved from by
# default in the test above, XLA loaded into in fused -> xla
@pytest.mark.parametrize("kind, paths", _slow_on_tensorflow(_neutral_when(covering(
    ["normalized", "clipped"], [("fused", "xla"), ("xla", "fused"), ("xla", "tf"), ("tf", "xla")]),
    lambda values: "fused" not in values[1], lambda values: values[0] == "normalized"),
    lambda values: values[1] == ("tf", "xla")))
def test_save_under_one_path_load_under_another(tmp_path, kind, paths):
    """Saved after training on one path, resumed on another: continues like
    the uninterrupted run (on the first path)."""
    save_path, load_path = paths

    fused, jit = TRAIN_PATHS[save_path]
    model, x, y = model_and_data()
    model.compile(optimizer=make_opt(kind, fused), loss="mse", jit_compile=jit)
    fit(model, x, y, 2)
    assert model.optimizer.last_path.name == EXPECTED_PATH[save_path]
    path = tmp_path / "m.keras"
    model.save(path)
    saved_state = [f64(v) for v in saved_variables(model.optimizer)]
    uninterrupted = goes_on(model, x, y)
    assert model.optimizer.last_path.name == EXPECTED_PATH[save_path]

    loaded = keras.models.load_model(path)
    opt = loaded.optimizer
    assert len(saved_variables(opt)) == len(saved_state)
    for a, b in zip(saved_variables(opt), saved_state):
        np.testing.assert_array_equal(f64(a), b)
    opt.fused, loaded.jit_compile = TRAIN_PATHS[load_path]
    assert int(f64(opt.iterations)) == 6
    fit(loaded, x, y, 2)
    assert opt.last_path.name == EXPECTED_PATH[load_path]
    for a, b in zip(loaded.weights, uninterrupted):
        np.testing.assert_allclose(f64(a), b, rtol=1e-5, atol=1e-6)
