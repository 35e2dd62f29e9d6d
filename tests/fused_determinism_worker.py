"""Subprocess of test_fused_determinism.py: one fused step with a given
number of intra-op threads; writes every result's raw bytes to an .npz file.

    python fused_determinism_worker.py THREADS OUT.npz
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(threads, out_path):
    import numpy as np
    import tensorflow as tf

    # Must precede any op: it sizes the pool the kernels shard over.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import keras
    import normopt
    from normopt.ops import raw_ops as fused

    rng = np.random.RandomState(1234)
    # 2M + 3 elements: 129 chunks, so both threads get many of them.
    shapes = [(2_000_003,), (1000, 517), (33,), ()]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [tf.constant(rng.standard_normal(s).astype(np.float32) * 3 + 0.5)
             for s in shapes]
    results = {}
    for kind in ("l2", "std", "l1_l2", "min_max"):
        results[f"norms_{kind}"] = fused.norms(grads, kind, 1e-7).numpy()
    for i, g in enumerate(fused.scale(grads, "std", "clip", 2.0, 1e-7)):
        results[f"scale_{i}"] = g.numpy()

    variables = [keras.Variable(w) for w in init]
    opt = normopt.NormalizedOptimizer(
        keras.optimizers.AdamW(0.01, weight_decay=0.01, amsgrad=True),
        normalization="std", fused=True)
    step = tf.function(lambda gs: opt.apply(gs, variables))
    for _ in range(2):
        step(grads)
    if opt.last_path.name != "fused":
        raise SystemExit(f"the fused path did not run: {opt.last_path}")
    for i, v in enumerate(variables):
        results[f"var_{i}"] = v.numpy()
    for i, s in enumerate(opt.inner_optimizer.variables):
        results[f"slot_{i}"] = np.asarray(s.numpy())

    # A trust-ratio rule: its per-tensor sums are a second reduction.
    variables = [keras.Variable(w) for w in init]
    opt = normopt.ClippedOptimizer(keras.optimizers.Lamb(0.01, weight_decay=0.01),
                                   normalization="l2", clipnorm=1.0, fused=True)
    step = tf.function(lambda gs: opt.apply(gs, variables))
    for _ in range(2):
        step(grads)
    if opt.last_path.name != "fused":
        raise SystemExit(f"the fused path did not run for Lamb: {opt.last_path}")
    for i, v in enumerate(variables):
        results[f"lamb_var_{i}"] = v.numpy()
    for i, s in enumerate(opt.inner_optimizer.variables):
        results[f"lamb_slot_{i}"] = np.asarray(s.numpy())

    # A sparse gradient, its rows read by the op: 60000 x 40, 147 chunks.
    table = keras.Variable(rng.standard_normal((60000, 40)).astype(np.float32))
    rows = rng.randint(0, 60000, 5000)
    slices = tf.IndexedSlices(tf.constant(rng.standard_normal((5000, 40)).astype(np.float32)),
                              tf.constant(rows), tf.constant([60000, 40]))
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(0.01), normalization="std",
                                      fused=True)
    step = tf.function(lambda g: opt.apply([g], [table]))
    for _ in range(2):
        step(slices)
    if opt.last_path.name != "fused":
        raise SystemExit(f"the fused path did not run for rows: {opt.last_path}")
    results["rows_var"] = table.numpy()
    for i, s in enumerate(opt.inner_optimizer.variables):
        results[f"rows_slot_{i}"] = np.asarray(s.numpy())
    results["threads"] = np.array(
        tf.config.threading.get_intra_op_parallelism_threads())
    np.savez(out_path, **results)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
