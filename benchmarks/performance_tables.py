"""Markdown tables for docs/PERFORMANCE.md from the JSON of one set of runs.

    .venv/bin/python benchmarks/performance_tables.py \
        --ratios normopt-out/step_ratios.json \
        --step normopt-out/bench-step.json \
        --norms normopt-out/bench-norms.json [--norm-sizes 256,65536,1048576,16777216]

Prints the tables only (no reading of them): the step-ratio table of issue
[2/6] with its targets, the whole-step table and the norms table.
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from normopt.bench.report import format_time  # noqa: E402


def _md(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def ratios_section(data):
    rows = []
    for r in data["rows"]:
        t = r["times_s"]
        rows.append([
            r["set"], *(format_time(t[p]) if p in t else "n/a"
                        for p in ("plain", "tf_graph", "tf_xla", "fused")),
            *(f"{r[k]:.2f}x" if r.get(k) else "n/a"
              for k in ("fused_vs_tf_graph", "fused_vs_tf_xla", "fused_vs_plain")),
            f"{r['fused_gb_per_s']:.1f}" if "fused_gb_per_s" in r else "n/a",
            f"{r['fused_pct_bandwidth']:.0f}%" if "fused_pct_bandwidth" in r else "n/a",
        ])
    table = _md(["set", "plain Adam", "pure-TF graph", "XLA", "fused", "fused vs graph",
                 "fused vs XLA", "fused vs plain", "fused GB/s (32 B/param)", "% of bandwidth"], rows)
    bw = data["bandwidth"]
    probes = ", ".join(f"{p['bytes_per_s'] / 1e9:.1f}" for p in bw["probes"])
    targets = "\n".join(
        f"- {'met' if met else '**missed**'}: {name} (measured "
        f"{'n/a' if value is None else f'{value:.2f}'})"
        for name, met, value in data["targets"]
    )
    return (f"{table}\n\nBandwidth reference: {bw['bytes_per_s'] / 1e9:.1f} GB/s "
            f"(probes before/after: {probes} GB/s).\n\n{targets}")


def step_section(data):
    cases = data["step"]["cases"]
    find = {(c["set"], c["inner"], c["wrapper"], c["path"]): c for c in cases}
    groups = dict.fromkeys((c["set"], c["inner"], c["wrapper"]) for c in cases
                           if c["wrapper"] != "none")
    rows = []
    for set_name, inner, wrapper in groups:
        row = [set_name, f"{wrapper}({inner})"]
        for path in ("plain", "tf_graph", "tf_xla", "fused"):
            c = find.get((set_name, inner, "none" if path == "plain" else wrapper, path))
            if c is None or c["status"] != "ok":
                row.append("n/a")
                continue
            sp = c.get("speedup_vs_tf_graph")
            if isinstance(sp, dict):
                sp = sp.get(wrapper)
            row.append(f"{format_time(c['time']['median_s'])} ({sp:.2f}x)")
        fused = find.get((set_name, inner, wrapper, "fused"))
        if fused and fused["status"] == "ok":
            row.append(f"{fused['gb_per_s']:.1f} @{fused['bytes_per_param']} B ({fused['pct_bandwidth']:.0f}%)")
            row.append(fused["path_ran"])
        else:
            row += ["n/a", "n/a"]
        rows.append(row)
    some = {c["set"]: (c["variables"], c["params"]) for c in cases}
    sets = ", ".join(f"{s}: {v} variables, {p:,} params" for s, (v, p) in some.items())
    return (_md(["set", "optimizer", "plain inner", "pure-TF graph", "XLA", "fused",
                 "fused GB/s (% bw)", "path ran"], rows) + f"\n\nSets: {sets}.")


def norms_section(data, sizes):
    cases = [c for c in data["norms"]["cases"] if c["size"] in sizes]
    impls = list(dict.fromkeys(c["impl"] for c in cases))
    find = {(c["norm"], c["size"], c["impl"]): c for c in cases}
    rows = []
    for norm in dict.fromkeys(c["norm"] for c in cases):
        for size in sorted(dict.fromkeys(c["size"] for c in cases)):
            row = [norm, f"2^{int(math.log2(size))}"]
            for impl in impls:
                c = find.get((norm, size, impl))
                row.append(format_time(c["time"]["median_s"]) if c and c["status"] == "ok" else "n/a")
            best = min((find[(norm, size, i)] for i in impls
                        if (norm, size, i) in find and find[(norm, size, i)]["status"] == "ok"),
                       key=lambda c: c["time"]["median_s"], default=None)
            row.append(f"{best['impl']} {best['gb_per_s']:.3g} ({best['pct_bandwidth']:.0f}%)" if best else "n/a")
            rows.append(row)
    unavailable = "\n".join(f"- {k}: {v}" for k, v in data["norms"]["unavailable"].items())
    return (_md(["norm", "size"] + impls + ["fastest: GB/s (% bw)"], rows)
            + ("\n\nUnavailable here:\n" + unavailable if unavailable else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios")
    parser.add_argument("--step")
    parser.add_argument("--norms")
    parser.add_argument("--norm-sizes", default="256,65536,1048576,16777216")
    args = parser.parse_args(argv)
    load = lambda p: json.load(open(p))  # noqa: E731
    if args.ratios:
        print("### Step ratios (issue [2/6])\n\n" + ratios_section(load(args.ratios)) + "\n")
    if args.step:
        print("### Whole optimizer step\n\n" + step_section(load(args.step)) + "\n")
    if args.norms:
        sizes = {int(s) for s in args.norm_sizes.split(",")}
        print("### Norm of one tensor\n\n" + norms_section(load(args.norms), sizes) + "\n")


if __name__ == "__main__":
    main()
