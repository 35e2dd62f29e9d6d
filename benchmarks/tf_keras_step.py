"""The tf_keras (Keras 2) wrapper's step: fused vs pure-TF graph vs plain.

    .venv/bin/python benchmarks/tf_keras_step.py [--repeats 20] [--sets big]
                                                 [--inners adam,legacy_adam] [--json PATH]

normopt.tf_keras.NormalizedOptimizer(X, "l2") for tf_keras inner optimizers
X, new-style and legacy, on the step benchmark's variable sets
(normopt.bench.cases; "big" is one 4096 x 4096 variable). Per (set, X) three
calls, each one optimizer step on fixed gradients inside a tf.function, are
timed interleaved in the same run (normopt.bench.timing):

    plain     the plain tf_keras optimizer X (no normalization)
    tf_graph  the wrapper with fused=False: norms and scaling in TF, then X's
              own update
    fused     the wrapper with fused=None: the compiled op (last_path checked)

and the target is checked: fused >= 3x the same wrapper's pure-TF graph step.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from normopt.bench import cases, environment, report, timing  # noqa: E402

INNERS = {
    "adam": lambda k: k.optimizers.Adam(1e-3),
    "legacy_adam": lambda k: k.optimizers.legacy.Adam(1e-3),
    "sgd_nesterov": lambda k: k.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
    "legacy_sgd_momentum": lambda k: k.optimizers.legacy.SGD(0.01, momentum=0.9),
}
PATHS = ("plain", "tf_graph", "fused")


def _step(opt, grads, variables):
    import tensorflow as tf

    @tf.function
    def step():
        opt.apply_gradients(zip(grads, variables))
        return opt.iterations

    return lambda: step().numpy()


def measure(set_name, inner, repeats, warmup, seed=0):
    """{path: timing summary (and the path that ran)} of one (set, inner)."""
    import tensorflow as tf
    import tf_keras

    from normopt.tf_keras import NormalizedOptimizer

    shapes = cases.step_shapes(set_name)
    rng = np.random.default_rng(seed)
    grads = [tf.constant(rng.standard_normal(s, dtype=np.float32) * 1e-2) for s in shapes]
    initial = [rng.standard_normal(s, dtype=np.float32) * 0.05 for s in shapes]
    calls, opts = {}, {}
    for path in PATHS:
        base = INNERS[inner](tf_keras)
        opt = base if path == "plain" else NormalizedOptimizer(
            base, "l2", fused=False if path == "tf_graph" else None)
        call = _step(opt, grads, [tf.Variable(v) for v in initial])
        call()  # trace, build slots
        calls[path], opts[path] = call, opt
    stats = timing.time_calls_interleaved(calls, repeats, warmup)
    for path in PATHS[1:]:
        stats[path]["path_ran"] = opts[path].last_path.name
    return {"set": set_name, "inner": inner, "params": cases.parameter_count(shapes),
            "times": stats}


def add_ratios(row):
    """Adds fused_vs_tf_graph and fused_vs_plain (ratios of medians) to a
    `measure` row; returns it."""
    m = {p: row["times"][p]["median_s"] for p in PATHS}
    row["fused_vs_tf_graph"] = m["tf_graph"] / m["fused"]
    row["fused_vs_plain"] = m["plain"] / m["fused"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sets", default="big")
    parser.add_argument("--inners", default=",".join(INNERS))
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    rows = [measure(s, i, args.repeats, args.warmup)
            for s in args.sets.split(",") if s for i in args.inners.split(",") if i]
    t = report.format_time
    print(f"{'set':10} {'inner X':20} {'plain X':>10} {'pure-TF graph':>14} {'fused':>10} "
          f"{'fused/graph':>12} {'fused/plain':>12}  path")
    found = []
    for r in rows:
        m = {p: r["times"][p]["median_s"] for p in PATHS}
        ratio = add_ratios(r)["fused_vs_tf_graph"]
        print(f"{r['set']:10} {r['inner']:20} {t(m['plain']):>10} {t(m['tf_graph']):>14} "
              f"{t(m['fused']):>10} {ratio:>11.2f}x {r['fused_vs_plain']:>11.2f}x  "
              f"{r['times']['fused']['path_ran']}")
        found.append((f"{r['inner']}: fused >= 3x the pure-TF graph step on {r['set']}",
                      ratio >= 3 and r["times"]["fused"]["path_ran"] == "fused", ratio))
    print("\ntargets:")
    for name, met, value in found:
        print(f"  {'MET   ' if met else 'MISSED'} {name} (measured {value:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment.collect(), "rows": rows, "targets": found},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
