"""Table and figures of the lm experiment and of its learning-rate sweep.

    lm        one row per arm: final validation loss, mean +- half range over
              the seeds, train loss, tokens/s, path; an unavailable arm gets
              its reason instead of numbers. Figure: training loss (moving
              average) and validation loss against steps, one colour per
              arm, one line per seed.
    lm-sweep  one row per arm and learning rate: final validation loss, the
              chosen (lowest) rate marked. Figure: final validation loss
              against the learning rate per arm.
"""

import math

import numpy as np

SMOOTHING = 25  # steps in the training-loss moving average of the figure


def _fmt(value, spec):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return format(value, spec)


def _lm_row(arm):
    if arm["status"] != "ran":
        return [arm["label"], _fmt(arm["learning_rate"], "g"), "-", "-", "-", "-", "-",
                f"unavailable: {arm['reason']}"]
    s = arm["summary"]
    seconds = sum(r["seconds"] for r in arm["runs"])
    return [arm["label"], _fmt(arm["learning_rate"], "g"),
            f"{_fmt(s['val_loss_mean'], '.4f')} ± {_fmt(s['val_loss_spread'], '.4f')}",
            _fmt(s["train_loss_mean"], ".4f"), _fmt(s["tokens_per_second"], ".0f"), s["path"],
            _fmt(seconds, ".1f"), ""]


def _sweep_rows(result):
    rows = []
    for arm in result["arms"]:
        if arm["status"] != "ran":
            rows.append([arm["label"], "-", "-", f"unavailable: {arm['reason']}"])
            continue
        for run in arm["runs"]:
            chosen = "chosen" if run["learning_rate"] == arm["best_learning_rate"] else ""
            note = chosen
            if run["final"]["nonfinite_from"] is not None:
                note = f"non-finite from step {run['final']['nonfinite_from']}"
            rows.append([arm["label"], _fmt(run["learning_rate"], "g"),
                         _fmt(run["final"]["val_loss"], ".4f"), note])
    return rows


def table_rows(result):
    if result["experiment"] == "lm-sweep":
        return (["arm", "learning rate", f"val loss after {result['sweep_steps']} steps", ""],
                _sweep_rows(result))
    n = len(result["seeds"])
    seeds = f"{n} seeds" if n != 1 else "1 seed"
    return (["arm", "lr", f"final val loss (mean ± half range, {seeds})", "train loss",
             "tokens/s", "path", "time s (all seeds)", ""], [_lm_row(a) for a in result["arms"]])


def _moving_average(values, width):
    values = np.asarray(values, dtype=np.float64)
    if values.size < width or width < 2:
        return np.arange(1, values.size + 1), values
    kernel = np.ones(width) / width
    return np.arange(width, values.size + 1), np.convolve(values, kernel, mode="valid")


def _title(result):
    s, m = result["settings"], result["model"]
    return (f"{m['depth']}-layer width-{m['width']} causal transformer ({m['parameters']:,} "
            f"params), stdlib characters, context {s['context']}, batch {s['batch_size']}")


def _clip_first_point(ax, result):
    """Bounds the validation axis by the evaluations after step 0: the untrained
    model's loss (far above the rest) would flatten every later difference."""
    later = [v for a in result["arms"] if a["status"] == "ran" for r in a["runs"]
             for v in r["curves"]["val_loss"][1:] if v is not None and math.isfinite(v)]
    first = [r["curves"]["val_loss"][0] for a in result["arms"] if a["status"] == "ran"
             for r in a["runs"]]
    if not later or max(first) <= max(later):
        return
    low, high = min(later), max(later)
    ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    ax.set_title(f"validation loss (step 0, off the axis: {min(first):.2f}-{max(first):.2f})")


def plot_lm(result, path, pyplot):
    fig, (ax_train, ax_val) = pyplot.subplots(1, 2, figsize=(13, 4.8))
    smoothed = result["settings"]["steps"] >= SMOOTHING
    for i, arm in enumerate(a for a in result["arms"] if a["status"] == "ran"):
        for j, run in enumerate(arm["runs"]):
            label = f"{arm['label']} lr={arm['learning_rate']:g}" if j == 0 else None
            style = ["-", "--", ":", "-."][j % 4]
            steps, smooth = _moving_average(run["curves"]["train_loss"], SMOOTHING)
            ax_train.plot(steps, smooth, style, color=f"C{i}", lw=1.1, label=label)
            val = np.asarray(run["curves"]["val_loss"], dtype=np.float64)
            ax_val.plot(run["curves"]["val_steps"], val, style, color=f"C{i}", marker=".",
                        lw=1.1, label=label)
    missing = [a["label"] for a in result["arms"] if a["status"] != "ran"]
    ax_train.set(xlabel="step", ylabel="cross-entropy (nats/char)",
                 title=f"training loss ({SMOOTHING}-step moving average)" if smoothed
                 else "training loss")
    ax_val.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="validation loss")
    _clip_first_point(ax_val, result)
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=7, title=f"seeds {result['seeds']} (line styles)",
                  title_fontsize=7)
    note = f"\nnot run (unavailable): {', '.join(missing)}" if missing else ""
    fig.suptitle(_title(result) + note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def plot_sweep(result, path, pyplot):
    fig, ax = pyplot.subplots(figsize=(6.5, 4.5))
    for i, arm in enumerate(a for a in result["arms"] if a["status"] == "ran"):
        lr = np.array([r["learning_rate"] for r in arm["runs"]], dtype=np.float64)
        val = np.array([np.nan if r["final"]["val_loss"] is None else r["final"]["val_loss"]
                        for r in arm["runs"]], dtype=np.float64)
        ax.plot(lr, val, "o-", color=f"C{i}", label=arm["label"])
        best = arm["best_learning_rate"]
        ax.plot([best], val[lr == best], "*", color=f"C{i}", ms=14)
    ax.set(xscale="log", xlabel="peak learning rate",
           ylabel=f"val loss after {result['sweep_steps']} steps (nats/char)",
           title="learning-rate sweep (star: chosen)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.suptitle(_title(result), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot.close(fig)
