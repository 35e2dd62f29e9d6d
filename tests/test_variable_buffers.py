"""How the fused op writes a variable's buffer, read by others.

The op updates a variable in place under its exclusive lock, and copies the
buffer first only where a tensor read from the variable still holds it
(csrc/ops/locked_variables.h, PrepareFn). After a sparse access
(tf.nn.embedding_lookup on the variable) TF keeps the variable in its
copy-on-read mode, where every read copies; the op then updates in place,
with the same numbers. Each step is checked against the NumPy formula of
normalized SGD, w - lr * g / ||g||, on the fused path (asserted).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import normopt
from normopt.ops import library

ROWS, WIDTH, LR = 3000, 16, 0.5


@pytest.fixture(autouse=True)
def require_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


@pytest.mark.parametrize("sparse_access", [False, True], ids=["default", "copy_on_read"])
def test_reads_before_a_step_keep_their_values(sparse_access):
    """A tensor read before each step keeps the values it read, the variable
    steps as the formula says, and a lookup after the step sees the new
    rows."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((ROWS, WIDTH)).astype(np.float32)
    table = keras.Variable(start)
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(LR), "l2", fused=True)
    opt.build([table])
    ids = tf.constant([0, 7, ROWS - 1])
    if sparse_access:
        tf.nn.embedding_lookup(table.value, ids)  # TF's copy-on-read mode from here
    want = start.astype(np.float64)
    for _ in range(3):
        before = tf.identity(table.value)
        snapshot = before.numpy().copy()
        grad = rng.standard_normal((ROWS, WIDTH)).astype(np.float32)
        opt.apply([tf.constant(grad)], [table])
        assert opt.last_path.name == "fused", opt.last_path.reason
        np.testing.assert_array_equal(before.numpy(), snapshot)
        g = grad.astype(np.float64)
        want = want - LR * g / np.sqrt((g ** 2).sum())
        np.testing.assert_allclose(table.numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tf.nn.embedding_lookup(table.value, ids).numpy(),
                                   want[[0, 7, ROWS - 1]], rtol=1e-5, atol=1e-6)
