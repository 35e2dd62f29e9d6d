"""CuPy front end of csrc/cuda: the shared checks of test_kernels_numba.py
(NumPy float64 reference) on a GPU. Skips, with the reason, without CuPy or
a CUDA device; importing the module must work everywhere.
"""

import numpy as np
import pytest

from test_kernels_numba import (
    ADAM_VARIANTS,
    DTYPES,
    SGD_VARIANTS,
    SHAPE_LISTS,
    check_adam,
    check_bitwise_repeatable,
    check_norms,
    check_scale,
    check_sgd,
    many_shapes,
)


def test_module_imports_without_cupy():
    from normopt.kernels import cupy_kernels

    ok, reason = cupy_kernels.available()
    if not ok:
        with pytest.raises(RuntimeError, match="needs CuPy and a GPU"):
            cupy_kernels.norms([np.ones(3, np.float32)], "l2")


@pytest.fixture(scope="module")
def K():
    from normopt.kernels import cupy_kernels

    ok, reason = cupy_kernels.available()
    if not ok:
        pytest.skip(f"CuPy kernels need CuPy and a GPU: {reason}")
    from normopt.kernels.host_adapter import CupyOnHost

    return CupyOnHost()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", sorted(SHAPE_LISTS))
def test_cupy_norms(K, shapes, dtype):
    check_norms(K, SHAPE_LISTS[shapes], dtype, chunk_size=8)


def test_cupy_norms_many_tensors_and_large(K):
    check_norms(K, many_shapes(1000, 300), "float32", chunk_size=64)
    check_norms(K, [(2**24 + 3,), (0,), (65537,)], "float32", kinds=("l2", "std", "min_max"))


@pytest.mark.parametrize("mode", ["normalize", "clip"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_scale(K, dtype, mode):
    check_scale(K, SHAPE_LISTS["mixed"], dtype, mode, chunk_size=8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(SGD_VARIANTS))
def test_cupy_sgd(K, variant, dtype):
    check_sgd(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", sorted(ADAM_VARIANTS))
def test_cupy_adam(K, variant, dtype):
    check_adam(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=8)


def test_cupy_vectorized_path(K):
    """Default chunks of aligned float32/float16 tensors take the 16-byte path."""
    for dtype in ("float32", "float16"):
        check_adam(K, [(4096,), (8192 + 8,), (13,)], dtype, "amsgrad")
        check_sgd(K, [(4096,), (8192 + 8,), (13,)], dtype, "nesterov")


def test_cupy_bitwise_repeatable(K):
    check_bitwise_repeatable(K, many_shapes(200, 5000), chunk_size=1024)


def test_cupy_launches_do_not_depend_on_tensor_count(K):
    from normopt.kernels import cupy_kernels as C

    for count in (3, 300):
        arrays = [C.cp.ones(5, C.cp.float32) for _ in range(count)]
        zeros = [C.cp.zeros_like(a) for a in arrays]
        C.LAUNCHES.clear()
        C.apply_adam(arrays, arrays, zeros, [z.copy() for z in zeros], lr=0.1, step=1)
        assert dict(C.LAUNCHES) == {"chunk_stats": 1, "finish": 1, "adam": 1}
