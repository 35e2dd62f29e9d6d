"""model.fit with keras.callbacks.BackupAndRestore, killed and resumed.

    fault_worker.py OUT_DIR JOB...

Each JOB is `PATH:MODE` with PATH `tf` or `fused` (the wrapper's
fused=False / fused=True) and MODE one of
    ref     train uninterrupted, no backup; write OUT_DIR/ref-PATH.npz
    kill    train with a backup in OUT_DIR/backup-PATH, SIGKILL this process
            in the middle of epoch KILL_EPOCH (never returns); when a kill
            job follows, it runs at that point instead, inside this one's
            model.fit, so that one SIGKILL stops both trainings mid-epoch
    resume  the same training, same backup: restores and finishes; write
            OUT_DIR/resumed-PATH.npz
Jobs run in order in this one process (test_faults.py chains them so that
two launches cover both paths).
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)

import keras  # noqa: E402

import normopt  # noqa: E402

EPOCHS = 3
BATCH = 16
BATCHES = 6
KILL_EPOCH, KILL_BATCH = 1, 3


class Epochs(keras.callbacks.Callback):
    """Records the epochs this process trained (a resumed run skips some)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


class KillAt(keras.callbacks.Callback):
    """SIGKILL at the start of batch KILL_BATCH of epoch KILL_EPOCH, or
    there `then()` (the next kill job, which never returns)."""

    epoch = 0

    def __init__(self, then=None):
        super().__init__()
        self.then = then

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == KILL_EPOCH and batch == KILL_BATCH:
            sys.stdout.flush()
            if self.then is not None:
                self.then()
            os.kill(os.getpid(), signal.SIGKILL)


def train(out_dir, path, mode, then=None):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((BATCH * BATCHES, 6)).astype("float32")
    y = np.stack([x.sum(1), x[:, 0] - x[:, 1]], 1).astype("float32")
    y[BATCH * 2 + 5, 1] = np.inf  # one skipped step per epoch
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(2),
    ])
    opt = normopt.NormalizedOptimizer(
        keras.optimizers.Adam(1e-2), "l2", fused=path == "fused",
        skip_nonfinite=True)
    model.compile(optimizer=opt, loss="mse")
    epochs = Epochs()
    callbacks = [epochs]
    if mode != "ref":
        # save_freq="epoch": Keras 3 resumes at the start of the epoch it
        # saved, so only epoch-end backups replay exactly.
        callbacks.append(keras.callbacks.BackupAndRestore(
            os.path.join(out_dir, f"backup-{path}")))
    if mode == "kill":
        callbacks.append(KillAt(then))
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=callbacks)
    assert opt.last_path.name == ("fused" if path == "fused" else "tf")
    name = "ref" if mode == "ref" else "resumed"
    with open(os.path.join(out_dir, f"{name}-{path}.json"), "w") as f:
        json.dump({"epochs": epochs.seen}, f)
    np.savez(
        os.path.join(out_dir, f"{name}-{path}.npz"),
        *[w.numpy() for w in model.weights],
        *[v.numpy() for v in opt.variables],
    )


def run(out_dir, jobs):
    if not jobs:
        return
    path, mode = jobs[0].split(":")
    if mode == "kill" and len(jobs) > 1 and jobs[1].endswith(":kill"):
        train(out_dir, path, mode, then=lambda: run(out_dir, jobs[1:]))
    else:
        train(out_dir, path, mode)
        run(out_dir, jobs[1:])


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
