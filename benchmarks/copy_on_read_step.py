"""The fused step on a table that TF keeps in copy-on-read mode, against the
same step on a table in the default mode, interleaved, in one run.

    python benchmarks/copy_on_read_step.py [adam|sgd_momentum]

NormalizedOptimizer(X, "l2") on a 100,000 x 64 float32 table, its gradient
IndexedSlices of 2048 random rows, one `tf.function` step per call. One
table is first looked up with tf.nn.embedding_lookup (a sparse access: from
then on TF copies it on every read), the other never. Prints the median and
quartiles per table and copy_on_read / default: about 1 when the op updates
a copy-on-read table in place, well above 1 when it copies it first.
"""

import sys

import numpy as np
import tensorflow as tf

import normopt
from sparse_table import INNERS, random_gradient, table_step, time_steps

ROWS = 100_000


def make_step(inner_name, copy_on_read, rng):
    """(optimizer, traced step) on a fresh table, put in copy-on-read mode or not."""
    opt = normopt.NormalizedOptimizer(INNERS[inner_name](), "l2")
    table, step = table_step(opt, ROWS, rng)
    if copy_on_read:
        tf.nn.embedding_lookup(table.value, tf.constant([0]))
    return opt, step


def main(inner_name="adam", repeats=30, warmup=5):
    rng = np.random.default_rng(0)
    values, indices = random_gradient(rng, ROWS)
    runs = {name: make_step(inner_name, name == "copy_on_read", rng)
            for name in ("default", "copy_on_read")}
    stats = time_steps({name: step for name, (_, step) in runs.items()},
                       values, indices, repeats, warmup, inner_name)
    for opt, _ in runs.values():
        assert opt.last_path.name == "fused", opt.last_path.reason
    ratio = stats["copy_on_read"]["median_s"] / stats["default"]["median_s"]
    print(f"copy_on_read / default = {ratio:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:2])
