"""The spectral norm and normalization_map on Keras's JAX and PyTorch
backends (the keras.ops path): `stateless_apply` (under `jax.jit` on JAX)
against NumPy, the persistent vectors returned with the optimizer state.

Run: KERAS_BACKEND=jax python -m pytest tests/test_spectral_backends.py (or
torch; skipped on TensorFlow, where tests/test_spectral.py covers both paths).
"""

import keras
import numpy as np
import pytest

from neutral import compiled, numpy, skip_module_on_tensorflow, tensor

skip_module_on_tensorflow()

import reference as R  # noqa: E402
from normopt import AdaptiveClippedOptimizer, NormalizedOptimizer  # noqa: E402

SHAPES = {"a": (12, 7), "b": (5,), "c": (3, 4, 6), "d": (4, 3)}
LR = 0.1


def _variables():
    rng = np.random.default_rng(0)
    return [keras.Variable(rng.standard_normal(s).astype("float32"), name=n)
            for n, s in SHAPES.items()]


@pytest.mark.parametrize("kind", ["normalize", "adaptive"])
def test_stateless_spectral_and_map_match_numpy(kind):
    variables = _variables()
    mapping = {"a": "spectral", "c": "spectral", "d": "l1"}
    if kind == "normalize":
        opt = NormalizedOptimizer(keras.optimizers.SGD(LR), "max", normalization_map=mapping)
    else:
        opt = AdaptiveClippedOptimizer(keras.optimizers.SGD(LR), clip_factor=0.05,
                                       normalization="max", granularity="tensor",
                                       normalization_map=mapping)
    opt.build(variables)
    names = [v.name for v in opt.variables]
    vector_names = [n for n in names if "_spectral_" in n]
    roles = ("grad", "weight") if kind == "adaptive" else ("grad",)
    assert vector_names == [f"{p}_spectral_{r}" for p in ("a", "c") for r in roles]
    step = compiled(opt.stateless_apply)
    opt_values = [v.value for v in opt.variables]
    values = [v.value for v in variables]
    expected = [np.asarray(v, np.float64) for v in variables]
    rng = np.random.default_rng(1)
    for _ in range(3):
        grads = [rng.standard_normal(s).astype("float32") for s in SHAPES.values()]
        values, opt_values = step(opt_values, [tensor(g) for g in grads],
                                  values)
        for i, (name, g) in enumerate(zip(SHAPES, grads)):
            norm_name = mapping.get(name, "max")
            norm = R.spectral(g) if norm_name == "spectral" else R.norm(g, norm_name)
            if kind == "normalize":
                scale = 1.0 / norm
            else:
                w = expected[i]
                wn = R.spectral(w) if norm_name == "spectral" else R.norm(w, norm_name)
                t = 0.05 * max(wn, 1e-3)
                scale = t / norm if norm > t else 1.0
            expected[i] = expected[i] - LR * scale * g
    for got, want in zip(values, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=2e-3, atol=1e-5)
    for name in vector_names:
        vector = numpy(opt_values[names.index(name)])
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, rtol=1e-5)


def test_spectral_norm_of_float64_under_jax_x64():
    """With JAX's 64-bit mode on, a Python 0 is int64 beside the int32 Lanczos
    counter; the basis update refused that mix of start indices."""
    if keras.backend.backend() != "jax":
        pytest.skip("JAX's x64 mode")
    import jax

    rng = np.random.default_rng(3)
    w0, g = rng.standard_normal((9, 5)), rng.standard_normal((9, 5))
    with jax.enable_x64(True):
        v = keras.Variable(w0, dtype="float64")
        opt = NormalizedOptimizer(keras.optimizers.SGD(LR), "spectral")
        opt.apply([keras.ops.convert_to_tensor(g, "float64")], [v])
        got = numpy(v)
    want = w0 - LR * g / R.spectral(g)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3 * LR)
