"""On JAX, an eager wrapper step (opt.apply outside jax.jit) compiles
nothing once a step of the same shapes has run.

JAX's eager `cond` traces and compiles both branches at every call (its
branch functions are new closures each time): the keras.ops path's two
conds (the overflow rescue of a norm, the second product of a large
tensor's scale) cost a compile per tensor per step, ~0.4 s on CPU. They are
decided in Python where the predicate is concrete (scale_math._cond).
"""

import numpy as np
import pytest

import keras
from neutral import skip_module_unless, tensor

skip_module_unless("jax", "JAX's eager compiles: run with KERAS_BACKEND=jax")

import jax  # noqa: E402

import normopt  # noqa: E402

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.mark.parametrize("norm", ["l2", "std"])
def test_a_repeated_eager_step_compiles_nothing(norm):
    # (70000,): above scale_math._SMALL, so its scale has the second cond
    shapes = [(7, 13), (70000,), ()]
    rng = np.random.RandomState(0)
    variables = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
    grads = [tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.01), norm)
    opt.apply(grads, variables)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        opt.apply(grads, variables)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert opt.last_path.name == "keras"
    assert compiles == []
