"""The step-time table: fused vs pure TF vs the plain Keras optimizer.

    .venv/bin/python benchmarks/step_ratios.py [--repeats 30] [--inners adam,lion]
                                               [--sets big,eight_1k] [--json PATH]

NormalizedOptimizer(X, "l2"), for every inner optimizer X with a fused rule
(normopt.bench.inners.STEP_INNERS), on one 4096x4096 variable, eight
1024x1024 and the 122-variable MLP set. All four paths of a (set, X) are
timed interleaved in the same run (see normopt.bench.step_bench); ratios are
of median step times. Achieved GB/s counts the bytes a step moves per fp32
parameter (normopt.bench.inners.bytes_per_param) and is compared with a copy
bandwidth measured before and after the run. Then it checks the targets and
says which were met: for every X, fused >= 3x the pure-TF graph path and
faster than plain X on the large sets; for Adam also the XLA, MLP and
bandwidth targets of the first step benchmark.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as a script from a checkout: import normopt from it even when the
# package is not installed (or is being reinstalled) in the environment.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from normopt.bench import environment, report, step_bench, timing  # noqa: E402

SETS = ("big", "eight_1k", "mlp")
LARGE = ("big", "eight_1k")


def measure(sets, inners, repeats, warmup, progress=True):
    probes = [timing.memory_bandwidth()]
    result = step_bench.run(
        sets, inners, ["normalized"], step_bench.PATHS, "l2", repeats, warmup,
        progress=progress,
    )
    probes.append(timing.memory_bandwidth())
    bw = timing.reference_bandwidth(probes)
    timing.add_percent_of_bandwidth(result["cases"], bw)
    return result, {"bytes_per_s": bw, "probes": probes}


def by_set(result):
    out = {}
    for c in result["cases"]:
        if c["status"] == "ok":
            out.setdefault((c["set"], c["inner"]), {})[c["path"]] = c
    return out


def ratio_rows(result):
    """Per (set, inner): medians of each path and the fused ratios (None if missing)."""
    rows = []
    for (set_name, inner), paths in by_set(result).items():
        t = {p: c["time"]["median_s"] for p, c in paths.items()}
        fused = paths.get("fused")
        row = {"set": set_name, "inner": inner, "times_s": t,
               "bytes_per_param": fused["bytes_per_param"] if fused else None}
        if fused:
            row.update(
                fused_vs_tf_graph=t["tf_graph"] / t["fused"] if "tf_graph" in t else None,
                fused_vs_tf_xla=t["tf_xla"] / t["fused"] if "tf_xla" in t else None,
                fused_vs_plain=t["plain"] / t["fused"] if "plain" in t else None,
                fused_gb_per_s=fused["gb_per_s"],
                fused_pct_bandwidth=fused["pct_bandwidth"],
                fused_path_ran=fused["path_ran"],
            )
        rows.append(row)
    return rows


def targets(rows):
    """[(target, met, measured)] for the targets on the sets and inners measured."""
    found = []
    for r in rows:
        if r["set"] in LARGE:
            v = r.get("fused_vs_tf_graph")
            found.append((f"{r['inner']}: >= 3x over pure-TF graph on {r['set']}",
                          v is not None and v >= 3, v))
            v = r.get("fused_vs_plain")
            found.append((f"{r['inner']}: faster than plain Keras {r['inner']} on {r['set']}",
                          v is not None and v > 1, v))
    get = {r["set"]: r for r in rows if r["inner"] == "adam"}

    def fused_value(set_name, key):
        return get.get(set_name, {}).get(key)

    if "big" in get:
        v = fused_value("big", "fused_vs_tf_graph")
        found.append((">= 3x over pure-TF graph on 4096^2", v is not None and v >= 3, v))
        v = fused_value("big", "fused_vs_tf_xla")
        found.append(("faster than XLA on 4096^2", v is not None and v > 1, v))
    if "mlp" in get:
        v = fused_value("mlp", "fused_vs_tf_graph")
        found.append((">= 6x over pure-TF graph on the MLP set", v is not None and v >= 6, v))
    if "mlp" in get:
        v = fused_value("mlp", "fused_vs_plain")
        found.append(("adam: faster than plain Keras adam on mlp", v is not None and v > 1, v))
    for s in LARGE:
        v = fused_value(s, "fused_pct_bandwidth")
        if s in get:
            found.append((f"adam: >= 70% of measured bandwidth on {s}", v is not None and v >= 70, v))
    return found


def format_table(rows, bandwidth):
    t = report.format_time
    header = ["set", "inner X", "plain X", "pure-TF graph", "XLA", "fused",
              "fused/graph", "fused/XLA", "fused/plain", "fused GB/s (B/param)", "% of bw"]
    lines = []
    for r in rows:
        times = r["times_s"]
        cells = [r["set"], r["inner"]]
        cells += [t(times[p]) if p in times else "n/a" for p in step_bench.PATHS]
        for key in ("fused_vs_tf_graph", "fused_vs_tf_xla", "fused_vs_plain"):
            cells.append(f"{r[key]:.2f}x" if r.get(key) else "n/a")
        cells.append(f"{r['fused_gb_per_s']:.1f} ({r['bytes_per_param']})"
                     if "fused_gb_per_s" in r else "n/a")
        cells.append(f"{r['fused_pct_bandwidth']:.0f}%" if "fused_pct_bandwidth" in r else "n/a")
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    text = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
    text.append(f"bandwidth (NumPy 2-thread copy, best of before/after): "
                f"{bandwidth['bytes_per_s'] / 1e9:.1f} GB/s")
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--inners", default=",".join(step_bench.INNERS))
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    inners = [i for i in args.inners.split(",") if i]
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    result, bandwidth = measure(sets, inners, args.repeats, args.warmup,
                                not args.no_progress)
    rows = ratio_rows(result)
    print(format_table(rows, bandwidth))
    for c in result["cases"]:
        if c["status"] != "ok":
            print(f"unavailable: {c['path']}: {c['reason']}")
    found = targets(rows)
    print("\ntargets:")
    for name, met, value in found:
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"  {'MET   ' if met else 'MISSED'} {name} (measured {shown})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment.collect(), "bandwidth": bandwidth,
                       "rows": rows, "targets": found, "cases": result["cases"]},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
