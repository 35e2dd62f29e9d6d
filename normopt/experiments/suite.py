"""The four experiments: settings (full and --quick) and how each one runs.

Each `run_<name>(quick, seed, overrides, bar_factory)` returns a result dict:

    {"experiment", "quick", "settings", "runs": [{"optimizer", "path",
     "seconds", "curves": {...}, "final": {...}}, ...], ...}

that `report` turns into a table, a JSON file and PNG plots.
"""

import dataclasses
import time

import numpy as np

from normopt.experiments import models, problems, runner
from normopt.experiments.specs import OptimizerSpec

NAMES = ("convex", "lr-sweep", "mlp", "cnn")

SETTINGS = {
    "convex": {
        "full": {"dim": 100, "iterations": 1500},
        "quick": {"dim": 20, "iterations": 300},
    },
    "lr-sweep": {
        "full": {"dim": 100, "iterations": 1500, "points": 13},
        "quick": {"dim": 20, "iterations": 200, "points": 5},
    },
    "mlp": {
        "full": {"depth": 30, "width": 128, "epochs": 60, "batch_size": 32,
                 "train_examples": None, "test_examples": None},
        "quick": {"depth": 3, "width": 32, "epochs": 2, "batch_size": 64,
                  "train_examples": 256, "test_examples": 128},
    },
    "cnn": {
        "full": {"filters": [32, 64], "dense": 128, "epochs": 30, "batch_size": 64,
                 "train_examples": None, "test_examples": None},
        "quick": {"filters": [8, 16], "dense": 32, "epochs": 2, "batch_size": 64,
                  "train_examples": 256, "test_examples": 128},
    },
}

CONVEX_SPECS = [
    OptimizerSpec("sgd", 0.1),
    OptimizerSpec("sgd", 0.1, "l2"),
    OptimizerSpec("sgd", 0.1, "l1"),
    OptimizerSpec("sgd", 0.1, "avg_l2"),
    OptimizerSpec("sgd", 0.1, "max"),
    OptimizerSpec("adam", 0.1),
    OptimizerSpec("adam", 0.1, "l2"),
    OptimizerSpec("adam", 0.1, "max"),
]
MLP_SPECS = [
    OptimizerSpec("sgd", 0.01),
    OptimizerSpec("sgd", 0.01, "l2"),
    OptimizerSpec("sgd", 0.01, "max"),
    OptimizerSpec("adam", 1e-3),
    OptimizerSpec("adam", 1e-3, "l2"),
    OptimizerSpec("adam", 1e-3, "max"),
    # unit-wise normalized Adam and adaptive gradient clipping (AGC, its
    # defaults: clip_factor 0.01, eps 1e-3, l2 per unit) on Adam; the
    # compiled op computes the unit norms (and AGC's weight norms) itself
    OptimizerSpec("adam", 1e-3, "l2", granularity="unit"),
    OptimizerSpec("adam", 1e-3, wrapper="adaptive_clip"),
]
CNN_SPECS = [
    OptimizerSpec("sgd", 0.01),
    OptimizerSpec("sgd", 0.01, "l2"),
    OptimizerSpec("adam", 1e-3),
    OptimizerSpec("adam", 1e-3, "l2"),
]


def settings_for(name, quick, overrides):
    """The settings of `name`, with the non-None `overrides` that apply to it
    (epochs, batch_size, iterations) replacing the defaults."""
    chosen = dict(SETTINGS[name]["quick" if quick else "full"])
    for key, value in overrides.items():
        if value is not None and key in chosen:
            chosen[key] = value
    return chosen


def with_fused(specs, overrides):
    """`specs` with the wrappers' `fused` set from overrides["fused"] (None: auto)."""
    fused = overrides.get("fused")
    return [dataclasses.replace(s, fused=fused) for s in specs]


def lr_grid(points):
    """`points` learning rates spaced evenly in log10 from 1e-4 to 1."""
    return [float(v) for v in np.logspace(-4, 0, points)]


def _gap_summary(loss, optimum):
    gap = [v - optimum for v in loss]
    finite = [g for g in gap if np.isfinite(g)]
    return gap, {
        "initial_gap": gap[0],
        "final_gap": gap[-1],
        "best_gap": min(finite) if finite else float("nan"),
        "final_loss": loss[-1],
        "nonfinite_from": runner.first_nonfinite(loss),
        # diverged: the loss went non-finite, or the gap ended 10x above its start
        "diverged": not (np.isfinite(gap[-1]) and gap[-1] <= 10 * gap[0]),
    }


def _quadratic_runs(problem, specs, iterations, bar):
    _, optimum = problem.optimum()
    out = []
    for spec in specs:
        bar.set_postfix_str(spec.label)
        start = time.perf_counter()
        result = runner.run_quadratic(problem, spec, iterations, bar)
        seconds = time.perf_counter() - start
        gap, final = _gap_summary(result["loss"], optimum)
        out.append({
            "optimizer": spec.as_dict(),
            "path": result["path"],
            "seconds": seconds,
            "curves": {"loss": result["loss"], "gap": gap},
            "final": final,
        })
    return out


def _problem_record(problem):
    w_star, optimum = problem.optimum()
    return {
        "dim": problem.dim,
        "seed": problem.seed,
        "optimum": optimum,
        "initial_loss": problem.loss(problem.w0),
        "condition_number": problem.condition_number(),
        "norm_w_star": float(np.linalg.norm(w_star)),
    }


def run_convex(quick, seed, overrides, bar_factory):
    cfg = settings_for("convex", quick, overrides)
    problem = problems.make_quadratic(cfg["dim"], seed)
    with bar_factory(len(CONVEX_SPECS) * cfg["iterations"], "convex", "step") as bar:
        runs = _quadratic_runs(problem, with_fused(CONVEX_SPECS, overrides),
                               cfg["iterations"], bar)
    return {"experiment": "convex", "quick": quick, "seed": seed, "settings": cfg,
            "problem": _problem_record(problem), "runs": runs}


def run_lr_sweep(quick, seed, overrides, bar_factory):
    cfg = settings_for("lr-sweep", quick, overrides)
    problem = problems.make_quadratic(cfg["dim"], seed)
    rates = lr_grid(cfg["points"])
    specs = with_fused([OptimizerSpec("adam", lr, norm) for norm in (None, "l2")
                        for lr in rates], overrides)
    with bar_factory(len(specs) * cfg["iterations"], "lr-sweep", "step") as bar:
        runs = _quadratic_runs(problem, specs, cfg["iterations"], bar)
    for run in runs:  # the sweep keeps only the gap curve
        del run["curves"]["loss"]
    return {"experiment": "lr-sweep", "quick": quick, "seed": seed,
            "settings": dict(cfg, learning_rates=rates),
            "problem": _problem_record(problem), "runs": runs}


def _classifier_runs(name, build, specs, cfg, dataset, seed, bar_factory,
                     probe_gradients=False):
    runs = []
    with bar_factory(len(specs) * cfg["epochs"], name, "epoch") as bar:
        for spec in specs:
            bar.set_postfix_str(spec.label)
            start = time.perf_counter()
            result = runner.train_classifier(build, dataset, spec, cfg["epochs"],
                                             cfg["batch_size"], seed, bar,
                                             probe_gradients=probe_gradients)
            seconds = time.perf_counter() - start
            curves = {k: result[k] for k in
                      ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
            final = {k: v[-1] for k, v in curves.items()}
            final["best_test_accuracy"] = max(curves["test_accuracy"])
            run = {"optimizer": spec.as_dict(), "path": result["path"],
                   "seconds": seconds, "parameters": result["parameters"],
                   "curves": curves, "final": final}
            if "layer_grad_norms" in result:
                run["layer_grad_norms"] = result["layer_grad_norms"]
            runs.append(run)
    return runs


def _sized(dataset, cfg):
    if cfg["train_examples"] is None:
        return dataset
    return dataset.subset(cfg["train_examples"], cfg["test_examples"])


def run_mlp(quick, seed, overrides, bar_factory, dataset):
    """`dataset`: a loaded `data.Dataset` (the CLI loads it before any training)."""
    cfg = settings_for("mlp", quick, overrides)
    dataset = _sized(dataset, cfg)

    def build():
        return models.deep_mlp(dataset.image_shape, dataset.num_classes,
                               depth=cfg["depth"], width=cfg["width"])

    specs = with_fused(MLP_SPECS, overrides)
    runs = _classifier_runs("mlp", build, specs, cfg, dataset, seed, bar_factory,
                            probe_gradients=True)
    return {"experiment": "mlp", "quick": quick, "seed": seed, "settings": cfg,
            "dataset": dataset.describe(), "runs": runs}


def run_cnn(quick, seed, overrides, bar_factory, dataset):
    """`dataset`: a loaded `data.Dataset` (the CLI loads it before any training)."""
    cfg = settings_for("cnn", quick, overrides)
    dataset = _sized(dataset, cfg)

    def build():
        return models.small_cnn(dataset.image_shape, dataset.num_classes,
                                filters=tuple(cfg["filters"]), dense=cfg["dense"])

    specs = with_fused(CNN_SPECS, overrides)
    runs = _classifier_runs("cnn", build, specs, cfg, dataset, seed, bar_factory)
    return {"experiment": "cnn", "quick": quick, "seed": seed, "settings": cfg,
            "dataset": dataset.describe(), "runs": runs}
