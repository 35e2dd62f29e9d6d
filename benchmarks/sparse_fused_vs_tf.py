"""Normalized step on an embedding table's IndexedSlices gradient: the fused
path (the op reads the rows and their indices) against the pure-TF path
(fused=False), interleaved, in one run.

    python benchmarks/sparse_fused_vs_tf.py [sgd|adam] [ROWS]

A table of ROWS x 64 float32 (default 100,000), 2048 random indices, one
`tf.function` step per call. Prints the median and quartiles per path and
tf / fused. Under plain SGD both paths touch only the indexed rows, so the
ratio shows what the fused step costs per table row.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

import normopt

WIDTH, INDICES = 64, 2048
INNERS = {
    "sgd": lambda: keras.optimizers.SGD(1e-2),
    "adam": lambda: keras.optimizers.Adam(1e-3),
}


def make_step(inner_name, rows, fused, rng):
    """(optimizer, traced step) of NormalizedOptimizer on a fresh table."""
    opt = normopt.NormalizedOptimizer(INNERS[inner_name](), "l2", fused=fused)
    table = keras.Variable(rng.normal(size=(rows, WIDTH)).astype("float32"))
    opt.build([table])
    shape = tf.constant([rows, WIDTH])
    step = tf.function(
        lambda values, indices: opt.apply([tf.IndexedSlices(values, indices, shape)], [table]))
    return opt, step


def main(inner_name="sgd", rows="100000", repeats=30, per_sample=10):
    rows = int(rows)
    rng = np.random.default_rng(0)
    values = tf.constant(rng.normal(size=(INDICES, WIDTH)).astype("float32"))
    indices = tf.constant(rng.integers(0, rows, INDICES).astype("int32"))
    runs = {path: make_step(inner_name, rows, path == "fused", rng) for path in ("fused", "tf")}
    for opt, step in runs.values():
        for _ in range(5):
            step(values, indices)
    assert runs["fused"][0].last_path.name == "fused", runs["fused"][0].last_path.reason
    times = {path: [] for path in runs}
    for _ in range(repeats):
        for path, (_, step) in runs.items():
            start = time.perf_counter()
            for _ in range(per_sample):
                step(values, indices)
            times[path].append((time.perf_counter() - start) / per_sample * 1e3)
    for path, ts in times.items():
        q1, q3 = np.percentile(ts, [25, 75])
        print(f"{inner_name} {rows} rows {path}: median {np.median(ts):.3f} ms [{q1:.3f}-{q3:.3f}]")
    print(f"tf / fused = {np.median(times['tf']) / np.median(times['fused']):.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:3])
