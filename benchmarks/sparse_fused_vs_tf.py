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

import keras
import numpy as np
import tensorflow as tf

import normopt
from normopt.bench import timing
from normopt.bench.report import format_spread

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


def main(inner_name="sgd", rows="100000", repeats=30, warmup=5):
    rows = int(rows)
    rng = np.random.default_rng(0)
    values = tf.constant(rng.normal(size=(INDICES, WIDTH)).astype("float32"))
    indices = tf.constant(rng.integers(0, rows, INDICES).astype("int32"))
    runs = {path: make_step(inner_name, rows, path == "fused", rng) for path in ("fused", "tf")}
    stats = timing.time_calls_interleaved(
        {path: (lambda step=step: step(values, indices)) for path, (_, step) in runs.items()},
        repeats, warmup)
    assert runs["fused"][0].last_path.name == "fused", runs["fused"][0].last_path.reason
    for path, summary in stats.items():
        print(f"{inner_name} {rows} rows {path}: {format_spread(summary)}")
    print(f"tf / fused = {stats['tf']['median_s'] / stats['fused']['median_s']:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:3])
