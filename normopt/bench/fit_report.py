"""The terminal table and the PNG of `normopt bench fit`."""

import math
import os

from normopt.bench import busy
from normopt.bench.report import format_count, format_spread

COLUMNS = ("fwd_bwd", "plain", "normalized_tf", "normalized_fused")
HEADINGS = {"fwd_bwd": "fwd+bwd only", "plain": "plain inner",
            "normalized_tf": "normalized TF", "normalized_fused": "normalized fused"}
COLORS = {"fwd_bwd": "0.7", "plain": "tab:blue", "normalized_tf": "tab:orange",
          "normalized_fused": "tab:green"}


def _groups(cases):
    """{(model, inner): {variant: record}} in run order."""
    out = {}
    for c in cases:
        out.setdefault((c["model"], c["inner"]), {})[c["variant"]] = c
    return out


def _cell(record):
    if record is None:
        return ""
    if record["status"] != "ok":
        return "FAILED"
    return format_spread(record["time"]) + busy.mark(record)


def _share(record):
    if record is None or "optimizer_share" not in record:
        return "-"
    return f"{100 * record['optimizer_share']:.0f}%"


def _ratio(record, key):
    value = (record or {}).get(key)
    return f"{value:.2f}x" if value else "-"


def _params(n):
    return "?" if n is None else format_count(n)


def rows(result):
    """Table rows, one per (model, inner) (also used for docs)."""
    out = []
    for (model, inner), cells in _groups(result["cases"]).items():
        some = next(iter(cells.values()))
        fused = cells.get("normalized_fused")
        shares = "/".join(_share(cells.get(v)) for v in ("plain", "normalized_tf", "normalized_fused"))
        out.append(
            [model, _params(some.get("params")), str(some.get("batch_size")), inner]
            + [_cell(cells.get(v)) for v in COLUMNS]
            + [_ratio(fused, "fused_vs_tf"), _ratio(fused, "fused_vs_plain"), shares,
               (fused or {}).get("path_ran") or "-"]
        )
    return out


HEADER = (["model", "params", "batch", "inner"] + [HEADINGS[c] for c in COLUMNS]
          + ["fused vs TF", "fused vs plain", "opt share plain/TF/fused", "fused path"])


def table(result):
    """Median ms per step [IQR] per call, ratios, optimizer share, path taken."""
    from normopt.bench.report import _table

    lines = [
        "model.fit step time per step: median [q1-q3] over interleaved samples; "
        "fused vs X = time(X) / time(fused); opt share = (step - fwd+bwd) / step"
    ]
    lines.append(_table(HEADER, rows(result)))
    lines += busy.note_lines(result["cases"])
    seen = set()
    for c in result["cases"]:
        if c["status"] != "ok":
            lines.append(f"failed: {c['model']} {c['inner']} {c['variant']}: {c['error']}")
        elif (c["variant"] == "normalized_fused" and c.get("path_ran") != "fused"
              and (c["model"], c.get("path_reason")) not in seen):
            seen.add((c["model"], c.get("path_reason")))
            lines.append(f"note: {c['model']}: the fused variant took path "
                         f"{c.get('path_ran')!r}: {c.get('path_reason')}")
    return "\n".join(lines)


def plot(path, result, title=None):
    """One panel per model: bars of ms per step per inner x call, IQR whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = _groups(result["cases"])
    models = list(dict.fromkeys(m for m, _ in groups))
    cols = min(3, max(1, len(models)))
    nrows = max(1, math.ceil(len(models) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    width = 0.8 / len(COLUMNS)
    for ax, model in zip(axes.flat, models):
        inners = [i for m, i in groups if m == model]
        xs = np.arange(len(inners))
        for k, call in enumerate(COLUMNS):
            med, lo, hi = [], [], []
            for inner in inners:
                r = groups[(model, inner)].get(call)
                t = r["time"] if r is not None and r["status"] == "ok" else None
                med.append(t["median_s"] * 1e3 if t else float("nan"))
                lo.append((t["median_s"] - t["q1_s"]) * 1e3 if t else 0.0)
                hi.append((t["q3_s"] - t["median_s"]) * 1e3 if t else 0.0)
            bars = ax.bar(xs + k * width, med, width, yerr=[lo, hi], capsize=2,
                          color=COLORS[call], label=HEADINGS[call])
            if call == "normalized_fused":
                for bar, inner in zip(bars, inners):
                    r = groups[(model, inner)].get(call) or {}
                    ratio = r.get("fused_vs_tf")
                    label = f"{ratio:.2f}x" if ratio else ""
                    if r.get("path_ran") not in (None, "fused"):
                        label += f"\n({r['path_ran']})"
                    ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        some = next(iter(groups[(model, inners[0])].values()))
        ax.set_title(f"{model} ({_params(some.get('params'))} params, batch "
                     f"{some.get('batch_size')})", fontsize=9)
        ax.set_xticks(xs + width * (len(COLUMNS) - 1) / 2)
        ax.set_xticklabels(inners, fontsize=8)
        ax.set_ylabel("ms per step (median, IQR)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    if models:
        axes.flat[0].legend(fontsize=7)
    else:
        fig.text(0.5, 0.5, "no measurements to plot", ha="center")
    fig.suptitle("model.fit step: forward+backward only, plain inner, normalized "
                 "pure TF, normalized fused (label: fused vs TF)", fontsize=10)
    if title:
        fig.text(0.01, 0.995, title, fontsize=7, va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
