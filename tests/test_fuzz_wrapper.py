"""Property tests of a whole wrapper step (hypothesis).

One NormalizedOptimizer / ClippedOptimizer step over plain SGD with lr 1 moves
each variable by exactly -g', so g' can be read back and compared with the
NumPy reference. Finite tame inputs must match; extreme inputs (1e30, inf,
NaN) must never crash.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import keras
import normopt
import reference as R
from fuzz_strategies import gradient_lists
from helpers import TOL

PATH_ARGS = {"tf": False, "auto": None}
# Largest finite value of each dtype (bfloat16 shares float32's exponent).
DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.38e38, "float32": 3.4e38,
             "float64": 1.79e308}


def one_step(grads, dtype, norm, mode, fused):
    variables = [keras.Variable(np.zeros(g.shape, dtype), dtype=dtype) for g in grads]
    inner = keras.optimizers.SGD(1.0)
    opt = (normopt.NormalizedOptimizer(inner, norm, fused=fused) if mode == "normalize"
           else normopt.ClippedOptimizer(inner, norm, clipnorm=1.0, fused=fused))
    tensors = [tf.cast(tf.constant(g, tf.float64), dtype) for g in grads]
    opt.apply(tensors, variables)
    return [-v.numpy().astype(np.float64) for v in variables], tensors, opt


@pytest.mark.parametrize("path", list(PATH_ARGS))
@given(data=gradient_lists(max_len=16, max_elements=20_000),
       norm=st.sampled_from(R.NORM_NAMES),
       mode=st.sampled_from(["normalize", "clip"]))
def test_step_matches_reference(path, data, norm, mode):
    dtype, grads = data
    got, tensors, opt = one_step(grads, dtype, norm, mode, PATH_ARGS[path])
    tol = TOL["float64"] if dtype == "float64" else TOL["float32"]
    if dtype in ("float16", "bfloat16"):
        tol = TOL[dtype]
    for g, t, out in zip(grads, tensors, got):
        exact = t.numpy().astype(np.float64)  # the gradient as the dtype holds it
        want = R.transform(exact, norm, mode, 1.0)
        if dtype in ("float16", "bfloat16"):  # the result is rounded to the dtype
            want = tf.cast(tf.constant(want), dtype).numpy().astype(np.float64)
        assert np.all(np.isfinite(exact))
        np.testing.assert_allclose(out, want, rtol=tol["rtol"],
                                   atol=tol["atol"] * max(1.0, np.abs(want).max(initial=0)))


@pytest.mark.parametrize("path", list(PATH_ARGS))
@given(data=gradient_lists(extreme=True, max_len=16, max_elements=20_000),
       norm=st.sampled_from(R.NORM_NAMES),
       mode=st.sampled_from(["normalize", "clip"]))
def test_extreme_values_never_crash(path, data, norm, mode):
    dtype, grads = data
    got, tensors, _ = one_step(grads, dtype, norm, mode, PATH_ARGS[path])
    for t, out in zip(tensors, got):
        g = t.numpy().astype(np.float64)
        assert out.shape == g.shape
        if np.all(np.isfinite(g)) and np.abs(g).max(initial=0) <= 1e15:
            # g / norm can leave a 16-bit range (the std of one element is
            # eps): finite wherever the exact result fits the dtype.
            want = R.transform(g, norm, mode, 1.0)
            fits = np.abs(want) <= DTYPE_MAX[dtype]
            assert np.all(np.isfinite(out[fits]))
