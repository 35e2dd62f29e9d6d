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

import numpy as np

import normopt
from sparse_table import INNERS, random_gradient, table_step, time_steps


def make_step(inner_name, rows, fused, rng):
    """(optimizer, traced step) of NormalizedOptimizer on a fresh table."""
    opt = normopt.NormalizedOptimizer(INNERS[inner_name](), "l2", fused=fused)
    return opt, table_step(opt, rows, rng)[1]


def main(inner_name="sgd", rows="100000", repeats=30, warmup=5):
    rows = int(rows)
    rng = np.random.default_rng(0)
    values, indices = random_gradient(rng, rows)
    runs = {path: make_step(inner_name, rows, path == "fused", rng) for path in ("fused", "tf")}
    stats = time_steps({path: step for path, (_, step) in runs.items()},
                       values, indices, repeats, warmup, f"{inner_name} {rows} rows")
    assert runs["fused"][0].last_path.name == "fused", runs["fused"][0].last_path.reason
    print(f"tf / fused = {stats['tf']['median_s'] / stats['fused']['median_s']:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:3])
