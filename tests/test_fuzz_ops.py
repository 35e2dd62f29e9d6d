"""Property tests of the raw compiled ops (hypothesis).

Gradient lists of ranks 0-5, sizes 0..1e5, every supported dtype, values
including +-0, subnormals, 1e30, +-inf and NaN, 1..64 tensors with empty ones
mixed in. Properties: finite tame inputs match the NumPy reference; extreme
inputs never crash and keep shapes; mismatched list lengths, shapes and dtypes
raise InvalidArgumentError.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import keras
import reference as R
from fuzz_strategies import DTYPES, gradient_lists
from helpers import TOL
from normopt.ops import library

EPS = 1e-7


@pytest.fixture(scope="module")
def op_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library did not load: {status['reason']}")
    from normopt.ops import raw_ops as fused

    return fused


def as_tensors(grads, dtype):
    return [tf.cast(tf.constant(g, tf.float64), dtype) for g in grads]


def exact(t):
    """The values a tensor of its dtype really holds, as float64."""
    return t.numpy().astype(np.float64)


def assert_norm_close(got, g, name):
    """float32 accumulation: relative to the norm, or to max|g| for std."""
    want = R.norm(g, name, EPS)
    if g.dtype == np.float64 and got.dtype == np.float64:
        tol = 1e-9
    else:
        tol = 1e-4
    scale = np.abs(g).max(initial=0.0) if name == "std" else want
    assert abs(got - want) <= tol * scale + 1e-12, (name, got, want)


@given(data=gradient_lists(), norm=st.sampled_from(R.NORM_NAMES))
def test_norms_match_reference(op_library, data, norm):
    dtype, grads = data
    tensors = as_tensors(grads, dtype)
    got = op_library.norms(tensors, norm, EPS).numpy()
    assert got.shape == (len(tensors),)
    for t, n in zip(tensors, got):
        assert_norm_close(n, exact(t), norm)


@given(data=gradient_lists(max_elements=20_000), norm=st.sampled_from(R.NORM_NAMES),
       mode=st.sampled_from(["normalize", "clip"]))
def test_scale_matches_reference(op_library, data, norm, mode):
    dtype, grads = data
    tensors = as_tensors(grads, dtype)
    out = op_library.scale(tensors, norm, mode, 1.0, EPS)
    tol = TOL[dtype] if dtype in ("float16", "bfloat16") else TOL["float32"]
    if dtype == "float64":
        tol = TOL["float64"]
    for t, o in zip(tensors, out):
        assert o.dtype == t.dtype and o.shape == t.shape
        want = R.transform(exact(t), norm, mode, 1.0, EPS)
        if dtype in ("float16", "bfloat16"):  # the result is rounded to the dtype
            want = exact(tf.cast(tf.constant(want), dtype))
        np.testing.assert_allclose(
            exact(o), want, rtol=tol["rtol"],
            atol=tol["atol"] * max(1.0, np.abs(want).max(initial=0)))


@given(data=gradient_lists(extreme=True), norm=st.sampled_from(R.NORM_NAMES),
       mode=st.sampled_from(["normalize", "clip"]))
def test_extreme_values_never_crash(op_library, data, norm, mode):
    dtype, grads = data
    tensors = as_tensors(grads, dtype)
    norms = op_library.norms(tensors, norm, EPS).numpy()
    out = op_library.scale(tensors, norm, mode, 1.0, EPS)
    for t, n, o in zip(tensors, norms, out):
        g = exact(t)
        assert o.shape == t.shape
        if np.all(np.isfinite(g)) and np.abs(g).max(initial=0) <= 1e15:
            assert np.isfinite(n)
        if not np.all(np.isfinite(g)) and norm not in ("max", "min_max"):
            # a sum over inf/NaN is inf/NaN: never a silently finite norm
            assert not np.isfinite(n)


@given(data=gradient_lists(max_len=16, max_elements=20_000),
       norm=st.sampled_from(R.NORM_NAMES),
       amsgrad=st.booleans(), step=st.integers(1, 50))
def test_adam_step_matches_reference(op_library, data, norm, amsgrad, step):
    """One Adam step from random slots: w -= alpha m / (sqrt(v) + eps)."""
    dtype, grads = data
    if dtype in ("float16", "bfloat16"):
        dtype = "float32"  # 16-bit slots would drown the comparison in rounding
    rng = np.random.RandomState(len(grads))
    lr, b1, b2, adam_eps, wd = 0.0625, 0.875, 0.998046875, 1e-7, 0.00390625
    ws = [rng.standard_normal(np.shape(g)) for g in grads]
    ms = [rng.standard_normal(np.shape(g)) * 0.1 for g in grads]
    vs = [np.abs(rng.standard_normal(np.shape(g))) * 0.1 for g in grads]
    hs = [v * 1.5 for v in vs]
    var = [keras.Variable(w.astype(dtype), dtype=dtype) for w in ws]
    m = [keras.Variable(x.astype(dtype), dtype=dtype) for x in ms]
    v = [keras.Variable(x.astype(dtype), dtype=dtype) for x in vs]
    h = [keras.Variable(x.astype(dtype), dtype=dtype) for x in hs] if amsgrad else []
    tensors = as_tensors(grads, dtype)
    acc = tf.float64 if dtype == "float64" else tf.float32
    op_library.apply_adam(
        [x.handle for x in var], [x.handle for x in m], [x.handle for x in v],
        [x.handle for x in h], tensors,
        lr=tf.constant(lr, tf.float64), beta_1=b1, beta_2=b2,
        adam_epsilon=adam_eps, step=tf.constant(float(step), tf.float64),
        decay=tf.fill([len(grads)], tf.constant(wd, acc)),
        kind=norm, mode="normalize", clipnorm=1.0, epsilon=EPS)
    tol = TOL[dtype]
    for i, t in enumerate(tensors):
        g = R.transform(exact(t), norm, "normalize", 1.0, EPS)
        w = ws[i].astype(dtype).astype(np.float64)
        w = w - w * wd * lr
        m_ref = ms[i].astype(dtype) + (g - ms[i].astype(dtype)) * (1 - b1)
        v_ref = vs[i].astype(dtype) + (g * g - vs[i].astype(dtype)) * (1 - b2)
        denom = np.maximum(hs[i].astype(dtype), v_ref) if amsgrad else v_ref
        alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        w = w - alpha * m_ref / (np.sqrt(denom) + adam_eps)
        # g'^2 of a gradient normalized by a tiny norm (the std of a constant
        # tensor is eps) can exceed the float32 range: v must then read inf,
        # and the elements it feeds are not comparable with float64.
        limit = np.finfo(np.float64 if dtype == "float64" else np.float32).max
        over = np.abs(v_ref) > limit
        assert np.all(np.isinf(v[i].numpy()[over]))
        np.testing.assert_allclose(m[i].numpy(), m_ref, **tol)
        np.testing.assert_allclose(v[i].numpy()[~over], v_ref[~over], **tol)
        np.testing.assert_allclose(var[i].numpy()[~over], w[~over], **tol)
        if amsgrad:
            np.testing.assert_allclose(h[i].numpy()[~over], denom[~over], **tol)


# --- invalid arguments -------------------------------------------------------

@st.composite
def mismatched_lists(draw):
    """(grads, variables, what) where exactly one thing does not match."""
    dtype, grads = draw(gradient_lists(max_len=8, max_elements=2_000))
    what = draw(st.sampled_from(["length", "shape", "dtype"]))
    variables = [np.zeros(np.shape(g)) for g in grads]
    var_dtypes = [dtype] * len(grads)
    i = draw(st.integers(0, len(grads) - 1))
    if what == "length":
        if len(grads) == 1:
            variables.append(np.zeros((2,)))
            var_dtypes.append(dtype)
        else:
            del variables[i], var_dtypes[i]
    elif what == "shape":
        variables[i] = np.zeros(np.shape(variables[i]) + (2,))
    else:
        var_dtypes[i] = draw(st.sampled_from([d for d in DTYPES if d != dtype]))
    return dtype, grads, variables, var_dtypes, what


@given(case=mismatched_lists())
def test_mismatched_update_inputs_raise(op_library, case):
    dtype, grads, variables, var_dtypes, what = case
    var = [keras.Variable(w.astype(d), dtype=d) for w, d in zip(variables, var_dtypes)]
    with pytest.raises(tf.errors.InvalidArgumentError):
        op_library.apply_sgd(
            [x.handle for x in var], [], as_tensors(grads, dtype),
            lr=tf.constant(0.1, tf.float64), momentum=0.0, nesterov=False,
            decay=tf.zeros([len(grads)], tf.float64 if dtype == "float64" else tf.float32),
            kind="l2", mode="normalize", clipnorm=1.0, epsilon=EPS)
    for x, w, d in zip(var, variables, var_dtypes):  # nothing was written
        np.testing.assert_array_equal(x.numpy(), w.astype(d))


@given(data=gradient_lists(max_len=8, max_elements=2_000),
       bad=st.sampled_from(["kind", "mode", "clipnorm", "norms"]))
def test_bad_arguments_raise(op_library, data, bad):
    dtype, grads = data
    tensors = as_tensors(grads, dtype)
    acc = tf.float64 if dtype == "float64" else tf.float32
    kwargs = dict(kind="l2", mode="clip", clipnorm=1.0, epsilon=EPS)
    if bad == "kind":
        kwargs["kind"] = "l3"
    elif bad == "mode":
        kwargs["mode"] = "squash"
    elif bad == "clipnorm":
        kwargs["clipnorm"] = -1.0
    else:
        kwargs.update(kind="precomputed", norms=tf.ones([len(grads) + 1], acc))
    with pytest.raises(tf.errors.InvalidArgumentError):
        op_library.scale(tensors, **kwargs)
