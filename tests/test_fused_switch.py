"""Switching between the fused and the pure-TF path mid-training.

The inner optimizer's own slot variables and iteration counter hold all the
state, so a model trained on one path, saved, and loaded onto the other
continues like uninterrupted training. Each phase asserts the path it took.
"""

import numpy as np
import pytest

import keras
import normopt
from conftest import covering
from normopt.ops import library

EPOCHS = 2  # per phase; 3 batches per epoch

PATH_OF = {True: "fused", False: "tf"}


@pytest.fixture(autouse=True)
def require_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


def model_and_data(seed=3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(24, activation="tanh"),
        keras.layers.Dense(12, activation="relu", use_bias=False),
        keras.layers.Dense(1),
    ])
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((96, 6)).astype("float32")
    y = (np.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]).astype("float32")
    return model, x, y


# The inner optimizers of every fused rule family, with their slots and
# options on (the rules' variants are checked against plain Keras in
# test_fused_rules.py).
INNER = {
    "adamw": lambda: keras.optimizers.AdamW(
        keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.9),
        weight_decay=0.01, amsgrad=True),
    "nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True,
                                                weight_decay=0.01),
    "adagrad": lambda: keras.optimizers.Adagrad(0.05),
    "adamax": lambda: keras.optimizers.Adamax(0.01, weight_decay=0.01),
    "nadam": lambda: keras.optimizers.Nadam(0.01),
    "lion": lambda: keras.optimizers.Lion(1e-3, weight_decay=0.01),
    "adadelta": lambda: keras.optimizers.Adadelta(0.5, weight_decay=0.01),
    "ftrl": lambda: keras.optimizers.Ftrl(0.05, l1_regularization_strength=1e-3),
    "lamb": lambda: keras.optimizers.Lamb(0.01, weight_decay=0.01),
    "schedule_free_adamw": lambda: keras.optimizers.ScheduleFreeAdamW(
        0.01, warmup_steps=3, weight_decay=0.01),
}
CLIPPED = ("nesterov", "adagrad", "lion", "ftrl")


def make_opt(inner, fused):
    if inner in CLIPPED:
        return normopt.ClippedOptimizer(INNER[inner](), "std", clipnorm=0.2, fused=fused)
    return normopt.NormalizedOptimizer(INNER[inner](), "l2", fused=fused)


def fit(model, x, y):
    model.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0)


@pytest.mark.parametrize("inner, switch", covering(
    list(INNER), [(True, False), (False, True), (True, True)]))
def test_switch_after_save_and_load(tmp_path, inner, switch):
    """One model trains EPOCHS, is saved, and trains on uninterrupted; the
    saved copy, loaded onto the other path, must end where it ends."""
    first, second = switch
    model, x, y = model_and_data()
    model.compile(optimizer=make_opt(inner, first), loss="mse")
    fit(model, x, y)
    assert model.optimizer.last_path.name == PATH_OF[first]
    path = tmp_path / "switch.keras"
    model.save(path)
    saved_state = [v.numpy() for v in model.optimizer.variables]

    fit(model, x, y)  # the uninterrupted run goes on
    assert model.optimizer.last_path.name == PATH_OF[first]
    uninterrupted = [w.numpy() for w in model.weights]

    loaded = keras.models.load_model(path)
    opt = loaded.optimizer
    assert opt.fused is first
    assert len(opt.variables) == len(saved_state)
    for a, b in zip(opt.variables, saved_state):
        np.testing.assert_array_equal(a.numpy(), b)
    opt.fused = second
    fit(loaded, x, y)
    assert opt.last_path.name == PATH_OF[second]
    assert int(opt.iterations.numpy()) == 2 * EPOCHS * 3
    for a, b in zip(loaded.weights, uninterrupted):
        if first == second:  # same path throughout: bitwise on CPU
            np.testing.assert_array_equal(a.numpy(), b)
        else:
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)
