"""The wrappers on Keras's JAX and PyTorch backends: what is specific to them.

    no TensorFlow   `import normopt` and a step on JAX leave TensorFlow
                    unimported (a fresh process)
    paths           fused=None takes the keras.ops path, `last_path`
                    'keras' naming the backend; fused=True is refused at
                    construction, naming it
    model.fit       compiled (JAX) and eager: the plain inner optimizer on
                    NumPy-normalized gradients (the backend's autodiff),
                    step by step
    stateless       `stateless_apply` (under `jax.jit` on JAX), each wrapper
                    kind and granularity, exclusions, against NumPy; the
                    recorded norms are an optimizer variable it returns; a
                    non-finite step is counted and changes nothing else
    DataParallel    JAX, two CPU devices (the same fresh process): the norm
                    is that of the all-reduced gradient, as on one device
    custom norms    one in keras.ops runs; one in tf.* is a TypeError
                    naming it and keras.ops
    monitor         GradientNormMonitor logs the global norm during fit

Run: KERAS_BACKEND=jax python -m pytest tests/test_backends.py (or torch;
skipped on TensorFlow, where the rest of the suite covers the same wrappers).
"""

import functools
import os
import sys

import numpy as np
import pytest

import keras

from neutral import BACKEND, compiled, numpy, skip_module_on_tensorflow, tensor

skip_module_on_tensorflow()
if BACKEND == "jax":
    import jax
    import jax.numpy as jnp
else:
    import torch

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX only")

import helpers  # noqa: E402
import reference as R  # noqa: E402
from normopt import (  # noqa: E402
    AdaptiveClippedOptimizer,
    ClippedOptimizer,
    FusedPathUnavailable,
    NormalizedOptimizer,
)
from normopt.ops import paths  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-7
LR = 0.01
SHAPES = [(3, 4), (5,), (2, 3, 2)]


def _run_python(script, extra_env=None, timeout=300):
    """(JSON of the last stdout line, stderr) of `script` in a fresh Python
    on this backend."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, **(extra_env or {}))
    return helpers.run_json_script(sys.executable, script, env, ROOT, timeout)


# ------------------------------------------------------ NumPy references


def _units(x):
    """x as (rows, units): one column per index of the last axis (a tensor
    of at most one axis is one unit)."""
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x.reshape(-1, 1)


def _norms(tensors, name, granularity):
    """Per tensor, the norm broadcastable against it: a scalar ("tensor",
    "global": one over all `tensors` together) or one per unit."""
    if granularity == "global":
        n = R.norm(np.concatenate([np.ravel(t) for t in tensors]), name, EPS)
        return [n] * len(tensors)
    if granularity == "unit":
        out = []
        for t in tensors:
            cols = _units(t)
            n = np.array([R.norm(cols[:, j], name, EPS) for j in range(cols.shape[1])])
            out.append(n if np.ndim(t) >= 2 else n[0])
        return out
    return [R.norm(t, name, EPS) for t in tensors]


def _scaled(grads, weights, kind, name, granularity, excluded=()):
    """The gradients a wrapper hands its inner optimizer, in float64."""
    keep = [i for i in range(len(grads)) if i not in excluded]
    gs = [np.asarray(grads[i], np.float64) for i in keep]
    norms = _norms(gs, name, granularity)
    if kind == "adaptive":
        wns = _norms([np.asarray(weights[i], np.float64) for i in keep], name, granularity)
    out = [np.asarray(g, np.float64) for g in grads]
    for k, (i, g, n) in enumerate(zip(keep, gs, norms)):
        if kind == "normalize":
            out[i] = g / n
        elif kind == "clip":
            out[i] = np.where(n >= 0.5, g * 0.5 / n, g)
        else:  # adaptive, clip_factor 0.1, eps 1e-3
            t = 0.1 * np.maximum(wns[k], 1e-3)
            out[i] = np.where(n > t, g * t / n, g)
    return out


def _wrapper(kind, inner, **kwargs):
    if kind == "normalize":
        return NormalizedOptimizer(inner, **kwargs)
    if kind == "clip":
        return ClippedOptimizer(inner, clipnorm=0.5, **kwargs)
    return AdaptiveClippedOptimizer(inner, clip_factor=0.1, eps=1e-3, **kwargs)


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}")
            for i, s in enumerate(SHAPES)]


def _grad_steps(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype("float32") for s in SHAPES] for _ in range(steps)]


def _index(optimizer, name):
    """The index in `optimizer.variables` of the wrapper's variable `name`,
    or of the inner optimizer's iteration counter ("iterations")."""
    if name == "iterations":
        return [id(v) for v in optimizer.variables].index(id(optimizer.iterations))
    return [v.name for v in optimizer.variables].index(name)


# ---------------------------------------------------------- no TensorFlow


# One fresh Python serves both checks that need one (a process costs ~10 s
# of imports): first `import normopt` and a step, whose TensorFlow modules it
# records before anything else runs; then, on JAX, the DataParallel runs on
# two host devices (DATA_PARALLEL below).
NO_TENSORFLOW = r"""
import json, sys
import keras, numpy as np
import normopt
from normopt import callbacks, NormalizedOptimizer
w = keras.Variable(np.ones((3, 2), 'float32'))
opt = NormalizedOptimizer(keras.optimizers.Adam(), granularity='unit')
opt.apply([np.full((3, 2), 2.0, 'float32')], [w])
fresh = {'tf': sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'),
         'path': opt.last_path.name}
result = {}
"""


@pytest.fixture(scope="module")
def fresh_process():
    """The JSON a fresh Python on this backend printed: "fresh" (the no
    TensorFlow check), on JAX also DATA_PARALLEL's one, two and half."""
    script = NO_TENSORFLOW
    extra_env = None
    if BACKEND == "jax":
        script += DATA_PARALLEL
        extra_env = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=2").strip()}
    result, _ = _run_python(script + "print(json.dumps(dict(result, fresh=fresh)))\n",
                            extra_env)
    return result


def test_import_and_a_step_leave_tensorflow_unimported(fresh_process):
    assert fresh_process["fresh"] == {"tf": [], "path": "keras"}


# ------------------------------------------------------------------ paths


def test_fused_none_takes_the_keras_path_and_says_why():
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR))
    variables = _variables()
    opt.apply([np.ones(s, "float32") for s in SHAPES], variables)
    assert opt.last_path.name == paths.KERAS == paths.pure()
    assert f"the Keras backend is {BACKEND}" in opt.last_path.reason
    assert "TensorFlow" in opt.last_path.reason


def test_fused_false_takes_the_keras_path():
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR), fused=False)
    opt.apply([np.ones(s, "float32") for s in SHAPES], _variables())
    assert opt.last_path == paths.StepPath(paths.KERAS, "fused=False")


@pytest.mark.parametrize("cls", [NormalizedOptimizer, ClippedOptimizer, AdaptiveClippedOptimizer])
def test_fused_true_is_refused_at_construction_naming_the_backend(cls):
    with pytest.raises(FusedPathUnavailable, match=f"Keras backend is {BACKEND}.*fused=None"):
        cls(keras.optimizers.Adam(), fused=True)


# ------------------------------------------------------------------ norms


def test_every_builtin_norm_per_tensor_and_per_unit():
    from normopt.ops import keras_step

    tensors = keras_step.backend_tensors()
    g = np.random.default_rng(5).normal(size=(6, 3)).astype("float32")
    for name in R.NORM_NAMES + tuple(R.ALIASES):
        np.testing.assert_allclose(numpy(tensors.norm(tensor(g), name)), R.norm(g, name, EPS),
                                   rtol=2e-6, err_msg=name)
        per_unit = [R.norm(g[:, j], name, EPS) for j in range(3)]
        np.testing.assert_allclose(numpy(tensors.norm(tensor(g), name, per_unit=True)),
                                   per_unit, rtol=2e-6, err_msg=name)
        # the norms of many tensors at once (a backend may override it)
        many = tensors.tensor_norms([tensor(g), tensor(g[:2])], name)
        np.testing.assert_allclose([numpy(n) for n in many],
                                   [R.norm(g, name, EPS), R.norm(g[:2], name, EPS)],
                                   rtol=2e-6, err_msg=name)


# --------------------------------------------------------------- model.fit


def _model(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(5, activation="tanh"),
        keras.layers.Dense(2),
    ])


def _data(n=32, seed=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def _mse_gradients(model, weights, x, y):
    """The gradients of the batch MSE of `model` at `weights` (NumPy), by
    the backend's autodiff, as float64 arrays."""
    if BACKEND == "jax":
        def loss(ws):
            pred, _ = model.stateless_call(ws, [], x)
            return jnp.mean(jnp.square(pred - y))

        gs = jax.grad(loss)([jnp.asarray(w, jnp.float32) for w in weights])
        return [np.asarray(g, np.float64) for g in gs]
    ws = [torch.tensor(np.asarray(w, np.float32), requires_grad=True) for w in weights]
    pred, _ = model.stateless_call(ws, [], torch.tensor(x))
    torch.mean(torch.square(pred - torch.tensor(y))).backward()
    return [w.grad.numpy().astype(np.float64) for w in ws]


def _reference_fit(model, x, y, batch, scale):
    """Adam (NumPy) on `scale`d gradients of the batch MSE, batch by
    batch, from the model's current weights (left unchanged)."""
    weights = [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
               for v in model.trainable_variables]
    adam = helpers.reference_inner("adam", LR)
    for start in range(0, len(x), batch):
        gs = _mse_gradients(model, weights, x[start:start + batch], y[start:start + batch])
        gs = scale(gs, weights)
        weights = [adam.step(i, w, g) for i, (w, g) in enumerate(zip(weights, gs))]
    return weights


@functools.cache
def _normalized_adam_reference():
    """_reference_fit of a fresh _model() on _data() under NormalizedOptimizer
    (l2, per tensor): the reference both modes below compare with (the
    backend's eager autodiff step by step, computed once)."""
    x, y = _data()
    return _reference_fit(_model(), x, y, 16,
                          lambda gs, ws: _scaled(gs, ws, "normalize", "l2", "tensor"))


@pytest.mark.parametrize("mode", [pytest.param("compiled", marks=jax_only), "eager"])
def test_model_fit_matches_plain_adam_on_normalized_gradients(mode):
    x, y = _data()
    expected = _normalized_adam_reference()
    model = _model()
    opt = NormalizedOptimizer(helpers.keras_inner("adam", LR))
    model.compile(optimizer=opt, loss="mse", run_eagerly=mode == "eager")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert int(opt.iterations) == 2
    assert opt.last_path.name == paths.KERAS
    for got, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-4, atol=1e-5)


def test_model_fit_under_adaptive_clipping_per_unit():
    x, y = _data()
    model = _model()
    expected = _reference_fit(model, x, y, 16, lambda gs, ws: _scaled(gs, ws, "adaptive", "l2",
                                                                      "unit"))
    opt = AdaptiveClippedOptimizer(helpers.keras_inner("adam", LR), clip_factor=0.1, eps=1e-3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------- stateless


STATELESS_CASES = [
    ("normalize", "tensor", "l2", ()),
    ("normalize", "unit", "avg_l1", ()),
    ("normalize", "global", "std", (1,)),
    ("clip", "global", "max", ()),
    ("adaptive", "unit", "l2", (1,)),
    ("adaptive", "tensor", "min_max", ()),
]


@pytest.mark.parametrize("kind, granularity, name, excluded", STATELESS_CASES,
                         ids=["-".join(map(str, c[:3])) + ("-excl" if c[3] else "")
                              for c in STATELESS_CASES])
def test_stateless_apply_under_jit_matches_numpy(kind, granularity, name, excluded):
    variables = _variables()
    opt = _wrapper(kind, helpers.keras_inner("momentum", LR), normalization=name,
                   granularity=granularity)
    opt.exclude_from_normalization(var_list=[variables[i] for i in excluded])
    opt.build(variables)
    step = compiled(opt.stateless_apply)
    opt_values = [v.value for v in opt.variables]
    values = [v.value for v in variables]
    sgd = helpers.reference_inner("momentum", LR)
    expected = [np.asarray(v, np.float64) for v in variables]
    for grads in _grad_steps(3):
        values, opt_values = step(opt_values, [tensor(g) for g in grads], values)
        scaled = _scaled(grads, expected, kind, name, granularity, excluded)
        expected = [sgd.step(i, w, g) for i, (w, g) in enumerate(zip(expected, scaled))]
        recorded = numpy(opt_values[_index(opt, "gradient_norms")])
        np.testing.assert_allclose(recorded, [R.norm(g, "l2", 0.0) for g in grads], rtol=1e-5)
    for got, want in zip(values, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-5, atol=1e-6)
    assert int(opt_values[_index(opt, "iterations")]) == 3
    if BACKEND == "jax":
        # stateless: the variables themselves are untouched (Keras's torch
        # optimizers update in place, stateless_apply included)
        np.testing.assert_array_equal(numpy(variables[0]), np.asarray(_variables()[0]))


@pytest.mark.parametrize("name", ["l2", "std", "min_max", "avg_l1"])
def test_stateless_tensors_of_one_shape_measured_together_rescue_overflow(name):
    # Several small tensors of one shape (measured as the rows of one
    # matrix, scale_math.builtin_norms), one of them with finite elements
    # whose plain statistics overflow float32: its norm comes from the
    # rescue pass, every other norm stays its own.
    shapes = [(4,), (2, 3), (4,), (4,), (2, 3)]
    rng = np.random.default_rng(3)
    init = [rng.normal(size=s).astype("float32") for s in shapes]
    variables = [keras.Variable(w, name=f"v{i}") for i, w in enumerate(init)]
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR), normalization=name)
    opt.build(variables)
    step = compiled(opt.stateless_apply)
    opt_values = [v.value for v in opt.variables]
    values = [v.value for v in variables]
    expected = [np.asarray(w, np.float64) for w in init]
    for t in range(2):
        grads = [rng.normal(size=s).astype("float32") for s in shapes]
        if t == 1:
            grads[2] = (grads[2] * 3e19).astype("float32")  # sum of squares > 3.4e38
        values, opt_values = step(opt_values, [tensor(g) for g in grads], values)
        expected = [w - LR * np.asarray(g, np.float64) / R.norm(g, name, EPS)
                    for w, g in zip(expected, grads)]
        recorded = numpy(opt_values[_index(opt, "gradient_norms")])
        np.testing.assert_allclose(recorded, [R.norm(g, "l2", 0.0) for g in grads], rtol=1e-5)
        assert np.all(np.isfinite(recorded))
        for got, want in zip(values, expected):
            np.testing.assert_allclose(numpy(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["stateless", "apply"])
def test_skip_nonfinite_counts_and_leaves_the_state(mode):
    variables = _variables()
    opt = NormalizedOptimizer(helpers.keras_inner("adam", LR), skip_nonfinite=True)
    opt.build(variables)
    grads = _grad_steps(3)
    grads[1][2][0, 1, 0] = np.nan
    adam = helpers.reference_inner("adam", LR)
    expected = [np.asarray(v, np.float64) for v in variables]
    for k in (0, 2):
        scaled = _scaled(grads[k], expected, "normalize", "l2", "tensor")
        expected = [adam.step(i, w, g) for i, (w, g) in enumerate(zip(expected, scaled))]

    if mode == "stateless":
        step = compiled(opt.stateless_apply)
        opt_values = [v.value for v in opt.variables]
        values = [v.value for v in variables]
        states = []
        for gs in grads:
            values, opt_values = step(opt_values, [tensor(g) for g in gs], values)
            states.append(([numpy(v) for v in values], [numpy(v) for v in opt_values]))
        final = values
    else:
        states = []
        for gs in grads:
            opt.apply([tensor(g) for g in gs], variables)
            states.append(([numpy(v) for v in variables],
                           [numpy(v) for v in opt.variables]))
        final = variables
    skipped, norms = _index(opt, "skipped_steps"), _index(opt, "gradient_norms")
    (w1, o1), (w2, o2) = states[0], states[1]
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)  # the model's variables
    for i, (a, b) in enumerate(zip(o1, o2)):
        if i not in (skipped, norms):
            np.testing.assert_array_equal(a, b)  # slots and iterations
    assert int(o1[skipped]) == 0 and int(o2[skipped]) == 1
    assert int(states[2][1][skipped]) == 1
    assert int(states[2][1][_index(opt, "iterations")]) == 2
    # the norms of the skipped step were recorded: NaN where the NaN was
    assert np.isnan(o2[norms][2]) and np.isfinite(o2[norms][:2]).all()
    for got, want in zip(final, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-5, atol=1e-6)


def test_gradient_norms_after_fit_and_unsaved():
    x, y = _data(16)
    model = _model()
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR))
    model.compile(optimizer=opt, loss="mse")

    grads = _mse_gradients(model, [numpy(v) for v in model.trainable_variables], x, y)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_allclose(numpy(opt.gradient_norms),
                               [R.norm(g, "l2", 0.0) for g in grads], rtol=1e-5)
    assert opt.gradient_norm_names == [v.path for v in model.trainable_variables]
    # listed for stateless steps, saved nowhere: the wrapper saves
    # skipped_steps only, as on TensorFlow
    assert opt.variables[-1].name == "gradient_norms"
    store = {}
    opt.save_own_variables(store)
    assert len(store) == len(opt.variables) - len(opt.inner_optimizer.variables) - 1
    assert all(np.shape(value) == () for value in store.values())


# ------------------------------------------------------------ DataParallel


DATA_PARALLEL = r"""
import jax
from normopt import ClippedOptimizer

assert len(jax.devices()) == 2, jax.devices()
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 4)).astype("float32")
y = rng.normal(size=(16, 2)).astype("float32")
init = [rng.normal(size=(4, 3)).astype("float32"), np.zeros(3, "float32"),
        rng.normal(size=(3, 2)).astype("float32"), np.zeros(2, "float32")]

def run(devices):
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices()[:devices]))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"),
                              keras.layers.Dense(2)])
    model.set_weights(init)
    opt = ClippedOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), clipnorm=0.05)
    model.compile(optimizer=opt, loss="mse")
    history = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model  # on JAX: the step's state back in the variables
            history.append(np.asarray(opt.gradient_norms).tolist())

    # three steps, one global batch of 16 each
    model.fit(np.tile(x, (3, 1)), np.tile(y, (3, 1)), batch_size=16, epochs=1,
              shuffle=False, verbose=0, callbacks=[Record()])
    sharding = model.trainable_variables[0].value.sharding
    return dict(weights=[w.tolist() for w in model.get_weights()], norms=history,
                devices=len(sharding.device_set))

one, two = run(1), run(2)
# what one device would measure on half the batch (the norm a per-replica
# gradient would give)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"),
                          keras.layers.Dense(2)])
model.set_weights(init)
def loss(ws):
    pred, _ = model.stateless_call(ws, [], x[:8])
    return jax.numpy.mean(jax.numpy.square(pred - y[:8]))
half = [float(np.sqrt(np.sum(np.square(g))))
        for g in jax.grad(loss)([v.value for v in model.trainable_variables])]
result = dict(one=one, two=two, half=half)
"""


@jax_only
def test_data_parallel_norm_is_that_of_the_global_batch(fresh_process):
    result = fresh_process
    one, two = result["one"], result["two"]
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["norms"], one["norms"], rtol=1e-5)
    for a, b in zip(two["weights"], one["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # per-replica norms would differ: the first step's half-batch gradient
    assert not np.allclose(result["half"], one["norms"][0], rtol=1e-2)


# ------------------------------------------------------------ custom norms


def test_custom_keras_ops_norm_runs_compiled(custom_norm):
    ops = keras.ops
    custom_norm("sum_sq_root", lambda g: ops.sqrt(ops.sum(ops.square(g))) + 1e-7)
    x, y = _data(16)
    model = _model()
    expected = _reference_fit(model, x, y, 16,
                              lambda gs, ws: [g / (np.sqrt(np.sum(g * g)) + 1e-7) for g in gs])
    opt = NormalizedOptimizer(helpers.keras_inner("adam", LR), normalization="sum_sq_root")
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert opt.last_path.name == paths.KERAS
    for got, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compiled", [pytest.param(True, marks=jax_only), False],
                         ids=["jit", "eager"])
def test_custom_tf_norm_is_a_clear_error(custom_norm, compiled):
    tf = pytest.importorskip("tensorflow")
    custom_norm("tf_l2", lambda g: tf.norm(g) + 1e-7)
    variables = _variables()
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR), normalization="tf_l2")
    opt.build(variables)
    grads = [tensor(np.ones(s, "float32")) for s in SHAPES]
    with pytest.raises(TypeError, match="'tf_l2'.*keras.ops"):
        if compiled:
            jax.jit(opt.stateless_apply)([v.value for v in opt.variables], grads,
                                         [v.value for v in variables])
        else:
            opt.apply(grads, variables)


# ---------------------------------------------------------------- monitor


def test_gradient_norm_monitor_logs_the_global_norm_each_batch():
    from normopt.callbacks import GradientNormMonitor

    x, y = _data(32)
    model = _model()
    opt = NormalizedOptimizer(keras.optimizers.SGD(LR))
    model.compile(optimizer=opt, loss="mse")
    weights = [numpy(v) for v in model.trainable_variables]
    first = _mse_gradients(model, weights, x[:16], y[:16])
    logged = []
    log = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: logged.append(logs["grad_norm"]))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
              callbacks=[GradientNormMonitor(), log])
    assert len(logged) == 2
    np.testing.assert_allclose(logged[0], np.sqrt(sum(np.sum(g * g) for g in first)), rtol=1e-5)
    # the second batch's norm, not the first one's again
    assert logged[1] != logged[0]


def test_gradient_norm_monitor_log_dir_needs_tensorflow_and_says_so(tmp_path):
    import importlib.util

    from normopt.callbacks import GradientNormMonitor

    if importlib.util.find_spec("tensorflow") is None:
        with pytest.raises(ImportError, match="needs TensorFlow installed"):
            GradientNormMonitor(log_dir=str(tmp_path))
        return
    pytest.importorskip("tensorboard")
    x, y = _data(16)
    model = _model()
    model.compile(optimizer=NormalizedOptimizer(keras.optimizers.SGD(LR)), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[GradientNormMonitor(log_dir=str(tmp_path))])
    assert [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]


def test_info_reports_the_backend():
    from normopt import info

    collected = info.collect()
    assert collected["keras backend"] == BACKEND
    assert collected["wrapper path"].startswith("keras (keras.ops")
