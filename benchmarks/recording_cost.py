"""What recording the gradient norms costs a fused step (issue: gradient norms
for free; target <= 1.02x).

One process times the wrapper's fused step (NormalizedOptimizer(Adam), l2,
tf.function) on one variable set and prints its median. `--no-record` makes
the wrapper record nothing (its `_record_gradient_norms` becomes a no-op): the
step without recording. The op's own share of the work (the sum of squares
gathered beside the norm's statistics, one [N] output) cannot be switched
off, so the fair "without" is the library of the commit before the op
gained that output, run with --no-record from a checkout of that commit:

    python benchmarks/recording_cost.py --pairs 4 --set big \\
        --baseline-tree /path/to/checkout-before

runs, alternating, the baseline tree's step with nothing recorded and this
tree's step with recording, each in its own process (a fresh thread pool and
allocator each time), and prints every pair's ratio and the median ratio.
Process-to-process noise on a shared machine is large (+-20%), so

    python benchmarks/recording_cost.py --interleaved --set big --norm max

times, in one process with samples interleaved, the step with recording
against the same step with the wrapper recording nothing (separate
variables, same library): the wrapper's share of the cost. With `l2` the
op's share is nil (the norm gathers the sum of squares anyway); with `max`
it is the extra sum-of-squares lanes of the statistics pass.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def make_step(set_name, record, norm="l2"):
    """A compiled fused step (NormalizedOptimizer(Adam), `norm`) on fresh
    variables of `set_name`, recording the gradient norms or not."""
    import numpy as np
    import tensorflow as tf

    import keras
    import normopt
    from normopt.bench.cases import step_shapes

    rng = np.random.default_rng(0)
    shapes = step_shapes(set_name)
    variables = [keras.Variable(rng.standard_normal(s).astype("float32") * 0.1) for s in shapes]
    grads = [tf.constant(rng.standard_normal(s).astype("float32")) for s in shapes]
    opt = normopt.NormalizedOptimizer(keras.optimizers.Adam(1e-3), norm, fused=True)
    if not record:
        opt._record_gradient_norms = lambda *args, **kw: None
    opt.build(variables)
    step = tf.function(lambda: opt.apply(grads, variables))
    step()
    assert opt.last_path.name == "fused", opt.last_path
    return lambda: step() and None


def interleaved(set_name, samples, warmup, norm):
    """Median step times with recording, and without (the mean of two
    non-recording steps built before and after it: the order in which the
    steps' variables are allocated shows in their times), sampled in turn."""
    from normopt.bench import timing

    calls = {"without": make_step(set_name, False, norm), "with": make_step(set_name, True, norm),
             "without_2": make_step(set_name, False, norm)}
    stats = timing.time_calls_interleaved(calls, samples, warmup)
    without = (stats["without"]["median_s"] + stats["without_2"]["median_s"]) / 2
    return stats["with"]["median_s"], without


def time_step(set_name, samples, warmup, record):
    step = make_step(set_name, record)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_process(tree, set_name, samples, warmup, record):
    cmd = [sys.executable, os.path.join(HERE, "recording_cost.py"), "--set", set_name,
           "--samples", str(samples), "--warmup", str(warmup), "--json"]
    if not record:
        cmd.append("--no-record")
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="big", help="variable set (normopt.bench.cases)")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-record", action="store_true",
                        help="time the step with the wrapper recording nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--baseline-tree",
                        help="a checkout of the commit before the change: alternate "
                             "its step (nothing recorded) with this tree's")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--interleaved", action="store_true",
                        help="one process: with and without recording, samples interleaved")
    parser.add_argument("--norm", default="l2", help="the wrapper's norm (--interleaved)")
    args = parser.parse_args(argv)
    if args.interleaved:
        with_s, without_s = interleaved(args.set, args.samples, args.warmup, args.norm)
        print(f"{args.set} {args.norm}: with recording {with_s * 1e3:.3f} ms, without "
              f"{without_s * 1e3:.3f} ms, ratio {with_s / without_s:.3f}")
        return
    if args.baseline_tree:
        this_tree = os.path.dirname(HERE)
        ratios = []
        for k in range(args.pairs):
            before = one_process(args.baseline_tree, args.set, args.samples, args.warmup, False)
            after = one_process(this_tree, args.set, args.samples, args.warmup, True)
            ratios.append(after / before)
            print(f"{args.set} pair {k + 1}/{args.pairs}: without {before * 1e3:.3f} ms, "
                  f"with recording {after * 1e3:.3f} ms, ratio {after / before:.3f}",
                  flush=True)
        print(f"{args.set}: median ratio {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
        return
    median = time_step(args.set, args.samples, args.warmup, not args.no_record)
    if args.json:
        print(json.dumps({"set": args.set, "record": not args.no_record, "median_s": median}))
    else:
        print(f"{args.set}: median fused step {median * 1e3:.3f} ms "
              f"({'with' if not args.no_record else 'without'} recording)")


if __name__ == "__main__":
    main()
