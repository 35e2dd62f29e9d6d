"""Sparse (tf.IndexedSlices) gradients on the fused path.

An IndexedSlices gradient stands for the dense tensor its rows scatter into
zeros, duplicate indices summed. Under every fused inner optimizer the step
takes the fused path (asserted) and must give the numbers of that dense
tensor: against the pure-TF path (fused=False) and a NumPy reference written
from the formulas (tests/reference.py, test_granularity.reference_step), with
duplicate, out-of-order and no indices, every wrapper, granularity and
exclusion; the recorded L2 norms are the dense tensor's. On the CPU the op
reads the rows and their indices and never builds that tensor (checked in
the step's graph); SGD and Adagrad, whose Keras updates write only the
indexed rows (keras_adapters.INDEXED_SLICES), have the op write only those,
and keep the sparse pure-TF path where it cannot read rows (per unit).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import normopt
import reference as R
from normopt.ops import keras_adapters, library, step_plan, tf_backend
from test_granularity import EPS, reference_step
from test_granularity import make_wrapper as granularity_wrapper

ROWS, WIDTH = 40, 6
# name -> indices of the sparse gradient's rows (values: one row per index)
INDICES = {
    "duplicates": [7, 3, 7, 12, 3, 7],
    "out_of_order": [30, 2, 17, 5, 39, 0],
    "empty": [],
}
# Inners of both kinds of INDEXED_SLICES (every row: the first four; indexed
# rows: sgd, adagrad), in Keras configurations whose hyperparameters float32
# holds exactly (reference.RULE_KERAS).
INNERS = ["adam", "rmsprop", "sgd_nesterov", "lamb", "sgd", "adagrad"]
TOL = {"float64": dict(rtol=1e-9, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}
STEPS = 2


@pytest.fixture(autouse=True)
def require_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


def gradients(case, step, dtype):
    """(IndexedSlices of the table, its dense equivalent, a dense gradient
    of the second variable), different per step."""
    rng = np.random.RandomState(100 * step + len(case))
    indices = np.array(INDICES[case], np.int64)
    values = rng.standard_normal((len(indices), WIDTH)) * 10.0 ** rng.uniform(-1, 1, WIDTH)
    values = values.astype(dtype).astype(np.float64)
    dense = np.zeros((ROWS, WIDTH))
    np.add.at(dense, indices, values)
    other = rng.standard_normal((WIDTH, 3)).astype(dtype).astype(np.float64)
    slices = tf.IndexedSlices(tf.constant(values, dtype), tf.constant(indices),
                              tf.constant([ROWS, WIDTH], tf.int64))
    return slices, dense, other


def initial_weights():
    rng = np.random.RandomState(1)
    table = rng.standard_normal((ROWS, WIDTH)) * 0.3
    table[:, 2] = 0.0  # a unit of zero weights (adaptive: threshold from eps)
    return [table, rng.standard_normal((WIDTH, 3)) * 0.3]


def make_wrapper(kind, rule, fused, granularity="tensor", name="l2"):
    """test_granularity's wrapper of `kind` around the Keras optimizer of `rule`."""
    return granularity_wrapper(kind, name, granularity, fused,
                               inner=R.RULE_KERAS[rule](keras.optimizers))


def run(opt, case, dtype, excluded=(), path=None, graph=False):
    """STEPS steps of `opt` on (table, other) from initial_weights; returns
    the variables and the recorded gradient norms of each step. Asserts
    `path` was taken at every step."""
    variables = [keras.Variable(w.astype(dtype), dtype=dtype, name=f"v{i}")
                 for i, w in enumerate(initial_weights())]
    if excluded:
        opt.exclude_from_normalization(var_list=[variables[i] for i in excluded])
    apply = lambda slices, other: opt.apply([slices, other], variables)  # noqa: E731
    if graph:
        apply = tf.function(apply)
    norms = []
    for step in range(STEPS):
        slices, _, other = gradients(case, step, dtype)
        apply(slices, tf.constant(other, dtype))
        if path is not None:
            assert opt.last_path.name == path, opt.last_path.reason
        norms.append(opt.gradient_norms.numpy())
    return [v.numpy().astype(np.float64) for v in variables], norms


def numpy_run(kind, rule, case, dtype, granularity="tensor", name="l2", excluded=()):
    """The same steps in NumPy float64: the dense equivalent (duplicates
    summed) scaled from the formula, then reference.rule_step."""
    inner = R.RULE_KERAS[rule](keras.optimizers)
    adapter = keras_adapters.adapter_for(inner)
    hyper = [float(h) for h in adapter.hyper(inner)]
    lr = float(np.float32(inner.learning_rate.numpy()))
    wd = float(inner.weight_decay or 0.0)
    weights = [w.astype(dtype).astype(np.float64) for w in initial_weights()]
    # the slots' initial values (Adagrad's accumulator starts at 0.1)
    inner.build([keras.Variable(w) for w in weights])
    slots = [[s.numpy().astype(np.float64) for s in per_var]
             for per_var in zip(*adapter.slots(inner, [0, 1]))] or [[], []]
    norms = []
    for step in range(STEPS):
        _, dense, other = gradients(case, step, dtype)
        raw = [dense, other]
        norms.append([np.sqrt((g * g).sum()) for g in raw])
        scaled = reference_step(kind, raw, weights, name, granularity, excluded)
        for i, g in enumerate(scaled):
            weights[i], slots[i] = R.rule_step(rule, weights[i], slots[i], g, lr, step + 1,
                                               hyper, wd)
    return weights, norms


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(INDICES))
@pytest.mark.parametrize("rule", INNERS)
def test_sparse_step_is_fused_and_matches_pure_path_and_numpy(rule, case, dtype):
    fused, fused_norms = run(make_wrapper("normalized", rule, None), case, dtype, path="fused")
    pure, pure_norms = run(make_wrapper("normalized", rule, False), case, dtype, path="tf")
    want, want_norms = numpy_run("normalized", rule, case, dtype)
    tol = TOL[dtype]
    for got, ref, p, w in zip(fused, pure, [0, 1], want):
        np.testing.assert_allclose(got, w, **tol, err_msg=f"fused vs numpy, variable {p}")
        np.testing.assert_allclose(got, ref, **tol, err_msg=f"fused vs pure TF, variable {p}")
    for step in range(STEPS):
        np.testing.assert_allclose(fused_norms[step], want_norms[step], rtol=1e-6, atol=1e-30)
        np.testing.assert_allclose(fused_norms[step], pure_norms[step], rtol=1e-6, atol=1e-30)
    if case == "empty":
        # a zero gradient: the table moves by weight decay and slot history only
        assert fused_norms[0][0] == 0.0


GRANULARITIES = ["tensor", "unit", "global"]
KINDS = ["normalized", "clipped", "adaptive"]


@pytest.mark.parametrize("excluded", [(), (0,), (1,)], ids=["none", "table", "dense"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_wrapper_granularity_and_exclusion(kind, granularity, excluded):
    """Adam, duplicate indices, float64; avg_l1 (counts the implicit zeros)
    for the clip, std (their share of the spread) for the adaptive clip."""
    name = {"normalized": "l2", "clipped": "avg_l1", "adaptive": "std"}[kind]
    make = lambda fused: make_wrapper(kind, "adam", fused, granularity, name)  # noqa: E731
    fused, fused_norms = run(make(None), "duplicates", "float64", excluded, path="fused")
    pure, _ = run(make(False), "duplicates", "float64", excluded, path="tf")
    want, want_norms = numpy_run(kind, "adam", "duplicates", "float64", granularity, name,
                                 excluded)
    for i, (got, ref, w) in enumerate(zip(fused, pure, want)):
        np.testing.assert_allclose(got, w, **TOL["float64"], err_msg=f"fused vs numpy {i}")
        np.testing.assert_allclose(got, ref, **TOL["float64"], err_msg=f"fused vs pure {i}")
    np.testing.assert_allclose(fused_norms, want_norms, rtol=1e-6)  # float32


# A table of three chunks (csrc/ops/chunk_plan.h: 16384 elements) whose rows
# of 7 straddle the chunk boundaries, for the op's own reading of rows: row
# 2340 crosses the first boundary, and the third chunk (rows 4681 on) is all
# zeros.
BIG_ROWS, BIG_WIDTH = 5000, 7
BIG_INDICES = [2999, 5, 2340, 5, 2341, 0, 2340, 1200]


def big_gradient(step, dtype):
    """(IndexedSlices of the big table, its dense tensor (TF, duplicates
    summed in the same order as the op's deduplication), a dense gradient of
    the second variable)."""
    rng = np.random.RandomState(7 + step)
    values = rng.standard_normal((len(BIG_INDICES), BIG_WIDTH)) * 10.0 ** rng.uniform(-1, 1)
    slices = tf.IndexedSlices(tf.constant(values, dtype), tf.constant(BIG_INDICES, tf.int64),
                              tf.constant([BIG_ROWS, BIG_WIDTH], tf.int64))
    dense = tf_backend.dense_gradient(slices, tf.zeros([BIG_ROWS, BIG_WIDTH], dtype))
    other = tf.constant(rng.standard_normal((BIG_WIDTH, 3)), dtype)
    return slices, dense, other


def run_big(opt, dtype, sparse):
    """Two steps of `opt` on the big table and a dense variable, the table's
    gradient given as IndexedSlices (`sparse`) or as its dense tensor; the
    variables (float64 copies) and the recorded norms. Asserts the fused path."""
    rng = np.random.RandomState(3)
    variables = [keras.Variable(tf.constant(rng.standard_normal(s) * 0.3, dtype), name=f"b{i}")
                 for i, s in enumerate([(BIG_ROWS, BIG_WIDTH), (BIG_WIDTH, 3)])]
    norms = []
    for step in range(2):
        slices, dense, other = big_gradient(step, dtype)
        opt.apply([slices if sparse else dense, other], variables)
        assert opt.last_path.name == "fused", opt.last_path.reason
        norms.append(opt.gradient_norms.numpy())
    return [tf.cast(v.value, tf.float64).numpy() for v in variables], norms


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("kind,rule,granularity,name", [
    ("normalized", "adam", "tensor", "l2"),
    ("clipped", "lamb", "tensor", "avg_l1"),
    ("normalized", "rmsprop", "global", "std"),
    ("adaptive", "adam", "tensor", "min_max"),
    ("normalized", "sgd", "global", "l2"),  # present rows only
    ("clipped", "adagrad", "tensor", "std"),  # present rows, every row decays
])
def test_op_reads_rows_as_the_dense_tensor(kind, rule, granularity, name, dtype):
    """The CPU op given the rows (and their indices, fused.sparse_rows) updates as
    given the dense tensor they stand for, to the rounding of the sums: the
    update reads each chunk of that tensor gathered (a row across a chunk
    boundary, the trust ratio's two passes) or, under SGD and Adagrad, its
    present rows alone, and the statistics of a table of several chunks are
    those of its present rows merged with its zeros (in another order than
    the dense tensor's). (The dense input is checked against NumPy above.)"""
    make = lambda: make_wrapper(kind, rule, None, granularity, name)  # noqa: E731
    got, got_norms = run_big(make(), dtype, sparse=True)
    want, want_norms = run_big(make(), dtype, sparse=False)
    # a few units in the last place of the dtype, of each element or of the
    # variable's largest (an element near zero after a cancellation)
    ulps = 4 * {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23,
                "float64": 2.0 ** -52}[dtype]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=ulps, atol=ulps * np.abs(w).max())
    np.testing.assert_allclose(got_norms, want_norms, rtol=1e-6, atol=0)


def op_nodes(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    return [op for op in graph.get_operations() if op.type == "NormoptApply"], graph


@pytest.mark.parametrize("granularity", ["tensor", "global", "unit"])
def test_the_dense_gradient_is_never_built(granularity):
    """On the CPU, the op takes the deduplicated rows and their indices
    (attr `sparse` names the gradient): no op of the step makes a tensor of the
    table's shape but the op's own update. Granularity "unit" (per-column
    norms) has the op scatter them into the dense tensor first."""
    opt = make_wrapper("normalized", "adam", None, granularity)
    variables = [keras.Variable(np.zeros((BIG_ROWS, BIG_WIDTH), np.float32)),
                 keras.Variable(np.zeros((BIG_WIDTH, 3), np.float32))]
    opt.build(variables)
    slices, _, other = big_gradient(0, tf.float32)
    step = tf.function(lambda g, o: opt.apply([g, o], variables))
    (apply_op,), graph = op_nodes(step, slices, other)
    table_sized = [op.name for op in graph.get_operations() for t in op.outputs
                   if t.shape.as_list() == [BIG_ROWS, BIG_WIDTH] and t.dtype == tf.float32
                   and op.type not in ("ReadVariableOp", "Placeholder")]
    if granularity == "unit":
        assert list(apply_op.get_attr("sparse")) == []
        assert any("UnsortedSegmentSum" in n for n in table_sized), table_sized
    else:
        assert list(apply_op.get_attr("sparse")) == [0]
        first_grad = apply_op.get_attr("num_vars") + apply_op.get_attr("num_slots")
        assert apply_op.inputs[first_grad].shape.as_list()[1:] == [BIG_WIDTH]
        assert table_sized == [], table_sized
    step(slices, other)
    assert opt.last_path.name == "fused", opt.last_path.reason


def raw_apply_args(rows=4):
    """Inputs of one raw NormoptApply Adam step on a fresh [rows, 2] table
    (returned first), but the gradient and its indices."""
    var = tf.Variable(tf.zeros([rows, 2]))
    m, v = tf.Variable(tf.zeros([rows, 2])), tf.Variable(tf.zeros([rows, 2]))
    return var, dict(var=[var.handle], slots=[m.handle, v.handle],
                     lr=tf.constant(0.1, tf.float64), step=tf.constant(1.0, tf.float64),
                     hyper=tf.constant([0.9, 0.999, 1e-7], tf.float64), decay=tf.zeros([1]),
                     norms=tf.zeros([0]), clipnorm=tf.constant(1.0, tf.float64),
                     epsilon=tf.constant(1e-7, tf.float64),
                     weight_eps=tf.constant(0.0, tf.float64),
                     spectral_vectors=[],
                     rule="adam", kind="l2", mode="normalize")


def test_index_checks():
    """An index outside the variable's rows, a row listed twice, an index
    vector per sparse gradient missing or of the wrong length, and a dense
    row count that is not the variable's are errors naming the input."""
    ops = library.load()
    _, args = raw_apply_args()
    grad = tf.ones([2, 2])
    rows = tf.constant([4], tf.int64)

    def call(indices, dense_rows=rows):
        return ops.normopt_apply(grad=[grad], indices=indices,
                                 dense_rows=dense_rows, sparse=[0], **args)

    error = tf.errors.InvalidArgumentError
    with pytest.raises(error, match=r"indices\[0\]\[1\] is 4, not one of the variable.s 4 rows"):
        call([tf.constant([0, 4], tf.int64)])
    with pytest.raises(error, match=r"indices\[0\]\[0\] is -1, not one of"):
        call([tf.constant([-1, 2], tf.int64)])
    with pytest.raises(error, match="lists row 1 twice"):
        call([tf.constant([1, 1], tf.int64)])
    with pytest.raises(error, match="one entry per index in 'sparse'"):
        call([])
    with pytest.raises(error, match="one index per row of gradient 0"):
        call([tf.constant([0, 1, 2], tf.int64)])
    with pytest.raises(error, match=r"dense_rows\[0\] >= 0, .* and -1 rows"):
        call([tf.constant([0, 1], tf.int64)], tf.constant([-1], tf.int64))
    with pytest.raises(error, match="has shape \\[4,2\\] but its gradient"):
        call([tf.constant([0, 1], tf.int64)], tf.constant([3], tf.int64))


def test_indices_in_any_order():
    """Row j of the values is row indices[j] of the dense gradient, in any
    order: the same rows given sorted or not step alike, and the rows not
    listed keep their value."""
    ops = library.load()
    values = np.array([[1.0, -2.0], [3.0, 0.5], [-0.25, 4.0]], np.float32)
    order = [2, 0, 1]
    got = []
    for idx, vals in (([3, 0, 2], values), ([2, 3, 0], values[order])):
        var, args = raw_apply_args(rows=5)
        ops.normopt_apply(grad=[tf.constant(vals)], indices=[tf.constant(idx, tf.int64)],
                          dense_rows=tf.constant([5], tf.int64), sparse=[0], **args)
        got.append(var.numpy())
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0][[1, 4]], 0.0)
    # Keras Adam's first step on g / ||g|| (beta 0.9, 0.999; epsilon 1e-7)
    g = np.zeros((5, 2))
    g[[3, 0, 2]] = values
    g /= np.sqrt((g ** 2).sum())
    m, v = 0.1 * g, 0.001 * g ** 2
    want = -0.1 * np.sqrt(1 - 0.999) / (1 - 0.9) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-7)


def test_inside_tf_function_and_with_skip_nonfinite():
    opt = make_wrapper("clipped", "adam", None)
    opt.skip_nonfinite = True
    got, _ = run(opt, "duplicates", "float32", path="fused", graph=True)
    want, _ = numpy_run("clipped", "adam", "duplicates", "float32")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL["float32"])


def test_indexed_rows_rules_update_only_the_present_rows():
    """Under Adagrad (INDEXED_ROWS) the op writes only the rows the sparse
    gradient holds, plus the weight decay of every row: an absent row whose
    accumulator is NaN keeps it, and that row of the table moves by the
    decay alone. Keras's own sparse update writes NaN into that row of the
    table (its divide keeps the rows where sqrt(acc + eps) is 0 or NaN; the
    difference README states); every other row matches plain Keras Adagrad
    on the gradient normalized in NumPy and kept sparse."""
    assert keras_adapters.sparse_gradients("adagrad") == keras_adapters.INDEXED_ROWS
    slices, dense, _ = gradients("out_of_order", 0, "float64")
    norm = np.sqrt((dense * dense).sum()) + EPS
    scaled = tf.IndexedSlices(slices.values / norm, slices.indices, slices.dense_shape)
    results = []
    for fused in (True, False):
        table = keras.Variable(initial_weights()[0], dtype="float64")
        if fused:
            opt = make_wrapper("normalized", "adagrad", True)
            opt.build([table])
            inner = opt.inner_optimizer
        else:
            opt = inner = R.RULE_KERAS["adagrad"](keras.optimizers)
            inner.build([table])
        accumulator = inner.variables[-1]
        assert accumulator.shape == (ROWS, WIDTH)
        start = accumulator.numpy()
        start[1] = np.nan  # row 1 is not indexed
        accumulator.assign(start)
        opt.apply([slices if fused else scaled], [table])
        if fused:
            assert opt.last_path.name == "fused", opt.last_path.reason
        results.append((table.numpy(), accumulator.numpy()))
    (got, got_acc), (keras_w, keras_acc) = results
    assert np.isnan(got_acc[1]).all() and np.isfinite(np.delete(got_acc, 1, 0)).all()
    wd, lr = R.RULE_KERAS["adagrad"](keras.optimizers).weight_decay, float(np.float32(0.05))
    row = initial_weights()[0][1]
    np.testing.assert_allclose(got[1], row - row * wd * lr, rtol=1e-15)
    assert np.isnan(keras_w[1]).all()
    others = np.arange(ROWS) != 1
    np.testing.assert_allclose(got[others], keras_w[others], **TOL["float64"])
    np.testing.assert_allclose(got_acc[others], keras_acc[others], **TOL["float64"])


@pytest.mark.parametrize("rule", ["sgd", "adagrad"])
def test_indexed_rows_rules_keep_the_sparse_tf_path_per_unit(rule):
    """Per unit, the op does not read rows: under SGD and Adagrad, whose
    Keras updates write only the indexed rows, the step stays on the pure-TF
    path, which hands the inner optimizer deduplicated IndexedSlices (never
    densified), and fused=True says why."""
    opt = make_wrapper("normalized", rule, None, "unit")
    seen = []
    original = opt.inner_optimizer.apply
    opt.inner_optimizer.apply = lambda g, v: (seen.extend(g), original(g, v))[1]
    got, _ = run(opt, "duplicates", "float64", path="tf")
    assert "indexed rows" in opt.last_path.reason, opt.last_path.reason
    assert isinstance(seen[0], tf.IndexedSlices) and seen[0].values.shape[0] == 3
    want, _ = numpy_run("normalized", rule, "duplicates", "float64", "unit")
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TOL["float64"])
    with pytest.raises(step_plan.FusedPathUnavailable, match="indexed rows"):
        run(make_wrapper("normalized", rule, True, "unit"), "duplicates", "float64")


def test_custom_normalization_sees_the_dense_tensor():
    """A custom norm (computed in TF, applied by the op) gets the dense
    tensor on the fused_tf_norms path, as tf_norm hands it on the pure one."""
    seen = []

    def l2_dense(g):
        seen.append((type(g).__name__, tuple(g.shape)))
        return tf.norm(g) + EPS

    normopt.register_normalization("sparse_test_l2", l2_dense)
    try:
        got, _ = run(make_wrapper("normalized", "adam", None, name="sparse_test_l2"),
                     "duplicates", "float64", path="fused_tf_norms")
        pure, _ = run(make_wrapper("normalized", "adam", False, name="sparse_test_l2"),
                      "duplicates", "float64", path="tf")
    finally:
        normopt.unregister_normalization("sparse_test_l2")
    want, _ = numpy_run("normalized", "adam", "duplicates", "float64")
    # the table's gradient, dense, at both steps on both paths
    assert [shape for _, shape in seen].count((ROWS, WIDTH)) == 2 * STEPS, seen
    assert not [kind for kind, _ in seen if kind == "IndexedSlices"], seen
    for g, p, w in zip(got, pure, want):
        np.testing.assert_allclose(g, w, **TOL["float64"])
        np.testing.assert_allclose(g, p, **TOL["float64"])


def test_dense_gradients_with_a_scatter_only_rule_stay_fused():
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1))
    var = keras.Variable(np.ones((4, 2), np.float32))
    opt.apply([tf.ones((4, 2))], [var])
    assert opt.last_path.name == "fused", opt.last_path.reason


def test_no_fused_update_keeps_the_tf_path():
    """An inner optimizer without a fused rule (scale-only op) would get a
    dense gradient in place of its sparse one: pure TF, saying why."""
    class Mine(keras.optimizers.Adam):
        pass

    opt = normopt.NormalizedOptimizer(Mine(0.01))
    run(opt, "duplicates", "float32", path="tf")
    assert "no fused update" in opt.last_path.reason


def test_rules_table_covers_every_fused_rule():
    from normopt.kernels import _updates

    assert set(keras_adapters.INDEXED_SLICES) == set(_updates.RULE_NAMES)
    assert set(keras_adapters.INDEXED_SLICES.values()) <= {keras_adapters.EVERY_ROW,
                                                           keras_adapters.INDEXED_ROWS}


def test_embedding_model_fit_matches_across_paths():
    def train(fused):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(300, 8),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ])
        opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2", fused=fused)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        rng = np.random.RandomState(0)
        x = rng.randint(0, 300, (96, 5)).astype("int32")
        x[:, 0] = 7  # a row every example hits: duplicate indices in every batch
        y = (x.sum(1, keepdims=True) / 750.0).astype("float32")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
        return opt.last_path.name, [w.numpy() for w in model.weights]

    fused_path, fused = train(None)
    pure_path, pure = train(False)
    assert (fused_path, pure_path) == ("fused", "tf")
    for a, b in zip(fused, pure):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
