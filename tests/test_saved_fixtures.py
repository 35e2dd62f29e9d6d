"""Files written by released versions load and resume exactly.

tests/fixtures holds, per release tag and case, a `.keras` model, a
`.weights.h5` file and an `.npz` with the state they hold and the weights the
release reached after 2 more epochs (see fixtures/make_saved_state.py).
Loading restores every model weight and optimizer variable bit for bit;
resuming from the file gives the same bits as resuming from that state set
in memory (on every backend); and both stay within rounding of the release's
own continuation.
"""

import numpy as np
import pytest

import keras
from fixtures import make_saved_state as F
import functools

from neutral import PURE, f64, neutral, saved_variables

RELEASES = ("v0.1.0",)


def _state(tag, case):
    data = np.load(F.fixture_path(tag, case, ".npz"))

    def series(prefix):
        return [data[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in data))]

    return series("w"), series("o"), series("c")


def _load(tag, case, kind):
    if kind == ".keras":
        return keras.models.load_model(F.fixture_path(tag, case, kind))
    model, _, _ = F.model_and_data()
    model.compile(optimizer=F.make_optimizer(case), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(F.fixture_path(tag, case, kind))
    return model


@functools.cache
def _resumed_in_memory(tag, case):
    """The weights after resuming from the release's state set in memory
    (shared by both file kinds)."""
    weights, optimizer_values, _ = _state(tag, case)
    model = _from_memory(case, weights, optimizer_values)
    _, x, y = F.model_and_data()
    F.fit(model, x, y)
    return [f64(w) for w in model.weights]


def _fresh(case):
    model, _, _ = F.model_and_data()
    model.compile(optimizer=F.make_optimizer(case), loss="mse")
    return model


def _from_memory(case, weights, optimizer_values):
    model = _fresh(case)
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    for variable, value in zip(saved_variables(model.optimizer), optimizer_values):
        variable.assign(value)
    return model


@neutral
@pytest.mark.parametrize("kind", [".keras", ".weights.h5"])
@pytest.mark.parametrize("case", F.CASES)
@pytest.mark.parametrize("tag", RELEASES)
def test_released_file_loads_and_resumes_exactly(tag, case, kind):
    weights, optimizer_values, continued = _state(tag, case)
    loaded = _load(tag, case, kind)
    opt = loaded.optimizer
    assert type(opt).__name__ == type(F.make_optimizer(case)).__name__
    assert len(saved_variables(opt)) == len(optimizer_values)
    for w, want in zip(loaded.weights, weights):
        np.testing.assert_array_equal(f64(w), want)
    for v, want in zip(saved_variables(opt), optimizer_values):
        np.testing.assert_array_equal(f64(v), want)

    _, x, y = F.model_and_data()
    # The release wrote jit_compile False (TensorFlow's "auto"): this
    # backend's default here, as in the in-memory run.
    loaded.jit_compile = _fresh(case).jit_compile
    F.fit(loaded, x, y)
    assert opt.last_path.name == PURE
    in_memory = _resumed_in_memory(tag, case)
    assert len(in_memory) == len(loaded.weights)
    for a, b in zip(loaded.weights, in_memory):
        np.testing.assert_array_equal(f64(a), b)
    for a, b in zip(loaded.weights, continued):
        np.testing.assert_allclose(f64(a), b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", F.CASES)
def test_released_file_resumes_on_the_fused_path(case):
    weights, _, continued = _state("v0.1.0", case)
    loaded = _load("v0.1.0", case, ".keras")
    loaded.optimizer.fused = True
    _, x, y = F.model_and_data()
    F.fit(loaded, x, y)
    assert loaded.optimizer.last_path.name == "fused"
    for a, b in zip(loaded.weights, continued):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)
