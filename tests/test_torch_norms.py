"""normopt.ops.torch_norms on Keras's torch backend, against NumPy.

    norms     l1, l2 and max of many tensors through torch._foreach_norm
              (float16, bfloat16, float32, float64; sizes across the chunk
              boundary and a 4096 x 4096 tensor), accumulated in float32
              for 16-bit inputs; empty and non-finite tensors, overflow
              rescue; the other norms take the keras.ops path
    scaling   one step of each wrapper kind with SGD: the per-tensor groups
              scaled by torch._foreach_mul, the rest (unit-wise, global,
              excluded, a scale below the smallest normal) by keras.ops;
              the recorded gradient norms

Each test also checks which path ran (the torch._foreach_* calls counted).
torch is not in CI (its wheel pulls several GB of CUDA libraries); run by
hand, in an environment with torch, pytest and hypothesis:

    KERAS_BACKEND=torch python -m pytest -q -p no:cacheprovider tests/test_torch_norms.py

Skipped on every other backend.
"""

import numpy as np
import pytest

import keras
from neutral import skip_module_unless

skip_module_unless("torch", "torch backend tests: run with KERAS_BACKEND=torch")

import torch  # noqa: E402

import reference as R  # noqa: E402

from normopt import AdaptiveClippedOptimizer, ClippedOptimizer, NormalizedOptimizer  # noqa: E402
from normopt.ops import keras_step, torch_norms  # noqa: E402

EPS = keras.config.epsilon()
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16,
          "float32": torch.float32, "float64": torch.float64}


@pytest.fixture
def calls(monkeypatch):
    """Counts the torch._foreach_norm and torch._foreach_mul calls (that
    one writing into the kept buffers included)."""
    counts = {"norm": 0, "mul": 0}
    norm, mul = torch._foreach_norm, torch._foreach_mul
    mul_out = torch_norms._foreach_mul_out

    def counted_norm(*args, **kwargs):
        counts["norm"] += 1
        return norm(*args, **kwargs)

    def counted_mul(*args, **kwargs):
        counts["mul"] += 1
        return mul(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counted_norm)
    def counted_mul_out(*args, **kwargs):
        counts["mul"] += 1
        return mul_out(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_mul", counted_mul)
    monkeypatch.setattr(torch_norms, "_foreach_mul_out", counted_mul_out)
    return counts


def _tensors(shapes, dtype, seed=0, scale=1e-2):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(np.asarray(rng.standard_normal(s) * scale, np.float32)).to(dtype)
            for s in shapes]


def _exact(t):
    return t.to(torch.float64).numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", ["l1", "l2", "max"])
def test_norms_of_many_tensors_match_numpy(name, dtype, calls):
    # across the chunk boundary: below, at, just above, several chunks
    chunk = torch_norms.CHUNK
    shapes = [(), (7,), (33, 5), (chunk,), (chunk + 1,), (3 * chunk + 17,), (64, 300, 2)]
    grads = _tensors(shapes, DTYPES[dtype])
    norms = torch_norms.FOREACH.tensor_norms(grads, name)
    assert calls["norm"] >= 1
    acc = torch.float64 if dtype == "float64" else torch.float32
    rtol = 1e-12 if dtype == "float64" else 1e-6
    for g, n in zip(grads, norms):
        assert n.dtype == acc and n.shape == ()
        np.testing.assert_allclose(float(n), R.norm(_exact(g), name, EPS), rtol=rtol)


@pytest.mark.parametrize("name, foreach_calls", [("l1", 2), ("l2", 0)])
def test_a_4096_squared_tensor_is_summed_in_chunks(name, foreach_calls, calls):
    """One _foreach_norm over 2^24 float32 elements sums serially on the
    CPU (4e-3 relative error for l1); l1 in float64 chunks (two calls: the
    chunks, then each tensor's chunk norms), l2 from float32 row norms
    summed in float64 (no _foreach_norm): both the float64 norm rounded to
    float32."""
    (g,) = _tensors([(4096, 4096)], torch.float32)
    (n,) = torch_norms.FOREACH.tensor_norms([g], name)
    assert calls["norm"] == foreach_calls
    np.testing.assert_allclose(float(n), R.norm(_exact(g), name, EPS), rtol=1.2e-7)


@pytest.mark.parametrize("value", [1e-25, 1e20, 3e-3])
def test_l2_row_norms_whose_squares_leave_float32_are_taken_in_float64(value):
    """Rows of float32 squares underflow (1e-25) or overflow (1e20) where
    the float64 norm is a normal float32: those norms are taken again in
    float64 chunks, the others kept."""
    n = torch_norms.ROWS_FROM + 300
    grads = [torch.full((n,), value, dtype=torch.float32),
             _tensors([(n,)], torch.float32)[0]]
    got = torch_norms.FOREACH.tensor_norms(grads, "l2", eps=0.0)
    for g, norm in zip(grads, got):
        np.testing.assert_allclose(float(norm), R.norm(_exact(g), "l2", 0.0), rtol=1.2e-7)


def test_eps_zero_empty_and_non_finite(calls):
    grads = [torch.zeros(0), torch.tensor([1.0, float("inf")]),
             torch.tensor([float("nan"), 2.0]), torch.tensor([3.0, -4.0])]
    l2 = torch_norms.FOREACH.tensor_norms(grads, "l2", eps=0.0)
    assert float(l2[0]) == 0.0 and float(l2[3]) == 5.0
    assert float(l2[1]) == float("inf") and np.isnan(float(l2[2]))
    # the same as the keras.ops path, which the rest of the suite checks
    with torch_norms.foreach_norms(False):
        ops_l2 = torch_norms.FOREACH.tensor_norms(grads, "l2", eps=0.0)
    np.testing.assert_array_equal([float(x) for x in l2], [float(x) for x in ops_l2])
    mx = torch_norms.FOREACH.tensor_norms(grads, "max")
    assert float(mx[0]) == pytest.approx(EPS) and float(mx[3]) == pytest.approx(4.0 + EPS)


@pytest.mark.parametrize("dtype, big", [("float32", 1e38), ("float64", 1e307)])
def test_overflowing_sums_of_finite_tensors_are_rescued(dtype, big, calls):
    """sum g^2 overflows the dtype, sqrt of it does not (float64 sums
    for float32; the keras.ops rescue for float64); an l1 norm that itself
    overflows is inf on both paths."""
    grads = [torch.tensor([2 * big, -big, big], dtype=DTYPES[dtype]),
             torch.tensor([1.0, 2.0], dtype=DTYPES[dtype])]
    (l2, small) = torch_norms.FOREACH.tensor_norms(grads, "l2")
    assert calls["norm"] >= 1
    # (NumPy's float64 sum overflows too: the norm of g / big, times big)
    np.testing.assert_allclose(float(l2), big * R.norm(_exact(grads[0]) / big, "l2", 0.0) + EPS,
                               rtol=1e-6)
    np.testing.assert_allclose(float(small), np.sqrt(5.0) + EPS, rtol=1e-6)
    l1 = torch_norms.FOREACH.tensor_norms(grads, "l1")[0]
    with torch_norms.foreach_norms(False):
        ops_l1 = torch_norms.FOREACH.tensor_norms(grads, "l1")[0]
    assert l1.dtype == ops_l1.dtype
    np.testing.assert_allclose(float(l1), float(ops_l1), rtol=1e-6)
    assert np.isinf(float(l1)) == (dtype == "float32")  # 4e38 is above float32's max


@pytest.mark.parametrize("name", ["std", "avg_l2", "min_max", "l1_l2"])
def test_other_norms_take_the_keras_ops_path(name, calls):
    grads = _tensors([(40,), (8, 8)], torch.float32)
    norms = torch_norms.FOREACH.tensor_norms(grads, name)
    assert calls["norm"] == 0
    for g, n in zip(grads, norms):
        np.testing.assert_allclose(float(n), R.norm(_exact(g), name, EPS), rtol=1e-6)


def test_the_torch_backend_uses_them():
    assert keras_step.backend_tensors() is torch_norms.FOREACH


# ------------------------------------------------------------ one step

LR = 0.1
SHAPES = [(30, 20), (20,), (20, 5), (5,)]


def _step(opt, grads, initial, foreach=True):
    variables = [keras.Variable(w) for w in initial]
    with torch_norms.foreach_norms(foreach):
        opt.apply([torch.from_numpy(g) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables], opt


def _setup(seed=1):
    rng = np.random.default_rng(seed)
    grads = [(rng.standard_normal(s) * 0.3).astype(np.float32) for s in SHAPES]
    initial = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in SHAPES]
    return grads, initial


def _agc(g, w, clip_factor=0.01, eps=1e-3):
    gn = R.norm(g, "l2", EPS)
    wn = max(R.norm(w, "l2", EPS), eps)
    return g * clip_factor * wn / gn if gn > clip_factor * wn else np.asarray(g, np.float64)


KINDS = {
    "normalized": (lambda: NormalizedOptimizer(keras.optimizers.SGD(LR)),
                   lambda g, w: R.transform(g, "l2")),
    "clipped": (lambda: ClippedOptimizer(keras.optimizers.SGD(LR), clipnorm=1.0),
                lambda g, w: R.transform(g, "l2", "clip", 1.0)),
    "adaptive": (lambda: AdaptiveClippedOptimizer(keras.optimizers.SGD(LR), granularity="tensor"),
                 _agc),
    "max": (lambda: NormalizedOptimizer(keras.optimizers.SGD(LR), normalization="max"),
            lambda g, w: R.transform(g, "max")),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_one_step_of_each_wrapper_matches_numpy(kind, calls):
    make, transform = KINDS[kind]
    grads, initial = _setup()
    got, opt = _step(make(), grads, initial)
    assert opt.last_path.name == "keras"
    assert calls["norm"] >= 1 and calls["mul"] == 1  # every tensor in one multiply
    for g, w, new in zip(grads, initial, got):
        np.testing.assert_allclose(new, w - LR * transform(g, w), rtol=1e-5, atol=1e-7)
    # the keras.ops path gives the same numbers
    counted = dict(calls)
    off, _ = _step(make(), grads, initial, foreach=False)
    assert calls == counted
    for a, b in zip(got, off):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_scaled_gradients_reuse_their_memory_step_after_step(monkeypatch):
    """A repeated step writes its scaled gradients into the last step's
    (the plan is reused): every step's numbers, the caller's gradients
    untouched, two wrappers stepping in turn kept apart."""
    written = []
    mul_out = torch_norms._foreach_mul_out

    def recorded(xs, mults, out):
        written.append([t.data_ptr() for t in out])
        return mul_out(xs, mults, out)

    monkeypatch.setattr(torch_norms, "_foreach_mul_out", recorded)
    monkeypatch.setattr(torch_norms, "KEEP_FROM", 1)  # every gradient kept
    _, initial = _setup(3)
    opts = [NormalizedOptimizer(keras.optimizers.SGD(LR)) for _ in range(2)]
    variables = [[keras.Variable(w) for w in initial] for _ in opts]
    want = [[w.astype(np.float64) for w in initial] for _ in opts]
    for step in range(3):
        for k, (opt, vs) in enumerate(zip(opts, variables)):
            grads, _ = _setup(10 * step + k)
            given = [g.copy() for g in grads]
            opt.apply([torch.from_numpy(g) for g in grads], vs)
            for g, c in zip(grads, given):
                np.testing.assert_array_equal(g, c)
            want[k] = [w - LR * R.transform(g, "l2") for w, g in zip(want[k], grads)]
            for v, w in zip(vs, want[k]):
                np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w, rtol=1e-5,
                                           atol=1e-7)
    assert len(written) == 6
    # one wrapper alone: the same memory every step
    opt, vs = opts[0], variables[0]
    for step in range(2):
        grads, _ = _setup(40 + step)
        opt.apply([torch.from_numpy(g) for g in grads], vs)
    assert written[-1] == written[-2]


def test_unit_global_and_excluded_groups_keep_the_keras_ops_scaling(calls):
    grads, initial = _setup(2)
    # unit-wise: no whole-tensor group (1-D tensors are one unit each)
    got, _ = _step(NormalizedOptimizer(keras.optimizers.SGD(LR), granularity="unit"),
                   grads, initial)
    for g, w, new in zip(grads, initial, got):
        if g.ndim >= 2:
            want = g / (np.sqrt((g.astype(np.float64) ** 2).sum(axis=0)) + EPS)
        else:
            want = R.transform(g, "l2")
        np.testing.assert_allclose(new, w - LR * want, rtol=1e-5, atol=1e-7)
    # global: one norm over all
    got, _ = _step(NormalizedOptimizer(keras.optimizers.SGD(LR), granularity="global"),
                   grads, initial)
    total = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)) + EPS
    for g, w, new in zip(grads, initial, got):
        np.testing.assert_allclose(new, w - LR * g / total, rtol=1e-5, atol=1e-7)
    # per tensor with the biases excluded: those pass unchanged
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR))
    variables = [keras.Variable(w, name=f"v{i}") for i, w in enumerate(initial)]
    opt.exclude_from_normalization(var_list=[variables[1], variables[3]])
    before = calls["mul"]
    opt.apply([torch.from_numpy(g) for g in grads], variables)
    assert calls["mul"] == before + 1
    for i, (g, w, v) in enumerate(zip(grads, initial, variables)):
        want = g if i in (1, 3) else R.transform(g, "l2")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w - LR * want,
                                   rtol=1e-5, atol=1e-7)


def test_a_scale_below_the_smallest_normal_takes_the_keras_ops_scaling(calls):
    """g / norm(g) with norm(g) near float32's max: 1 / norm is subnormal,
    so the scale is (pre, mult) with pre != 1 (scale_math.apply_scale)."""
    g = np.array([3e38, 1e38], np.float32)
    w = np.zeros(2, np.float32)
    got, _ = _step(NormalizedOptimizer(keras.optimizers.SGD(1.0)), [g], [w])
    assert calls["mul"] == 0
    np.testing.assert_allclose(got[0], -R.transform(g, "l2"), rtol=1e-6)


def test_recorded_gradient_norms_match_numpy(calls):
    grads, initial = _setup(3)
    _, opt = _step(NormalizedOptimizer(keras.optimizers.SGD(LR), normalization="max"),
                   grads, initial)
    assert calls["norm"] >= 2  # the max norms, then the recorded l2 norms
    want = [np.sqrt((g.astype(np.float64) ** 2).sum()) for g in grads]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(opt.gradient_norms), want, rtol=1e-6)


def test_recorded_l2_norms_reuse_the_l2_normalization_pass(calls):
    """l2 normalization then the recorded l2 norms: one _foreach_norm (all
    tensors fit one chunk), since the same unchanged tensors come twice; a
    gradient changed in place between two calls is measured again."""
    grads, initial = _setup(4)
    _, opt = _step(NormalizedOptimizer(keras.optimizers.SGD(LR)), grads, initial)
    assert calls["norm"] == 1
    want = [np.sqrt((g.astype(np.float64) ** 2).sum()) for g in grads]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(opt.gradient_norms), want, rtol=1e-6)
    tensors = [torch.from_numpy(g) for g in grads]
    first = torch_norms.FOREACH.tensor_norms(tensors, "l2")
    tensors[0].mul_(2.0)
    second = torch_norms.FOREACH.tensor_norms(tensors, "l2", eps=0.0)
    assert calls["norm"] == 3
    np.testing.assert_allclose(float(second[0]), 2 * want[0], rtol=1e-6)
    np.testing.assert_allclose(float(second[1]), float(first[1]) - EPS, rtol=1e-6)


def test_skip_nonfinite_reuses_the_recorded_norms_and_no_step_reuses_the_last():
    """Under skip_nonfinite the recorded l2 norms, taken first, serve the
    normalization (one _foreach_norm per step); the same gradient tensors
    given again at the next step are measured again (a step's norms are
    kept for that step only)."""
    grads, initial = _setup(5)
    tensors = [torch.from_numpy(g) for g in grads]
    for skip in (False, True):
        opt = NormalizedOptimizer(keras.optimizers.SGD(LR), skip_nonfinite=skip)
        variables = [keras.Variable(w) for w in initial]
        counted = []
        norm = torch._foreach_norm
        try:
            torch._foreach_norm = lambda *a, **k: counted.append(1) or norm(*a, **k)
            opt.apply(tensors, variables)
            opt.apply(tensors, variables)
        finally:
            torch._foreach_norm = norm
        assert len(counted) == 2
        want = [w - 2 * LR * R.transform(g, "l2") for w, g in zip(initial, grads)]
        for v, w in zip(variables, want):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["normalized", "clipped", "max"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_the_whole_step_gives_the_group_loops_numbers(kind, dtype, monkeypatch):
    """ForeachTensors.scale_all (the whole step in a few torch calls) and
    the group loop it stands for (tensor_norms, then scaled) give the same
    bits, a tensor above ROWS_FROM and KEEP_FROM elements included."""
    make, _ = KINDS[kind]
    shapes = SHAPES + [(300, 256)]
    rng = np.random.default_rng(6)
    grads = [torch.from_numpy(rng.standard_normal(s).astype(np.float32) * 0.3).to(DTYPES[dtype])
             for s in shapes]
    initial = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes]
    got = []
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(torch_norms.ForeachTensors, "scale_all",
                                lambda self, *args: None)
        opt = make()
        variables = [keras.Variable(torch.from_numpy(w.copy()).to(DTYPES[dtype])) for w in initial]
        opt.apply(grads, variables)
        got.append([keras.ops.convert_to_numpy(v) for v in variables]
                   + [keras.ops.convert_to_numpy(opt.gradient_norms)])
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)
