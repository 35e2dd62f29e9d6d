"""Time of one norm call per norm, layer size and implementation.

Same cases as `normopt bench norms`; an implementation that cannot run here
is skipped with the reason. Each call's result is checked against the pure-TF
norm in float64 before timing.
"""

import keras
import numpy as np
import pytest

from normopt.bench import norm_impls
from normopt.normalizations import BUILTIN_NORMALIZATIONS

SIZES = [2**e for e in (8, 12, 16, 20, 24)]


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(n).astype(np.float32) for n in SIZES}


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("norm", BUILTIN_NORMALIZATIONS)
@pytest.mark.parametrize("impl", norm_impls.IMPLEMENTATIONS)
def test_norm_call(benchmark, arrays, impl, norm, size):
    reason = norm_impls.unavailable_reason(impl)
    if reason:
        pytest.skip(reason)
    x = arrays[size]
    eps = keras.config.epsilon()
    call = norm_impls.prepare(impl, x, norm, eps)
    assert call() == pytest.approx(norm_impls.reference_norm(x, norm, eps), rel=1e-4)
    benchmark.extra_info.update(bytes_read=int(x.nbytes), size=size)
    benchmark(call)
