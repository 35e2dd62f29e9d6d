"""One worker of a 2-worker MultiWorkerMirroredStrategy run, or one process.

    multiworker_worker.py TASK SCENARIO...

TASK 0 or 1: a worker of the cluster TF_CONFIG describes (2 workers on
127.0.0.1, ports picked free by the caller); TASK -1: the same training in
one process, no strategy, on the same global batches. Prints one JSON line
per scenario, in order, as each finishes. Used by test_multiworker.py: a
process can create MultiWorkerMirroredStrategy once, so one launch of the
cluster runs every scenario in turn (the last one, `kill`, ends it: one
more step of the last custom loop, or a loop of its own when it runs
alone). The test runs TASK -1's scenarios in its own process (`run`), which
has TensorFlow imported already, instead of a third launch.

Each global batch of GLOBAL_BATCH rows is split in two halves, one per
worker; the halves differ in scale by 10x, so normalizing each worker's
gradient before the cross-worker sum gives a visibly different step from
normalizing the sum (scenario `sgd_per_worker_norms`, one process only,
computes that wrong result for the test to tell them apart).
"""

import contextlib
import json
import os
import signal
import sys
import time
import traceback

STARTED = time.monotonic()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if __name__ == "__main__":  # a worker; imported by the test, TF is set up there
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

import keras  # noqa: E402

import normopt  # noqa: E402
from normopt.ops.tf_backend import strategy_name  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 6
NAN_STEP = 3  # worker 1's half of this global batch has a NaN target
KILL_STEP = 3  # scenario `kill`: worker 1 kills itself (SIGKILL) here
COLLECTIVE_TIMEOUT_S = float(os.environ.get("NORMOPT_MW_TIMEOUT", "30"))

# name: (optimizer kind, fused, skip_nonfinite)
SCENARIOS = {
    "adam_tf": ("normalized_adam", False, True),
    "adam_fused": ("normalized_adam", True, True),
    "adam_auto": ("normalized_adam", None, False),
    "clip_tf": ("clipped_nesterov", False, True),
    "clip_fused": ("clipped_nesterov", True, True),
    "sgd_fused": ("normalized_sgd", True, False),
}


def data(poison):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((GLOBAL_BATCH * STEPS, 6)).astype("float32")
    half = GLOBAL_BATCH // 2
    for b in range(STEPS):
        x[b * GLOBAL_BATCH + half:(b + 1) * GLOBAL_BATCH] *= 10.0
    y = np.stack([x.sum(1), x[:, 0] - x[:, 1]], 1).astype("float32")
    if poison:
        y[NAN_STEP * GLOBAL_BATCH + half + 1, 0] = np.nan
    return x, y


def shard(array, step, task):
    """Rows of global batch `step` that worker `task` sees (-1: all)."""
    start, half = step * GLOBAL_BATCH, GLOBAL_BATCH // 2
    if task < 0:
        return array[start:start + GLOBAL_BATCH]
    return array[start + task * half:start + (task + 1) * half]


def build_optimizer(kind, fused, skip):
    if kind == "normalized_adam":
        return normopt.NormalizedOptimizer(
            keras.optimizers.Adam(1e-2), "l2", fused=fused, skip_nonfinite=skip)
    if kind == "clipped_nesterov":
        return normopt.ClippedOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), "std",
            clipnorm=0.05, fused=fused, skip_nonfinite=skip)
    return normopt.NormalizedOptimizer(
        keras.optimizers.SGD(0.1), "l2", fused=fused, skip_nonfinite=skip)


def build_model():
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(2),
    ])
    rng = np.random.RandomState(1)
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def loss_fn(model, xb, yb):
    """Sum over this replica's rows / global batch: the replicas' gradients
    sum to the gradient of the global batch's mean loss."""
    per_example = tf.reduce_mean(tf.square(model(xb, training=True) - yb), -1)
    return tf.reduce_sum(per_example) / GLOBAL_BATCH


def report(name, model, opt, **extra):
    out = {
        "scenario": name,
        "weights": [w.numpy().tolist() for w in model.weights],
        "slots": [v.numpy().tolist() for v in opt.variables],
        "iterations": int(opt.iterations.numpy()),
        "skipped": int(getattr(opt, "skipped_steps", tf.constant(0)).numpy()),
        "path": opt.last_path.name if getattr(opt, "last_path", None) else None,
        "reason": opt.last_path.reason if getattr(opt, "last_path", None) else None,
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


def custom_loop(strategy, task, name, kind, fused, skip, kill_at=None):
    """The README's recipe: strategy.run of a step that calls opt.apply."""
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = build_model()
        opt = build_optimizer(kind, fused, skip)
        opt.build(model.trainable_variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, xb, yb)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)

    @tf.function
    def step(xb, yb):
        if strategy:
            strategy.run(replica_step, args=(xb, yb))
        else:
            replica_step(xb, yb)

    x, y = data(poison=skip)

    def run_step(s):
        step(tf.constant(shard(x, s, task)), tf.constant(shard(y, s, task)))
        model.weights[0].numpy()

    _last_step[:] = [run_step]
    for s in range(STEPS):
        if kill_at is not None and s == kill_at:
            kill_one(task, name, lambda: run_step(s))
            return
        run_step(s)
    report(name, model, opt,
           replicas=strategy.num_replicas_in_sync if strategy else 1,
           strategy=strategy_name(strategy) if strategy else None)


# The step of the last custom loop run in this process (the `kill` scenario
# goes on training with it: no trace of its own).
_last_step = []


def kill_one(task, name, run_step):
    """Worker 1 kills itself (SIGKILL); worker 0 runs `run_step` (one more
    training step, whose collectives wait for worker 1) and reports the
    error it gets and how long it took."""
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    started = time.monotonic()
    try:
        run_step()
    except Exception as exc:  # what the survivor sees
        print(json.dumps({
            "scenario": name,
            "error": type(exc).__name__,
            "message": str(exc)[:2000],
            "seconds": time.monotonic() - started,
        }), flush=True)
        return
    print(json.dumps({"scenario": name, "error": None,
                      "seconds": time.monotonic() - started}), flush=True)


def per_worker_norms(name):
    """The wrong result: each half's gradient normalized before the sum."""
    model = build_model()
    opt = keras.optimizers.SGD(0.1)
    opt.build(model.trainable_variables)
    x, y = data(poison=False)
    eps = keras.config.epsilon()
    for s in range(STEPS):
        total = None
        for task in (0, 1):
            with tf.GradientTape() as tape:
                loss = loss_fn(model, shard(x, s, task), shard(y, s, task))
            grads = tape.gradient(loss, model.trainable_variables)
            grads = [g / (tf.norm(g) + eps) for g in grads]
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
        opt.apply([g / 2 for g in total], model.trainable_variables)
    print(json.dumps({"scenario": name,
                      "weights": [w.numpy().tolist() for w in model.weights]}),
          flush=True)


def fit(strategy, task, name):
    """model.fit under the strategy (tensorflow/tensorflow#72388)."""
    x, y = data(poison=False)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    try:
        with scope:
            model = build_model()
            model.compile(optimizer=build_optimizer("normalized_sgd", None, False),
                          loss="mse")
        if strategy:
            rows = np.concatenate([shard(np.arange(len(x)), s, task)
                                   for s in range(STEPS)])
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.OFF)
            ds = tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(
                GLOBAL_BATCH // 2).with_options(options)
            model.fit(ds, epochs=1, verbose=0)
        else:
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
                      verbose=0)
    except Exception as exc:
        print(json.dumps({"scenario": name, "error": type(exc).__name__,
                          "message": str(exc)[:2000]}), flush=True)
        return
    report(name, model, model.optimizer, error=None)


def main(task, names):
    strategy = None
    if task >= 0:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=COLLECTIVE_TIMEOUT_S)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=options)
    print(f"task {task}: strategy up at {time.monotonic() - STARTED:.1f}s",
          file=sys.stderr, flush=True)
    run(strategy, task, names)
    sys.stdout.flush()
    # Skip interpreter teardown: with a peer gone, TF's collective executor
    # and gRPC threads can block exit.
    os._exit(0)


def run(strategy, task, names):
    """Runs the scenarios `names` in turn, a JSON line each on stdout; a
    crash under the strategy ends the process (the cluster's state is
    unknown)."""
    for name in names:
        print(f"task {task}: {name} at {time.monotonic() - STARTED:.1f}s",
              file=sys.stderr, flush=True)
        try:
            if name == "sgd_per_worker_norms":
                per_worker_norms(name)
            elif name == "fit":
                fit(strategy, task, name)
            elif name == "kill" and _last_step:  # the last loop's training goes on
                kill_one(task, name, lambda: _last_step[0](0))
            elif name == "kill":
                custom_loop(strategy, task, name, "normalized_adam", True, False,
                            kill_at=KILL_STEP)
            else:
                custom_loop(strategy, task, name, *SCENARIOS[name])
        except Exception as exc:
            print(json.dumps({"scenario": name, "crash": type(exc).__name__,
                              "message": traceback.format_exc()[-3000:]}),
                  flush=True)
            if strategy:  # the cluster's state is unknown: stop
                sys.exit(3)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
