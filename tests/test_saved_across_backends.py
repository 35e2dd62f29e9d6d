"""A `.keras` file saved on one Keras backend loads and resumes on another.

tests/fixtures holds, per backend that wrote it and case (the release
fixtures' model, data and optimizers: NormalizedOptimizer(Adam, amsgrad,
a schedule, skip_nonfinite) and ClippedOptimizer(SGD, nesterov momentum,
weight decay)), a model saved after 2 epochs on the keras.ops path, with
the state it held and where 2 more epochs took it on its own backend
(fixtures/make_backend_state.py). Each test process loads the files the
other backends wrote:

- every model weight and optimizer variable comes back bit for bit, in the
  writer's layout (as many, in the same order and shapes);
- resuming from the file gives the same bits as resuming from that state
  set in memory on this backend (nothing lost or changed on load);
- both stay within CROSS_TOL of the writer's own continuation.
"""

import numpy as np
import pytest

import keras
from fixtures import make_backend_state as B
from fixtures import make_saved_state as F
from neutral import BACKEND, PURE, f64, neutral, saved_variables

pytestmark = neutral

WRITERS = ("tensorflow", "jax")

# The writer's continuation ran the same float32 math in other kernels
# (TensorFlow's eager kernels against XLA's CPU code on JAX: other
# summation orders in the matmuls, the batch statistics and the norms, other
# tanh approximations), so 6 steps later the two agree to a few float32
# roundings per step, not bit for bit.
CROSS_TOL = dict(rtol=1e-5, atol=1e-6)


def _series(data, prefix):
    return [data[f"{prefix}{i}"]
            for i in range(sum(k[len(prefix):].isdigit() for k in data if k.startswith(prefix)))]


def _from_memory(case, weights, optimizer_values):
    model, _, _ = F.model_and_data()
    model.compile(optimizer=F.make_optimizer(case), loss="mse")
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    for variable, value in zip(saved_variables(model.optimizer), optimizer_values):
        variable.assign(value)
    return model


@pytest.mark.parametrize("case", F.CASES)
@pytest.mark.parametrize("writer", [b for b in WRITERS if b != BACKEND])
def test_file_from_another_backend_loads_and_resumes(writer, case):
    data = np.load(B.stem(writer, case) + ".npz")
    weights, optimizer_values = _series(data, "w"), _series(data, "o")
    loaded = keras.models.load_model(B.stem(writer, case) + ".keras")
    opt = loaded.optimizer
    assert type(opt) is type(F.make_optimizer(case))
    assert len(saved_variables(opt)) == len(optimizer_values)
    assert len(loaded.weights) == len(weights)
    for w, want in zip(loaded.weights, weights):
        np.testing.assert_array_equal(f64(w), want)
    for v, want in zip(saved_variables(opt), optimizer_values):
        np.testing.assert_array_equal(f64(v), want)

    _, x, y = F.model_and_data()
    in_memory = _from_memory(case, weights, optimizer_values)
    # The file holds its writer's resolved jit_compile (True from JAX, False
    # from TensorFlow): both runs take this backend's default.
    loaded.jit_compile = in_memory.jit_compile
    F.fit(loaded, x, y)
    assert opt.last_path.name == PURE
    F.fit(in_memory, x, y)
    for a, b in zip(loaded.weights, in_memory.weights):
        np.testing.assert_array_equal(f64(a), f64(b))
    for a, b in zip(saved_variables(opt), saved_variables(in_memory.optimizer)):
        np.testing.assert_array_equal(f64(a), f64(b))
    for a, b in zip(loaded.weights, _series(data, "c")):
        np.testing.assert_allclose(f64(a), b, **CROSS_TOL)
    for a, b in zip(saved_variables(opt), _series(data, "co")):
        np.testing.assert_allclose(f64(a), b, **CROSS_TOL)
