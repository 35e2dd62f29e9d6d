"""Time of one whole optimizer step per variable set, optimizer and path.

Same cases as `normopt bench step`: gradients are constant tensors, only
`opt.apply` inside a tf.function is timed. The fused cases assert that the
compiled path ran; they are skipped with the reason where it cannot.
"""

import numpy as np
import pytest
import tensorflow as tf

from normopt import FusedPathUnavailable
from normopt.bench import cases, step_bench

VARIANTS = [("none", "plain")] + [
    (w, p) for w in step_bench.WRAPPERS for p in step_bench.PATHS if p != "plain"
]


@pytest.fixture(scope="module")
def shapes_of():
    found = {}

    def get(name):
        if name not in found:
            found[name] = cases.step_shapes(name)
        return found[name]

    return get


@pytest.mark.parametrize("wrapper, path", VARIANTS, ids=[f"{w}-{p}" for w, p in VARIANTS])
@pytest.mark.parametrize("inner", step_bench.INNERS)
@pytest.mark.parametrize("set_name", cases.STEP_SETS)
def test_optimizer_step(benchmark, shapes_of, set_name, inner, wrapper, path):
    shapes = shapes_of(set_name)
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.standard_normal(s, dtype=np.float32) * 1e-2) for s in shapes]
    import keras

    variables = [keras.Variable(np.zeros(s, np.float32)) for s in shapes]
    try:
        opt = step_bench.make_optimizer(inner, wrapper, path, "l2")
        call = step_bench.make_step(opt, grads, variables, path)
        call()
    except FusedPathUnavailable as exc:
        pytest.skip(str(exc))
    if path == "fused":
        assert opt.last_path.name == "fused", opt.last_path
    elif path != "plain":
        assert opt.last_path.name == "tf", opt.last_path
    params = cases.parameter_count(shapes)
    benchmark.extra_info.update(
        params=params, bytes_per_param=step_bench.bytes_per_param(inner, path)
    )
    benchmark(call)
