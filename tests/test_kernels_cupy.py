"""CuPy front end of csrc/cuda: the shared checks of test_kernels_numba.py
(NumPy float64 reference), twice:

  [gpu]       CuPy on a GPU; skips, with the reason, without CuPy or a device;
  [emulated]  cupy_kernels.py with CuPy replaced by tests/emulated_cupy.py,
              which runs the same entry points on the CPU (host emulation,
              256 threads per block as on a GPU). It checks the front end's
              tables, argument order and types, not CuPy or a GPU; heavy
              cases run smaller there.

Importing the module must work everywhere.
"""

import numpy as np
import pytest

from conftest import covering
from test_cuda_compile import RULE_NAMES
from test_kernels_numba import (
    ADAM_VARIANTS,
    DTYPES,
    SGD_VARIANTS,
    SHAPE_LISTS,
    check_adam,
    check_bitwise_repeatable,
    check_matches_tf_op,
    check_momenta_with_zero_momentum,
    check_nan_propagates,
    check_norms,
    check_scale,
    check_sgd,
    make_arrays,
    many_shapes,
)


def test_module_imports_without_cupy():
    from normopt.kernels import cupy_kernels

    ok, reason = cupy_kernels.available()
    if not ok:
        with pytest.raises(RuntimeError, match="needs CuPy and a GPU"):
            cupy_kernels.norms([np.ones(3, np.float32)], "l2")


@pytest.fixture(scope="module", params=["gpu", "emulated"])
def K(request, tmp_path_factory):
    from normopt.kernels import cupy_kernels
    from normopt.kernels.host_adapter import CupyOnHost

    if request.param == "gpu":
        ok, reason = cupy_kernels.available()
        if not ok:
            pytest.skip(f"CuPy kernels need CuPy and a GPU: {reason}")
        kernels = CupyOnHost()
        kernels.emulated = False
        yield kernels
        return
    import emulated_cupy
    from test_cuda_compile import build_emulation

    library = build_emulation(tmp_path_factory, cupy_kernels.THREADS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cupy_kernels, "cp", emulated_cupy.module(library))
        cupy_kernels._module.cache_clear()
        cupy_kernels.kernels.cache_clear()
        kernels = CupyOnHost()
        kernels.emulated = True
        yield kernels
    cupy_kernels._module.cache_clear()
    cupy_kernels.kernels.cache_clear()


@pytest.mark.parametrize("shapes,dtype", covering(sorted(SHAPE_LISTS), DTYPES))
def test_cupy_norms(K, shapes, dtype):
    check_norms(K, SHAPE_LISTS[shapes], dtype, chunk_size=8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_grad_norms(K, dtype):
    """launch_stats fills `grad_norms` with sqrt(sum g^2) of every tensor,
    whatever the norm kind."""
    from normopt.kernels import cupy_kernels as C

    arrays = make_arrays(SHAPE_LISTS["chunk_edges"], dtype)
    want = [np.sqrt(np.sum(np.square(a.astype(np.float64)))) for a in arrays]
    plan = C.TensorList([C.cp.asarray(a) for a in arrays], 8)
    for kind in ("l1", "min_max"):
        out = C.cp.zeros(len(arrays), plan.acc)
        C.launch_stats(plan, kind, grad_norms=out)
        np.testing.assert_allclose(out.get(), want, rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("kind,granularity,name,dtype",
                         covering(["normalized", "clipped", "adaptive"], ["tensor", "unit", "global"],
                                  ["l2", "std", "min_max", "avg_l1"], ["float32", "float64"]))
def test_cupy_granularity_exclusions_adaptive(K, kind, granularity, name, dtype):
    """The CUDA kernels' unit-wise and global norms, exclusions and adaptive
    clipping (one SGD step at lr 1, so w moves by -g') against the NumPy
    reference of test_granularity.py; chunks of 64 elements, a tensor of two
    unit blocks, one of several row blocks and a unit-wise one last."""
    from test_granularity import CLIP_FACTOR, CLIPNORM, WEIGHT_EPS, reference_step

    rng = np.random.RandomState(5)
    # the last tensor unit-wise: the scale slots end with its units
    shapes = [(60, 300), (300,), (3, 5, 7, 40), (600, 3), (2000,), (4, 1), (6, 20)]
    grads = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-1, 1, s[-1:])).astype(dtype)
             for s in shapes]
    weights = [(rng.standard_normal(s) * 0.5).astype(dtype) for s in shapes]
    weights[0][:, 7] = 0  # a unit of zero weights: the threshold falls back to weight_eps
    excluded = (1, 4)
    w0 = [w.astype(np.float64) for w in weights]
    mode, clipnorm = {"normalized": ("normalize", 1.0), "clipped": ("clip", CLIPNORM),
                      "adaptive": ("adaptive", CLIP_FACTOR)}[kind]
    K.apply("sgd", weights, grads, [], lr=1.0, kind=name, mode=mode, clipnorm=clipnorm,
            eps=1e-7, chunk_size=64, granularity=granularity, excluded=excluded,
            weight_eps=WEIGHT_EPS)
    want = reference_step(kind, [g.astype(np.float64) for g in grads], w0, name, granularity,
                          excluded=excluded)
    rtol = 1e-9 if dtype == "float64" else 2e-5
    for w, w_before, g in zip(weights, w0, want):
        got = w_before - w.astype(np.float64)
        assert np.all(np.abs(got - g) <= rtol * (np.abs(w_before) + np.abs(g))), (
            name, np.max(np.abs(got - g)))


@pytest.mark.parametrize("granularity", ["unit", "global"])
def test_cupy_unit_and_global_norms_are_rescued(K, granularity):
    """float32 sums of squares of 1e30s overflow; the unit and global norms
    (serial rescue in unit_finish / global_finish) do not."""
    from test_granularity import reference_step

    g = np.full((4, 3), 1e30, np.float32)
    g[:, 1] = -2e30
    g[0, 2] = 3e30
    small = np.float32([0.5, -1.5])
    for name in ("l2", "std"):
        got = K.scale([g, small], name, "normalize", 1.0, 1e-7, granularity=granularity)
        want = reference_step("normalized", [g.astype(np.float64), small.astype(np.float64)],
                              None, name, granularity)
        for a, w in zip(got, want):
            np.testing.assert_allclose(a, w, rtol=2e-5)


def test_cupy_norms_many_tensors_and_large(K, request):
    count, big = (100, 2**20 + 3) if K.emulated else (1000, 2**24 + 3)
    if K.emulated and not request.config.getoption("--runslow"):
        count, big = 30, 2**17 + 3  # still many chunks and the vector path
    check_norms(K, many_shapes(count, 300), "float32", chunk_size=64)
    check_norms(K, [(big,), (0,), (65537,)], "float32", kinds=("l2", "std", "min_max"))


@pytest.mark.parametrize("dtype,mode", covering(DTYPES, ["normalize", "clip"]))
def test_cupy_scale(K, dtype, mode):
    check_scale(K, SHAPE_LISTS["mixed"], dtype, mode, chunk_size=8)


@pytest.mark.parametrize("variant,dtype", covering(sorted(SGD_VARIANTS), DTYPES))
def test_cupy_sgd(K, variant, dtype):
    check_sgd(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=8)


@pytest.mark.parametrize("variant,dtype", covering(sorted(ADAM_VARIANTS), DTYPES[::-1]))
def test_cupy_adam(K, variant, dtype):
    check_adam(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"] +
                         [pytest.param(d, marks=pytest.mark.slow) for d in ("float16", "float64")])
def test_cupy_nan_propagates(K, dtype):
    check_nan_propagates(K, dtype, chunk_size=8)
    check_nan_propagates(K, dtype, big=70000)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_cupy_rule(K, rule):
    """Every rule through cupy_kernels.apply against the NumPy reference."""
    from test_kernels_numba import RULE_SHAPES, check_rule

    check_rule(K, rule, RULE_SHAPES, "float32", steps=2, chunk_size=8)


def test_cupy_momenta_with_zero_momentum(K):
    check_momenta_with_zero_momentum(K, "float32", chunk_size=8)


# ~2 min per dtype on the host emulation (256-thread blocks); the same
# TF-op parity runs by default in test_cuda_compile.py (8-thread blocks).
@pytest.mark.parametrize("dtype", [pytest.param(d, marks=pytest.mark.slow) for d in DTYPES])
def test_cupy_updates_match_tf_op(K, dtype):
    """Step by step against the TF CPU op, where TF is installed (the GPU
    machines have none; there the NumPy-reference checks above stand)."""
    pytest.importorskip("tensorflow", reason="the TF CPU op needs TensorFlow")
    check_matches_tf_op(K, dtype, SHAPE_LISTS["chunk_edges"] + [(), (300,)], chunk_size=8)


def test_cupy_vectorized_path(K):
    """Default chunks of aligned float32/float16 tensors take the 16-byte path."""
    for dtype in ("float32", "float16"):
        check_adam(K, [(4096,), (8192 + 8,), (13,)], dtype, "amsgrad")
        check_sgd(K, [(4096,), (8192 + 8,), (13,)], dtype, "nesterov")


def test_cupy_bitwise_repeatable(K):
    check_bitwise_repeatable(K, many_shapes(20 if K.emulated else 200, 5000), chunk_size=1024)


def test_cupy_launches_do_not_depend_on_tensor_count(K):
    from normopt.kernels import cupy_kernels as C

    for count in (3, 30 if K.emulated else 300):
        arrays = [C.cp.ones(5, C.cp.float32) for _ in range(count)]
        zeros = [C.cp.zeros_like(a) for a in arrays]
        C.LAUNCHES.clear()
        C.apply_adam(arrays, arrays, zeros, [z.copy() for z in zeros], lr=0.1, step=1)
        assert dict(C.LAUNCHES) == {"chunk_stats": 1, "finish": 1, "apply_adam": 1}


# Sparse gradients (cupy_kernels.SparseRows) with chunks of 8 elements: rows
# of 3 and 5 elements cross chunk boundaries; listed out of order, none
# listed, every row listed, and a 1-D gradient.
SPARSE_SHAPES = [(10, 3), (6, 5), (4,), (9, 2), (13, 3), (5,)]
SPARSE_ROWS = {0: [7, 2, 9, 0], 1: [], 3: list(range(8, -1, -1)), 4: [12], 5: [3, 0]}


@pytest.fixture
def sparse_tables(monkeypatch):
    """The sparse chunk tables cupy_kernels builds, recorded: a test that
    claims the sparse path asserts that it ran (absent rows read as zeros)."""
    from normopt.kernels import cupy_kernels

    built = []

    def record(*args):
        table = real(*args)
        built.append(table)
        return table

    real = cupy_kernels.sparse_chunk_table
    monkeypatch.setattr(cupy_kernels, "sparse_chunk_table", record)
    return built


@pytest.mark.parametrize("rule,dtype", covering(RULE_NAMES, DTYPES))
def test_cupy_sparse_rule(K, sparse_tables, rule, dtype):
    """Every rule with sparse gradients against the NumPy reference on the
    dense gradient they stand for (norms too); under sgd and adagrad the
    absent rows keep their slots exactly (check_rule)."""
    from test_kernels_numba import check_rule

    for kind, mode in (("l2", "normalize"), ("std", "clip")):
        check_rule(K, rule, SPARSE_SHAPES, dtype, kind=kind, mode=mode, steps=2,
                   chunk_size=8, sparse=SPARSE_ROWS)
    assert sparse_tables and all((t.grad[0::2] < 0).any() for t in sparse_tables)


def test_cupy_sparse_large_rows(K, sparse_tables):
    """Default chunks: 16-byte loads of rows, runs of absent rows longer
    than a chunk, and the std norm's moments over the implicit zeros."""
    from test_kernels_numba import check_rule

    shapes = [(4200, 32), (40, 7)]
    rows = {0: [4199, 5, 2500, 17], 1: [39, 0]}  # rows 18-2499 span two dense chunks
    for rule in ("adam", "sgd", "lamb"):
        for kind in ("l2", "std", "min_max"):
            check_rule(K, rule, shapes, "float32", kind=kind, steps=1, sparse=rows)
    for table in sparse_tables:
        ours = slice(2 * table.first[0], 2 * table.first[1])
        offsets, counts = table.grad[ours][0::2], table.grad[ours][1::2]
        assert (counts[offsets >= 0] == 32).all()  # one row each
        absent = offsets < 0
        assert (absent[1:] & absent[:-1]).any()  # a run of absent rows cut at a chunk


def test_cupy_sparse_norms_rescued_and_global(K):
    """A sparse float32 gradient whose sum g^2 overflows: the rescue pass
    reads its rows and counts its zeros, so its norms are the dense
    gradient's; a global norm over sparse and dense gradients likewise."""
    import reference as R
    from helpers import sparse_gradients

    rng = np.random.default_rng(0)
    grads = [np.full((10, 4), 3e37, np.float32), rng.standard_normal((6, 2)).astype(np.float32),
             rng.standard_normal(5).astype(np.float32)]
    dense, given = sparse_gradients(grads, {0: [8, 1], 1: [5]})
    for kind in ("l2", "std", "avg_l2", "l1"):
        w = [np.zeros(g.shape, np.float32) for g in grads]
        got = K.apply("sgd", w, given, [], lr=0.0, kind=kind, chunk_size=8)
        np.testing.assert_allclose(got, [R.norm(g, kind) for g in dense], rtol=2e-6,
                                   err_msg=kind)
    w = [np.zeros(g.shape, np.float32) for g in grads]
    K.apply("sgd", w, given, [], lr=1.0, kind="l2", chunk_size=8, granularity="global")
    norm = R.norm(np.concatenate([d.reshape(-1).astype(np.float64) for d in dense]), "l2")
    for wi, d in zip(w, dense):
        np.testing.assert_allclose(wi, -d.astype(np.float64) / norm, rtol=2e-6, atol=1e-30)


def test_cupy_sparse_rejects(K):
    """Rows listed twice, outside the variable, or of the wrong shape; unit
    granularity; sparse gradients given to the scale function."""
    from normopt.kernels import cupy_kernels as C

    w = [np.zeros((4, 3), np.float32)]
    rows = np.ones((2, 3), np.float32)
    cases = [([1, 1], ValueError, "twice"), ([0, 4], ValueError, r"\[0, 4\)")]
    for indices, error, match in cases:
        with pytest.raises(error, match=match):
            K.apply("sgd", w, [C.SparseRows(rows, np.array(indices))], [], lr=0.1)
    with pytest.raises(ValueError, match="do not make rows"):
        K.apply("sgd", w, [C.SparseRows(rows, np.array([0, 1, 2]))], [], lr=0.1)
    with pytest.raises(ValueError, match="granularity 'tensor' or 'global'"):
        K.apply("sgd", w, [C.SparseRows(rows, np.array([0, 1]))], [], lr=0.1,
                granularity="unit")
    with pytest.raises(TypeError, match="apply only"):
        C.scale([C.SparseRows(C.cp.asarray(rows), np.array([0, 1]))])
