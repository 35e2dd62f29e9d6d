"""Runs training scenarios on 1 or 2 logical CPU replicas; prints JSON.

    dist_worker.py JOBS_JSON

JOBS_JSON is a list of [replicas, kind, fused, skip, save_to, load_from]; one
JSON line is printed per job, in order. A job on 2 replicas runs under a
MirroredStrategy of the process's 2 logical CPUs, one on 1 replica without
any strategy. Kind "recorded_norms" (2 replicas) is one custom-loop step
whose recorded gradient norms are compared with a tape's (`recorded_norms`);
kind "legacy_keras" (last, with TF_USE_LEGACY_KERAS=1 in the environment)
checks normopt without tf-keras, then normopt.tf_keras (`legacy_keras`).
Used by test_distribute.py in a subprocess: logical devices must be set up
before TensorFlow initializes, which an in-process test cannot guarantee;
one launch runs every job (a TensorFlow start-up costs more than a job).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import contextlib  # noqa: E402
import importlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

# The job "legacy_keras" (test_distribute.py starts this process with
# TF_USE_LEGACY_KERAS=1 for it): its first part runs here, before anything
# imports normopt, as if tf-keras were not installed.
if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
    sys.modules["tf_keras"] = None  # not installed

import normopt  # noqa: E402


def without_tf_keras():
    """`import normopt` and the Keras 3 wrappers work without tf-keras, and
    normopt.tf_keras says what to install; then tf-keras is back."""
    v = keras.Variable([3.0, 4.0])
    normopt.NormalizedOptimizer(keras.optimizers.SGD(0.5)).apply([tf.constant([3.0, 4.0])], [v])
    try:
        importlib.import_module("normopt.tf_keras")
        error = None
    except ImportError as exc:
        error = str(exc)
    del sys.modules["tf_keras"]
    return {"keras3_step": v.numpy().tolist(), "import_error": error}


WITHOUT_TF_KERAS = (without_tf_keras() if os.environ.get("TF_USE_LEGACY_KERAS") == "1"
                    else None)


def build(kind, fused, skip):
    if kind == "normalized_adam":
        return normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2",
                                           fused=fused, skip_nonfinite=skip)
    if kind == "global_adam":  # one norm over all gradients (summed across replicas)
        return normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2",
                                           granularity="global", fused=fused,
                                           skip_nonfinite=skip)
    if kind == "agc_adam":  # unit-wise adaptive clipping: reads the variables
        return normopt.AdaptiveClippedOptimizer(keras.optimizers.Adam(1e-2), clip_factor=0.05,
                                                fused=fused, skip_nonfinite=skip)
    if kind == "embedding_adam":  # IndexedSlices gradient, its rows read by the fused op
        return normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-2), "l2",
                                           fused=fused, skip_nonfinite=skip)
    if kind == "embedding_adagrad":  # IndexedSlices gradient, present rows only
        return normopt.NormalizedOptimizer(keras.optimizers.Adagrad(0.1), "l2",
                                           fused=fused, skip_nonfinite=skip)
    if kind == "normalized_nadam":  # state outside the slots: Keras's _u_product
        return normopt.NormalizedOptimizer(keras.optimizers.Nadam(1e-2), "l2",
                                           fused=fused, skip_nonfinite=skip)
    return normopt.ClippedOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), "std",
        clipnorm=0.05, fused=fused, skip_nonfinite=skip)


_strategies = []


def mirrored():
    """One MirroredStrategy for every job of the process: a new one would
    number its collective instances from the start again, and the gathers
    of IndexedSlices (shapes that vary per step) would meet an earlier
    job's instances of other shapes."""
    if not _strategies:
        _strategies.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _strategies[0]


def main(replicas, kind, fused, skip, save_to=None, load_from=None):
    fused = json.loads(fused)
    skip = skip == "skip"
    strategy = mirrored() if replicas == 2 else None
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    rng = np.random.RandomState(0)
    x = rng.standard_normal((128, 6)).astype("float32")
    y = np.stack([x.sum(1), x[:, 0] - x[:, 1]], 1).astype("float32")
    if skip:
        y[70] = np.nan  # poisons exactly one global batch of 32
    embedding = kind.startswith("embedding")
    if embedding:
        # token ids, token 7 in every example: duplicate indices within and
        # across the replicas' halves of a batch
        x = rng.randint(0, 300, (128, 5)).astype("int32")
        x[:, 0] = 7
        y = np.stack([x.sum(1) / 750.0, x[:, 1] / 300.0], 1).astype("float32")
    with scope:
        if load_from:
            model = keras.models.load_model(load_from)
            model.optimizer.fused = fused
        else:
            keras.utils.set_random_seed(0)
            layers = ([keras.Input((5,), dtype="int32"), keras.layers.Embedding(300, 8),
                       keras.layers.GlobalAveragePooling1D()] if embedding
                      else [keras.Input((6,)), keras.layers.Dense(16, activation="tanh")])
            model = keras.Sequential(layers + [keras.layers.Dense(2)])
            model.compile(optimizer=build(kind, fused, skip), loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    if save_to:
        model.save(save_to)
    opt = model.optimizer
    print(json.dumps({
        "weights": [w.numpy().tolist() for w in model.weights],
        "slots": [v.numpy().tolist() for v in opt.variables],
        "iterations": int(opt.iterations.numpy()),
        "skipped": int(opt.skipped_steps.numpy()),
        "path": opt.last_path.name,
        "reason": opt.last_path.reason,
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
    }))


def recorded_norms(fused):
    """One step of a custom loop under the strategy on a global batch of 16
    (8 per replica): the wrapper's recorded norms, their names, the path,
    and the per-variable L2 norms (NumPy) of the global batch's gradient
    taken with a GradientTape in this process without any strategy."""
    fused = json.loads(fused)
    rng = np.random.RandomState(0)
    x = rng.standard_normal((16, 5)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")

    def make_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                                 keras.layers.Dense(1)])

    def loss_fn(model, x, y):
        return tf.reduce_sum(tf.square(model(x) - y))

    reference = make_model()
    with tf.GradientTape() as tape:
        loss = loss_fn(reference, x, y)
    grads = tape.gradient(loss, reference.trainable_variables)
    expected = [float(np.sqrt(np.sum(np.square(g.numpy().astype(np.float64)))))
                for g in grads]

    strategy = mirrored()
    with strategy.scope():
        model = make_model()
        opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.1), fused=fused)
        opt.build(model.trainable_variables)
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16))

    @tf.function
    def step(xb, yb):
        def replica(xr, yr):
            with tf.GradientTape() as tape:
                loss = loss_fn(model, xr, yr)
            opt.apply(tape.gradient(loss, model.trainable_variables),
                      model.trainable_variables)
        strategy.run(replica, args=(xb, yb))

    for xb, yb in data:
        step(xb, yb)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "norms": [float(v) for v in opt.gradient_norms.numpy()],
        "names": opt.gradient_norm_names,
        "expected": expected,
        "path": opt.last_path.name,
    }))


def legacy_keras():
    """With TF_USE_LEGACY_KERAS=1 tf.keras is tf_keras, and its optimizers
    wrap and train with model.fit, on the fused path, under the strategy of
    2 CPUs as on one replica (the norm is that of the summed gradient)."""
    import tf_keras

    from normopt.tf_keras import NormalizedOptimizer

    x = np.random.RandomState(0).randn(16, 3).astype("float32")
    y = np.random.RandomState(1).randn(16, 2).astype("float32")

    def train(strategy):
        with strategy.scope():
            tf.keras.utils.set_random_seed(0)
            m = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,))])
            opt = NormalizedOptimizer(tf.keras.optimizers.legacy.SGD(0.1, momentum=0.9))
            m.compile(opt, "mse")
        m.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        return ([w.tolist() for w in m.get_weights()], opt.last_path.name,
                int(opt.iterations.numpy()), strategy.num_replicas_in_sync)

    two = train(mirrored())
    one = train(tf.distribute.get_strategy())
    print(json.dumps(dict(
        WITHOUT_TF_KERAS,
        tf_keras_is_tf_keras=tf.keras.optimizers.legacy.SGD is tf_keras.optimizers.legacy.SGD,
        two=two, one=one)))


if __name__ == "__main__":
    for replicas, *job in json.loads(sys.argv[1]):
        if job[0] == "recorded_norms":
            recorded_norms(job[1])
        elif job[0] == "legacy_keras":
            legacy_keras()
        else:
            main(int(replicas), *[arg or None for arg in job])
        sys.stdout.flush()
