"""Terminal tables, the JSON file and the PNG plot of a benchmark run."""

import json
import math
import os

from normopt.bench import busy


def format_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def format_count(n):
    """A count in a unit that shows it: 97, 1.23k, 12.3k, 588k, 14.71M."""
    if n < 1000:
        return str(n)
    if n < 999_500:  # three significant digits, below what rounds to 1000k
        return f"{n / 1e3:.3g}k"
    return f"{n / 1e6:.2f}M"


def format_spread(summary):
    """"median [q1-q3]" of a timing.summarize() summary."""
    return (f"{format_time(summary['median_s'])} "
            f"[{format_time(summary['q1_s'])}-{format_time(summary['q3_s'])}]")


def _size_label(n):
    e = math.log2(n)
    return f"2^{int(e)}" if e == int(e) else str(n)


def _table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _unavailable_lines(unavailable):
    return [f"unavailable: {name}: {reason}" for name, reason in unavailable.items()]


def norms_table(result, bandwidth=None):
    """One row per (norm, size), one column per implementation.

    A cell is the median time per call, GB/s read and % of the bandwidth.
    """
    cases = result["cases"]
    impls = list(dict.fromkeys(c["impl"] for c in cases))
    by_key = {(c["norm"], c["size"], c["impl"]): c for c in cases}
    rows = []
    for norm in dict.fromkeys(c["norm"] for c in cases):
        for size in dict.fromkeys(c["size"] for c in cases):
            row = [norm, _size_label(size)]
            for impl in impls:
                c = by_key.get((norm, size, impl))
                if c is None:
                    row.append("")
                elif c["status"] != "ok":
                    row.append("FAILED")
                else:
                    cell = f"{format_time(c['time']['median_s'])} {c['gb_per_s']:.2f}GB/s"
                    if "pct_bandwidth" in c:
                        cell += f" {c['pct_bandwidth']:.0f}%"
                    row.append(cell + busy.mark(c))
            rows.append(row)
    lines = []
    if bandwidth:
        lines.append(
            "time per call (median) | GB/s read (n * itemsize / time) | % of "
            f"{bandwidth['bytes_per_s'] / 1e9:.1f} GB/s measured copy bandwidth"
        )
    if rows:
        lines.append(_table(["norm", "size"] + impls, rows))
        lines += busy.note_lines(cases)
    lines += _unavailable_lines(result["unavailable"])
    lines += [
        f"failed: {c['impl']} {c['norm']} {c['size']}: {c['error']}"
        for c in cases
        if c["status"] != "ok"
    ]
    return "\n".join(lines)


def _step_cell(record, wrapper):
    if record is None:
        return ""
    if record["status"] != "ok":
        return "unavailable"
    speedup = record.get("speedup_vs_tf_graph")
    if isinstance(speedup, dict):
        speedup = speedup.get(wrapper)
    cell = format_time(record["time"]["median_s"])
    return cell + (f" ({speedup:.2f}x)" if speedup else "") + busy.mark(record)


def step_table(result, bandwidth=None):
    """One row per (set, inner, wrapper): each path's median and speedup."""
    cases = result["cases"]
    paths = list(dict.fromkeys(c["path"] for c in cases))
    groups = dict.fromkeys(
        (c["set"], c["inner"], c["wrapper"]) for c in cases if c["wrapper"] != "none"
    )
    find = {(c["set"], c["inner"], c["wrapper"], c["path"]): c for c in cases}
    rows = []
    for set_name, inner, wrapper in groups:
        some = next(c for c in cases if c["set"] == set_name)
        row = [set_name, f"{some['variables']}/{some['params']:,}", f"{wrapper}({inner})"]
        for path in paths:
            owner = "none" if path == "plain" else wrapper
            row.append(_step_cell(find.get((set_name, inner, owner, path)), wrapper))
        best = find.get((set_name, inner, wrapper, "fused"))
        if best is None or best["status"] != "ok":
            best = find.get((set_name, inner, wrapper, "tf_graph"))
        if best is not None and best["status"] == "ok":
            pct = best.get("pct_bandwidth")
            row.append(
                f"{best['path']}: {best['gb_per_s']:.2f}GB/s"
                + (f" ({pct:.0f}%)" if pct is not None else "")
                + f" @{best['bytes_per_param']}B/param"
            )
            row.append(best.get("path_ran") or "")
        else:
            row += ["", ""]
        rows.append(row)
    lines = [
        "median step time (speedup = time of tf_graph / time, same run, same wrapper)"
    ]
    if bandwidth:
        lines[0] += f"; bandwidth {bandwidth['bytes_per_s'] / 1e9:.1f} GB/s (copy)"
    header = ["set", "vars/params", "optimizer"] + paths + ["achieved", "path ran"]
    lines.append(_table(header, rows))
    lines += busy.note_lines(cases)
    seen = set()
    for c in cases:
        if c["status"] != "ok" and (c["path"], c["reason"]) not in seen:
            seen.add((c["path"], c["reason"]))
            lines.append(f"unavailable: {c['path']} ({c['wrapper']}, {c['inner']}): {c['reason']}")
    return "\n".join(lines)


def backend_step_table(backends):
    """One row per (backend, set, inner): each variant's median and its
    ratio to plain's; then why a backend did not run."""
    rows, lines = [], []
    shown = [v for v in ("plain", "normalized", "normalized_foreach")
             if any(c["variant"] == v for r in backends.values() for c in r.get("cases", []))]
    for result in backends.values():
        cases = result.get("cases", [])
        variants = result.get("variants", [])
        find = {(c["set"], c["inner"], c["variant"]): c for c in cases}
        for set_name, inner in dict.fromkeys((c["set"], c["inner"]) for c in cases):
            some = find[(set_name, inner, variants[0])]
            row = [result["backend"], set_name, f"{some['variables']}/{some['params']:,}",
                   inner]
            ran, check = [], []
            for variant in shown:
                c = find.get((set_name, inner, variant))
                if c is None:
                    row.append("")
                elif c["status"] != "ok":
                    row.append("unavailable")
                else:
                    ratio = c.get("vs_plain") if variant != "plain" else None
                    row.append(format_time(c["time"]["median_s"])
                               + (f" ({ratio:.2f}x)" if ratio else "") + busy.mark(c))
                    if variant != "plain":
                        ran.append(c["path_ran"])
                        if "max_rel_diff" in c:
                            check.append(f"{c['max_rel_diff']:.1e}")
            rows.append(row + ["/".join(dict.fromkeys(ran)), " ".join(check)])
        for c in cases:
            if c["status"] != "ok":
                lines.append(f"unavailable: {result['backend']} {c['variant']} "
                             f"({c['set']}, {c['inner']}): {c['reason']}")
        if result["status"] != "ok":
            lines.append(f"{result['status']}: {result['backend']}: {result['reason']}")
        elif "runtime_s" in result:
            lines.append(f"{result['backend']}: its process took {result['runtime_s']:.0f} s "
                         "(imports, compiles, timing)")
    out = ["other backends, each in its own process: median step time (x = time / plain's, "
           "same run); jax: stateless_apply under jax.jit, torch: eager apply"]
    if rows:
        out.append(_table(["backend", "set", "vars/params", "inner", *shown, "path ran",
                           "max rel diff"], rows))
        out += busy.note_lines([c for r in backends.values() for c in r.get("cases", [])])
    return "\n".join(out + lines)


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False, default=str)


def _plot_norms(fig, result):
    ok = [c for c in result["cases"] if c["status"] == "ok"]
    norms = list(dict.fromkeys(c["norm"] for c in ok))
    if not norms:
        return
    cols = min(3, len(norms))
    rows = math.ceil(len(norms) / cols)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    impls = list(dict.fromkeys(c["impl"] for c in ok))
    for ax, norm in zip(axes.flat, norms):
        for impl in impls:
            pts = sorted(
                (c["size"], c["time"]["median_s"])
                for c in ok
                if c["norm"] == norm and c["impl"] == impl
            )
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(norm, fontsize=9)
        ax.set_xlabel("elements", fontsize=8)
        ax.set_ylabel("time per call [s]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(norms):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("norm of one tensor: time per call vs size (log-log)", fontsize=10)


def _plot_step(fig, result):
    import numpy as np

    ok = [c for c in result["cases"] if c["status"] == "ok"]
    groups = list(
        dict.fromkeys((c["inner"], c["wrapper"]) for c in ok if c["wrapper"] != "none")
    )
    if not groups:
        return
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    paths = list(dict.fromkeys(c["path"] for c in ok))
    for ax, (inner, wrapper) in zip(axes, groups):
        sets = list(dict.fromkeys(c["set"] for c in ok if c["inner"] == inner))
        width = 0.8 / max(len(paths), 1)
        for k, path in enumerate(paths):
            heights = []
            for s in sets:
                value = float("nan")
                for c in ok:
                    if (c["set"], c["inner"], c["path"]) != (s, inner, path):
                        continue
                    sp = c.get("speedup_vs_tf_graph")
                    if isinstance(sp, dict):
                        sp = sp.get(wrapper)
                    if c["wrapper"] in (wrapper, "none") and sp:
                        value = sp
                heights.append(value)
            ax.bar(np.arange(len(sets)) + k * width, heights, width, label=path)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(sets)) + width * (len(paths) - 1) / 2)
        ax.set_xticklabels(sets, fontsize=8, rotation=20)
        ax.set_ylabel("speedup vs pure-TF graph", fontsize=8)
        ax.set_title(f"{wrapper}({inner})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("whole optimizer step: speedup over pure-TF graph (same run)", fontsize=10)


def plot(path, norms=None, step=None, title=None):
    """One PNG: norms panels (log-log) and/or step bars, stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ((_plot_norms, norms), (_plot_step, step)) if p[1]]
    heights = []
    for draw, result in parts:
        if draw is _plot_norms:
            n = len({c["norm"] for c in result["cases"] if c["status"] == "ok"})
            heights.append(3.0 * max(1, math.ceil(n / 3)) + 0.6)
        else:
            heights.append(4.0)
    fig = plt.figure(figsize=(12, max(sum(heights), 3)), layout="constrained")
    if not parts:
        fig.text(0.5, 0.5, "no successful measurements to plot", ha="center")
    else:
        subfigs = fig.subfigures(len(parts), 1, height_ratios=heights, squeeze=False)
        for sub, (draw, result) in zip(subfigs.flat, parts):
            draw(sub, result)
    if title:
        fig.text(0.01, 0.995, title, fontsize=7, va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
