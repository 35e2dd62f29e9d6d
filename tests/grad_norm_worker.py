"""Subprocess of test_gradient_norms: recorded norms under MirroredStrategy.

Two logical CPUs, one replica each; one step on a global batch of 16 (8 per
replica). Prints JSON: the wrapper's recorded norms, their names, the path,
and the per-variable L2 norms (NumPy) of the global batch's gradient taken
with a GradientTape in this process without any strategy.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import normopt  # noqa: E402


def make_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(1)])


def loss_fn(model, x, y):
    return tf.reduce_sum(tf.square(model(x) - y))


def main(fused):
    fused = {"true": True, "false": False, "null": None}[fused]
    rng = np.random.RandomState(0)
    x = rng.standard_normal((16, 5)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")

    reference = make_model()
    with tf.GradientTape() as tape:
        loss = loss_fn(reference, x, y)
    grads = tape.gradient(loss, reference.trainable_variables)
    expected = [float(np.sqrt(np.sum(np.square(g.numpy().astype(np.float64)))))
                for g in grads]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
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


if __name__ == "__main__":
    main(sys.argv[1])
