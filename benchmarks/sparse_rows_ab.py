"""The fused step on an embedding table's IndexedSlices gradient: the op
reading the rows (the fused path) against the op given the densified
gradient (tf_backend.dense_gradient, what the fused path did before),
interleaved, in one run.

    python benchmarks/sparse_rows_ab.py [adam|sgd_momentum|rmsprop]

Prints the median and quartiles per variant and dense / rows.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

import normopt
from normopt.ops import tf_backend
from sparse_table import INNERS, WIDTH, random_gradient, time_steps

ROWS = 100_000


def make_step(inner_name, variant, rng):
    """(optimizer, traced step) for `variant` "rows" or "dense"."""
    opt = normopt.NormalizedOptimizer(INNERS[inner_name](), "l2")
    table = keras.Variable(rng.normal(size=(ROWS, WIDTH)).astype("float32"))
    opt.build([table])
    rows_gradient = tf_backend.op_gradient

    @tf.function
    def step(values, indices):
        # Traced once: the variant decides what the op is given.
        if variant == "dense":
            tf_backend.op_gradient = lambda g, v, e: tf_backend.dense_gradient(g, v)
        try:
            opt.apply([tf.IndexedSlices(values, indices, tf.constant([ROWS, WIDTH]))], [table])
        finally:
            tf_backend.op_gradient = rows_gradient

    return opt, step


def main(inner_name="adam", repeats=30, warmup=5):
    rng = np.random.default_rng(0)
    values, indices = random_gradient(rng, ROWS)
    runs = {v: make_step(inner_name, v, rng) for v in ("rows", "dense")}
    stats = time_steps({v: step for v, (_, step) in runs.items()},
                       values, indices, repeats, warmup, inner_name)
    for opt, _ in runs.values():
        assert opt.last_path.name == "fused", opt.last_path.reason
    print(f"dense / rows = {stats['dense']['median_s'] / stats['rows']['median_s']:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:2])
