"""Recorded gradient norms (`wrapper.gradient_norms`) and GradientNormMonitor.

The recorded norms are compared with NumPy L2 norms of the gradients the
backend's autodiff gives (a GradientTape, jax.grad, torch.autograd), on
every path; the callback's logs and TensorBoard event files are read back.
The keras.ops path (eager and compiled) and the callback run on every
backend; the compiled op's own norms on TensorFlow (under tf.distribute:
test_distribute.py).
"""

import csv
import glob
import os

import numpy as np
import pytest

import keras
import normopt
from helpers import unfused_inner
from keras import ops
from neutral import (BACKEND, PURE, TENSORFLOW, apply, compiled_apply, f64, gradients, neutral, numpy,
                     saved_variables)
from normopt.callbacks import GradientNormMonitor


# path -> (fused argument, inner optimizer, expected path, compiled); "tf"
# and "xla": the keras.ops path eagerly and compiled (TensorFlow's XLA, JAX's
# jit of stateless_apply), on every backend
PATHS = {
    "fused": (True, keras.optimizers.Adam, "fused", False),
    "fused_scale": (None, unfused_inner, "fused_scale", False),
    "tf": (False, keras.optimizers.Adam, PURE, False),
    "xla": (None, keras.optimizers.Adam, PURE, True),
}
PATH_PARAMS = [pytest.param(p, marks=neutral) if p in ("tf", "xla") else p for p in PATHS]


def model_and_data(seed=0, n=32):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="tanh", name="hidden"),
        keras.layers.Dense(8, activation="tanh", name="frozen"),
        keras.layers.Dense(2, name="out"),
    ])
    rng = np.random.RandomState(seed)
    x = rng.standard_normal((n, 6)).astype("float32")
    y = rng.standard_normal((n, 2)).astype("float32")
    return model, x, y


def l2(g):
    return np.sqrt(np.sum(np.square(np.asarray(g, np.float64))))


@pytest.mark.parametrize("path", PATH_PARAMS)
def test_recorded_norms_match_the_tape(path):
    fused, inner, expected_path, xla = PATHS[path]
    model, x, y = model_and_data()
    opt = normopt.NormalizedOptimizer(inner(0.01), fused=fused)
    variables = model.trainable_variables
    opt.build(variables)
    assert opt.gradient_norms.shape == (len(variables),)

    _, grads = gradients(lambda: ops.mean(ops.square(ops.subtract(model(x), y))), variables)
    want = [l2(numpy(g)) for g in grads]
    want[2] = 0.0
    # the "frozen" layer's kernel gets no gradient: its norm is 0
    grads[2] = None
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        if xla:
            compiled_apply(opt, grads, variables)()
        else:
            opt.apply(grads, variables)
    assert opt.last_path.name == expected_path
    got = numpy(opt.gradient_norms)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert opt.gradient_norm_names == [v.path for v in variables]
    if TENSORFLOW:  # not optimizer state
        assert not any("gradient_norms" in v.name for v in opt.variables)
    # saved nowhere: the wrapper's and the inner optimizer's files hold
    # only the other variables
    own, inner = {}, {}
    opt.save_own_variables(own)
    opt.inner_optimizer.save_own_variables(inner)
    assert len(own) + len(inner) == len(saved_variables(opt)) == len(opt.variables) - (
        0 if TENSORFLOW else 1)


@pytest.mark.parametrize("path,op", [("fused", "NormoptApply"), ("fused_scale", "NormoptScale")])
def test_compiled_paths_record_the_ops_own_norms(path, op):
    """On a compiled path the op is the only reader of every gradient: the
    recorded norms are its output, not a second reduction in TF."""
    import tensorflow as tf

    fused, inner, expected_path, _ = PATHS[path]
    model, _, _ = model_and_data()
    variables = model.trainable_variables
    opt = normopt.NormalizedOptimizer(inner(0.01), fused=fused)
    opt.build(variables)
    step = tf.function(lambda *grads: opt.apply(list(grads), variables))
    graph = step.get_concrete_function(
        *[tf.TensorSpec(v.shape, v.dtype) for v in variables]).graph
    assert opt.last_path.name == expected_path
    for grad in graph.inputs[:len(variables)]:
        assert [c.type for c in grad.consumers()] == [op]
    grads = [tf.random.normal(v.shape, seed=i) for i, v in enumerate(variables)]
    step(*grads)
    np.testing.assert_allclose(opt.gradient_norms.numpy(), [l2(g) for g in grads], rtol=1e-5)


@neutral
def test_recorded_norms_are_unscaled_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, x, y = model_and_data()
        model.layers[-1].dtype_policy = keras.DTypePolicy("float32")
        wrapper = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.01))
        opt = keras.optimizers.LossScaleOptimizer(wrapper, initial_scale=1024.0)
        variables = model.trainable_variables
        _, scaled_grads = gradients(
            lambda: opt.scale_loss(
                ops.mean(ops.square(ops.subtract(ops.cast(model(x), "float32"), y)))),
            variables)
        apply(opt, scaled_grads, variables)
        want = [l2(f64(g) / 1024.0) for g in scaled_grads]
        np.testing.assert_allclose(numpy(wrapper.gradient_norms), want, rtol=1e-3)
        assert wrapper.last_path.name == ("fused" if TENSORFLOW else PURE)
    finally:
        keras.config.set_dtype_policy("float32")


class _Seen(keras.callbacks.Callback):
    """Records the logs the callbacks after GradientNormMonitor receive."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper, self.batches, self.epochs, self.recorded = wrapper, [], [], []
        self.indices = []

    def on_train_batch_end(self, batch, logs=None):
        # Keras's JAX trainer holds the state outside the variables during
        # fit; a callback that reads them syncs them first
        getattr(self.model, "jax_state_sync", lambda: None)()
        self.indices.append(batch)
        self.batches.append(logs.get("grad_norm"))
        self.recorded.append(numpy(self.wrapper.gradient_norms).copy())

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(logs.get("grad_norm"))


def _scalars(event_dir):
    """{tag: [(step, value)]} of every scalar summary under `event_dir`."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(str(event_dir), "**", "events.out.tfevents.*"),
                          recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.dtype.kind != "f" or array.size != 1:
                        continue  # the model's config, histograms, ...
                    number = float(array)
                else:
                    number = value.simple_value
                found.setdefault(value.tag, []).append((event.step, number))
    return found


@neutral
def test_monitor_logs_history_csv_and_tensorboard(tmp_path):
    model, x, y = model_and_data()
    wrapper = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.01))
    model.compile(optimizer=wrapper, loss="mse")
    seen = _Seen(wrapper)
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x, y, batch_size=8, epochs=2, verbose=0,
        callbacks=[GradientNormMonitor(log_dir=tmp_path / "grads"), seen,
                   keras.callbacks.CSVLogger(str(csv_path)),
                   keras.callbacks.TensorBoard(str(tmp_path / "tb"))])
    # batch logs: the global L2 norm of the recorded per-variable norms
    assert len(seen.batches) == 8
    for value, recorded in zip(seen.batches, seen.recorded):
        assert value == pytest.approx(l2(recorded), rel=1e-6)
    # epoch logs: the mean over that epoch's batches
    for epoch in range(2):
        want = np.mean(seen.batches[4 * epoch: 4 * epoch + 4])
        assert seen.epochs[epoch] == pytest.approx(want, rel=1e-6)
        assert history.history["grad_norm"][epoch] == pytest.approx(want, rel=1e-6)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["grad_norm"]) for r in rows] == pytest.approx(history.history["grad_norm"])
    # Keras's TensorBoard callback writes the epoch value
    tb = _scalars(tmp_path / "tb")
    assert [v for _, v in sorted(tb["epoch_grad_norm"])] == pytest.approx(
        history.history["grad_norm"], rel=1e-6)
    # ours writes one scalar per layer per logged batch, at the optimizer step
    ours = _scalars(tmp_path / "grads")
    names = wrapper.gradient_norm_names
    layers = sorted({n.rsplit("/", 1)[0] for n in names})
    assert sorted(ours) == [f"grad_norm/{layer}" for layer in layers]
    last = seen.recorded[-1]
    for layer in layers:
        series = sorted(ours[f"grad_norm/{layer}"])
        assert [s for s, _ in series] == list(range(1, 9))
        want = l2([n for n, name in zip(last, names) if name.rsplit("/", 1)[0] == layer])
        assert series[-1][1] == pytest.approx(want, rel=1e-6)


@neutral
def test_monitor_every_n_batches():
    model, x, y = model_and_data()
    wrapper = normopt.ClippedOptimizer(keras.optimizers.SGD(0.01), clipnorm=0.5)
    model.compile(optimizer=wrapper, loss="mse")
    seen = _Seen(wrapper)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[GradientNormMonitor(every=3), seen])
    assert [b is not None for b in seen.batches] == [i % 3 == 0 for i in range(8)]


@pytest.fixture(scope="module")
def model_of_four_steps_per_execution():
    """A model compiled with steps_per_execution=4 (and its wrapper, data),
    shared by the `every` cases below: its training function is compiled
    once, each case fits it on with its own callbacks (the monitor logs by
    the batch index within the epoch; each value is checked against the
    norms recorded at that call)."""
    model, x, y = model_and_data()
    wrapper = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.01))
    model.compile(optimizer=wrapper, loss="mse", steps_per_execution=4)
    return model, wrapper, x, y


# Keras's PyTorch trainer takes steps_per_execution=1 only
@(neutral if BACKEND != "torch" else (lambda test: test))
@pytest.mark.parametrize("every,logged", [(1, [3, 7, 11, 15]), (4, [3, 7, 11, 15]),
                                          (6, [3, 7, 15]), (8, [3, 11])])
def test_monitor_every_n_batches_with_steps_per_execution(every, logged,
                                                          model_of_four_steps_per_execution):
    """Keras calls the callback after batches 3, 7, 11, 15 of each epoch
    (steps_per_execution=4, 16 batches): a call logs when the batches it
    covers hold a multiple of `every`."""
    model, wrapper, x, y = model_of_four_steps_per_execution
    seen = _Seen(wrapper)
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0,
                        callbacks=[GradientNormMonitor(every=every), seen])
    assert seen.indices == [3, 7, 11, 15] * 2
    for epoch in range(2):
        calls = range(4 * epoch, 4 * epoch + 4)
        assert [seen.indices[i] for i in calls if seen.batches[i] is not None] == logged
        values = [seen.batches[i] for i in calls if seen.batches[i] is not None]
        for i in calls:
            if seen.batches[i] is not None:
                # the norm of the execution's last step
                assert seen.batches[i] == pytest.approx(l2(seen.recorded[i]), rel=1e-6)
        assert history.history["grad_norm"][epoch] == pytest.approx(np.mean(values), rel=1e-6)


@neutral
def test_monitor_with_a_plain_optimizer_says_what_it_needs():
    model, x, y = model_and_data()
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    with pytest.raises(ValueError, match="needs a normopt wrapper.*got Adam"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[GradientNormMonitor()])


@neutral
@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_monitor_bad_every(every):
    with pytest.raises(ValueError, match="every"):
        GradientNormMonitor(every=every)
