"""The keras.ops norms and the registry, against the NumPy reference."""

import numpy as np
import pytest

import keras
import normopt
import reference as R
from helpers import TOL
from keras import ops
from neutral import FLOAT64, cases, f64, neutral, neutral_if_float64, norm_of, tensor
from normopt import normalizations as N

SHAPES = [(), (1,), (0,), (7, 13), (2, 3, 5)]
# float64 where the backend keeps it
DTYPES = ["float16", "bfloat16", "float32"] + (["float64"] if FLOAT64 else [])


def _cast(x, dtype):
    return ops.cast(tensor(np.asarray(x, np.float64 if FLOAT64 else np.float32)), dtype)


@neutral
@pytest.mark.parametrize("name,shape,dtype", cases(list(R.NORM_NAMES) + ["linf"], SHAPES, DTYPES))
def test_builtin_norms_match_reference(name, shape, dtype):
    g = np.random.RandomState(3).standard_normal(shape) * 3
    t = _cast(g, dtype)
    exact = f64(t)  # the values after rounding to dtype
    got = norm_of(t, name)
    want = R.norm(exact, name, keras.config.epsilon())
    assert keras.backend.standardize_dtype(got.dtype) == (
        "float64" if dtype == "float64" else "float32")
    tol = TOL["float64"] if dtype == "float64" else TOL["float32"]
    np.testing.assert_allclose(f64(got), want, **tol)


@neutral_if_float64
def test_spectral_norm_keeps_float64():
    """The Lanczos iteration's products stay float64 (Keras's ops.matmul
    casts float64 operands to float32 on PyTorch)."""
    from normopt.ops import spectral_math

    g = np.random.RandomState(4).standard_normal((7, 5))
    norm, vector, _ = spectral_math.spectral_norm(tensor(g, "float64"), tensor(np.zeros(5)))
    assert keras.backend.standardize_dtype(norm.dtype) == "float64"
    assert keras.backend.standardize_dtype(vector.dtype) == "float64"
    # five Lanczos steps span all of R^5: the estimate is exact
    np.testing.assert_allclose(f64(norm), R.spectral(g, keras.config.epsilon()), rtol=1e-12)


@neutral
def test_float16_gradient_whose_square_overflows():
    g = np.full((64,), 3000.0)  # g^2 = 9e6 > float16 max 65504
    t = tensor(g, "float16")
    np.testing.assert_allclose(f64(norm_of(t, "l2")), R.norm(g, "l2"), rtol=1e-6)
    np.testing.assert_allclose(f64(norm_of(t, "std")), R.norm(g, "std"), rtol=1e-6)


@pytest.mark.parametrize("name", R.NORM_NAMES)
def test_indexed_slices_norm_is_norm_of_dense_gradient(name):
    import tensorflow as tf

    values = np.random.RandomState(0).standard_normal((4, 3))
    indices = np.array([5, 1, 5, 2])  # index 5 twice: summed first
    dense = np.zeros((8, 3))
    np.add.at(dense, indices, values)
    slices = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                              tf.constant([8, 3]))
    got = N.tf_norm(slices, name).numpy()
    np.testing.assert_allclose(got, R.norm(dense, name), rtol=1e-12)


@neutral
def test_builtins_are_the_header_table():
    """The built-in names, aliases and statistics of the TF path are the
    header's norm table (normopt.kernels._finalize, checked against the
    header by test_header_tables.py), with each norm's statistics bits as
    NormStats field names."""
    from normopt.kernels import _finalize as F

    assert N.BUILTIN_NORMALIZATIONS == F.NORM_KINDS
    assert N.ALIASES == F.ALIASES
    assert set(N.STATS_NEEDED) == set(F.NORM_KINDS)
    assert N.STATS_NEEDED["l1_l2"] == ("sum_abs", "sum_sq")
    assert N.STATS_NEEDED["min_max"] == ("max_abs", "min_abs")
    assert N.STATS_NEEDED["std"] == ("mean", "m2")
    for name, code, bits in F.NORMS:
        fields = N.STATS_NEEDED[name]
        assert bool(bits & F.STAT_SUM_ABS) == ("sum_abs" in fields), name
        assert bool(bits & F.STAT_SUM_SQ) == ("sum_sq" in fields), name
        assert bool(bits & F.STAT_MAX_ABS) == ("max_abs" in fields), name
        assert bool(bits & F.STAT_MIN_ABS) == ("min_abs" in fields), name
        assert bool(bits & F.STAT_MOMENTS) == ("m2" in fields) == ("mean" in fields), name


@neutral
def test_registry_lists_builtins_sorted():
    names = normopt.NormalizedOptimizer.get_normalization_functions()
    assert names == sorted(names)
    assert set(R.NORM_NAMES) | {"linf"} <= set(names)
    assert names == normopt.ClippedOptimizer.get_normalization_functions()
    assert names == normopt.normalization_names()


@neutral
def test_custom_registration_is_shared(custom_norm):
    normopt.NormalizedOptimizer.set_normalization_function(
        "my_l1", lambda g: ops.sum(ops.abs(g)) + 1.0)
    try:
        assert "my_l1" in normopt.ClippedOptimizer.get_normalization_functions()
        assert "my_l1" in normopt.normalization_names()
        np.testing.assert_allclose(f64(norm_of(tensor([1.0, -2.0], "float32"), "my_l1")), 4.0)
    finally:
        normopt.unregister_normalization("my_l1")
    assert "my_l1" not in normopt.normalization_names()


@neutral
def test_builtin_override_needs_explicit_flag(custom_norm):
    with pytest.raises(ValueError, match="override=True"):
        normopt.register_normalization("l2", lambda g: ops.ones(()))
    with pytest.raises(ValueError, match="override=True"):
        normopt.register_normalization("linf", lambda g: ops.ones(()))
    custom_norm("l2", lambda g: ops.ones(()) * 2.0, override=True)
    np.testing.assert_allclose(f64(norm_of(tensor([3.0, 4.0], "float32"), "l2")), 2.0)


@neutral
@pytest.mark.parametrize("name", [None, 3, "", ("l2",)])
def test_bad_registry_name(name):
    with pytest.raises(TypeError, match="name"):
        normopt.register_normalization(name, lambda g: g)


@neutral
def test_bad_registry_function():
    with pytest.raises(TypeError, match="callable"):
        normopt.register_normalization("nope", 3.0)
    with pytest.raises(TypeError, match="callable"):
        normopt.NormalizedOptimizer.set_normalization_function("nope", None)
