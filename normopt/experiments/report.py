"""Outputs of an experiment: summary table (text), JSON of every curve, PNG plots.

JSON holds strict JSON only: a NaN or infinite value (a diverged run) is
written as null, and each run's `final.nonfinite_from` says from which step
(or epoch index) its loss stopped being finite. Plots leave non-finite points
out, mark where a run diverged, and bound the y-axis by the finite data of
the runs that did not blow up, so one diverging run cannot flatten the rest.
"""

import json
import math
import os

import numpy as np

DPI = 100


# ---------------------------------------------------------------- JSON

def _strict(value):
    """`value` with every non-finite float replaced by None (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating,)):
        return _strict(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(_strict(result), f, indent=1, allow_nan=False)
    return path


# ---------------------------------------------------------------- table

def _fmt(value, spec):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan" if value is None or math.isnan(value) else "inf"
    return format(value, spec)


def _quadratic_row(run):
    f = run["final"]
    stop = f["nonfinite_from"]
    note = ""
    if stop is not None:
        note = f"diverged: non-finite from step {stop}"
    elif f["diverged"]:
        note = "diverged: gap grew over 10x"
    return [run["optimizer"]["label"], run["path"], _fmt(f["initial_gap"], ".4g"),
            _fmt(f["final_gap"], ".4g"), _fmt(f["best_gap"], ".4g"),
            _fmt(run["seconds"], ".1f"), note]


def _classifier_row(run):
    f = run["final"]
    return [run["optimizer"]["label"], run["path"], _fmt(f["train_loss"], ".4f"),
            _fmt(f["train_accuracy"], ".4f"), _fmt(f["test_loss"], ".4f"),
            _fmt(f["test_accuracy"], ".4f"), _fmt(f["best_test_accuracy"], ".4f"),
            _fmt(run["seconds"], ".1f")]


def _lr_sweep_rows(result):
    by_lr = {}
    for run in result["runs"]:
        key = "normalized (l2)" if run["optimizer"]["normalization"] else "plain"
        by_lr.setdefault(run["optimizer"]["learning_rate"], {})[key] = run["final"]["final_gap"]
    return [[f"{lr:.3g}", _fmt(g.get("plain"), ".4g"), _fmt(g.get("normalized (l2)"), ".4g")]
            for lr, g in sorted(by_lr.items())]


def table_rows(result):
    """(header, rows) of the summary table of one experiment."""
    name = result["experiment"]
    if name in LM_NAMES:
        from normopt.experiments import lm_report

        return lm_report.table_rows(result)
    if name == "convex":
        return (["optimizer", "path", "initial gap", "final gap", "best gap", "time s", ""],
                [_quadratic_row(r) for r in result["runs"]])
    if name == "lr-sweep":
        return (["Adam lr", "final gap, Adam", "final gap, Normalized Adam (l2)"],
                _lr_sweep_rows(result))
    return (["optimizer", "path", "train loss", "train acc", "test loss", "test acc",
             "best test acc", "time s"], [_classifier_row(r) for r in result["runs"]])


def format_table(result, markdown=False):
    header, rows = table_rows(result)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(header), "-" * len(line(header))]
    out += [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(optimizer):
    """Plain runs dashed, normalized runs solid, adaptive clipping dash-dotted."""
    if optimizer["normalization"] is None:
        return "--"
    return "-." if optimizer.get("wrapper") == "adaptive_clip" else "-"


def _finite_range(curves, positive=False):
    values = np.concatenate([c[np.isfinite(c)] for c in curves] or [np.array([])])
    if positive:
        values = values[values > 0]
    if values.size == 0:
        return None
    return float(values.min()), float(values.max())


def _quadratic_panels(ax_loss, ax_gap, runs, optimum, title):
    """Loss and gap curves of `runs` (one inner optimizer) on one pair of axes."""
    loss = [np.asarray(r["curves"]["loss"], dtype=np.float64) for r in runs]
    gap = [np.asarray(r["curves"]["gap"], dtype=np.float64) for r in runs]
    ok = [not r["final"]["diverged"] for r in runs]
    # Noisy (oscillating) curves go underneath the smooth ones so they cannot hide them.
    wiggle = [np.nansum(np.abs(np.diff(np.where(np.isfinite(l), l, np.nan)))) for l in loss]
    depth = {i: z for z, i in enumerate(np.argsort(wiggle)[::-1])}
    for i, (run, l, g, fine) in enumerate(zip(runs, loss, gap, ok)):
        label = run["optimizer"]["label"] + ("" if fine else " (diverged)")
        steps = np.arange(len(l))
        # Beyond 1e6 x the start a run has diverged; drawing 1e300 only overflows the axes.
        l_plot = np.where(np.isfinite(l) & (np.abs(l) < 1e6 * (abs(l[0]) + 1)), l, np.nan)
        g_plot = np.where(np.isfinite(g) & (g > 0) & (g < 1e6 * g[0]), g, np.nan)
        style = _style(run["optimizer"])
        line, = ax_loss.plot(steps, l_plot, style, label=label, lw=1.0, alpha=0.8,
                             color=f"C{i}", zorder=2 + depth[i])
        ax_gap.plot(steps, g_plot, style, color=f"C{i}", lw=1.0, alpha=0.8, zorder=2 + depth[i])
        stop = run["final"]["nonfinite_from"]
        if stop is not None:
            ax_gap.axvline(stop, color=line.get_color(), ls=":", lw=0.8)
    ax_loss.axhline(optimum, color="k", lw=0.8, ls=":", label="optimum L*")
    good_loss = _finite_range([l for l, fine in zip(loss, ok) if fine])
    if good_loss:
        lo, hi = good_loss
        pad = 0.05 * (hi - lo + 1e-12)
        ax_loss.set_ylim(min(lo, optimum) - pad, hi + pad)
    ax_gap.set_yscale("log")
    good_gap = _finite_range([g for g, fine in zip(gap, ok) if fine], positive=True)
    if good_gap:
        ax_gap.set_ylim(good_gap[0] / 3, good_gap[1] * 3)
    ax_loss.set(xlabel="iteration", ylabel="L(w)", title=f"{title}: loss")
    ax_gap.set(xlabel="iteration", ylabel="L(w) - L*", title=f"{title}: gap to the optimum")
    ax_loss.legend(fontsize=7)
    for ax in (ax_loss, ax_gap):
        ax.grid(alpha=0.3)


def _plot_quadratic(result, path):
    """One row per inner optimizer: loss (y-range of the converging runs) and gap (log)."""
    plt = _pyplot()
    groups = {}
    for run in result["runs"]:
        groups.setdefault(run["optimizer"]["inner"], []).append(run)
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    titles = {"sgd": "SGD-nesterov", "adam": "Adam"}
    for (inner, runs), (ax_loss, ax_gap) in zip(groups.items(), axes):
        _quadratic_panels(ax_loss, ax_gap, runs, result["problem"]["optimum"],
                          titles.get(inner, inner))
    fig.suptitle(f"{result['problem']['dim']}-d quadratic, cond(Q) = "
                 f"{result['problem']['condition_number']:.3g}, seed {result['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _plot_lr_sweep(result, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series, nonfinite = {}, []
    for run in result["runs"]:
        key = (f"Normalized Adam ({run['optimizer']['normalization']})"
               if run["optimizer"]["normalization"] else "Adam")
        series.setdefault(key, []).append((run["optimizer"]["learning_rate"],
                                           run["final"]["final_gap"]))
    for key, points in series.items():
        lr, g = np.array(sorted(points), dtype=np.float64).T
        finite = np.isfinite(g) & (g > 0)
        line, = ax.plot(lr[finite], g[finite], "o-" if "Normalized" in key else "s--", label=key)
        nonfinite.append((lr[~finite], line.get_color(), key))
    ax.set(xscale="log", yscale="log")
    top = ax.get_ylim()[1]
    for lr, color, key in nonfinite:  # diverged runs: an x at the top edge
        if lr.size:
            ax.plot(lr, np.full(lr.size, top), "x", color=color, ms=9, clip_on=False,
                    label=f"{key}: non-finite")
    ax.set(xscale="log", yscale="log", xlabel="learning rate",
           ylabel=f"gap to optimum after {result['settings']['iterations']} steps",
           title=f"Adam vs Normalized Adam, {result['problem']['dim']}-d quadratic")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _plot_classifier(result, path):
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [("train_loss", "train loss"), ("test_loss", "test loss"),
              ("train_accuracy", "train accuracy"), ("test_accuracy", "test accuracy")]
    for ax, (key, title) in zip(axes.ravel(), panels):
        curves = []
        for run in result["runs"]:
            c = np.asarray(run["curves"][key], dtype=np.float64)
            curves.append(c)
            epochs = np.arange(1, len(c) + 1)
            ax.plot(epochs, np.where(np.isfinite(c), c, np.nan), _style(run["optimizer"]),
                    label=run["optimizer"]["label"], lw=1.2)
        if key.endswith("loss"):
            rng = _finite_range(curves, positive=True)
            ax.set_yscale("log" if rng and rng[1] / rng[0] > 20 else "linear")
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    d = result["dataset"]
    fig.suptitle(f"{result['experiment']} on {d['name']} ({d['train_examples']} train / "
                 f"{d['test_examples']} test), seed {result['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _plot_layer_grad_norms(result, path):
    """Heatmaps of per-layer gradient norms (layer x epoch, log colour scale),
    one panel per Adam run (plain, normalized, unit-wise, AGC: every Adam run
    of the experiment), at most three panels a row, on one shared colour scale."""
    from matplotlib.colors import LogNorm

    runs = [r for r in result["runs"]
            if "layer_grad_norms" in r and r["optimizer"]["inner"] == "adam"]
    grids = [np.asarray(r["layer_grad_norms"]["norms"], np.float64).T for r in runs]
    positive = np.concatenate([g[np.isfinite(g) & (g > 0)] for g in grids] or [np.ones(1)])
    scale = LogNorm(vmin=positive.min(), vmax=positive.max())
    plt = _pyplot()
    layers = runs[0]["layer_grad_norms"]["layers"] if runs else []
    cols = min(max(len(runs), 1), 3)
    rows = max(math.ceil(len(runs) / cols), 1)
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(4.6 * cols, rows * (2 + 0.12 * len(layers))))
    image = None
    for i, (ax, run, grid) in enumerate(zip(axes.ravel(), runs, grids)):
        shown = np.where(np.isfinite(grid) & (grid > 0), grid, np.nan)
        image = ax.imshow(shown, aspect="auto", interpolation="nearest", norm=scale,
                          cmap="viridis", extent=(-0.5, grid.shape[1] - 0.5,
                                                  grid.shape[0] - 0.5, -0.5))
        ax.set_title(run["optimizer"]["label"], fontsize=10)
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_yticks(range(len(layers)))
        # every panel has the same layers: names in the first column only
        ax.set_yticklabels(layers if i % cols == 0 else [], fontsize=5)
    for ax in axes.ravel()[len(runs):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel()[:len(runs)].tolist(),
                     label="gradient L2 norm (log scale)")
    d = result["dataset"]
    fig.suptitle(f"{result['experiment']}: per-layer gradient norms of a {d['name']} probe "
                 "batch (inference mode), input layer at the top")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _plot_lm(result, path):
    from normopt.experiments import lm_report

    plot = lm_report.plot_sweep if result["experiment"] == "lm-sweep" else lm_report.plot_lm
    plot(result, path, _pyplot())


LM_NAMES = ("lm", "lm-sweep")
PLOTTERS = {"convex": _plot_quadratic, "lr-sweep": _plot_lr_sweep,
            "mlp": _plot_classifier, "cnn": _plot_classifier,
            "lm": _plot_lm, "lm-sweep": _plot_lm}
# Further figures per experiment: (file suffix, plotter).
EXTRA_PLOTS = {"mlp": [("_grad_norms", _plot_layer_grad_norms)]}


def file_stem(name):
    return name.replace("-", "_")


def save(result, out_dir, plots=True):
    """Writes <out>/<name>.json and, with `plots`, <out>/<name>.png and the
    experiment's extra figures (<out>/<name><suffix>.png); returns the JSON
    path and the PNGs written."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, file_stem(result["experiment"]))
    json_path = write_json(result, stem + ".json")
    if not plots:
        return json_path, []
    pngs = [stem + ".png"]
    PLOTTERS[result["experiment"]](result, pngs[0])
    for suffix, plot in EXTRA_PLOTS.get(result["experiment"], []):
        pngs.append(stem + suffix + ".png")
        plot(result, pngs[-1])
    return json_path, pngs
