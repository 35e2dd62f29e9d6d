"""`normopt experiments lm`: do per-tensor and per-layer norms help a small language model?

A causal transformer (`lm_model.causal_lm`) learns to predict the next
character of Python's standard library sources (`lm_data`), with four arms
at the same step budget, each at its own learning rate:

    adamw           keras.optimizers.AdamW
    normalized_l2   NormalizedOptimizer(AdamW, "l2"): every gradient tensor
                    divided by its L2 norm before AdamW's step
    normalized_map  NormalizedOptimizer(AdamW, "l2", normalization_map=
                    LM_NORMALIZATION_MAP): spectral norm for the hidden
                    matrices, l2 for embeddings, the output head and vectors
    muon            keras.optimizers.Muon: Newton-Schulz orthogonalised
                    momentum for 2-d hidden matrices, its AdamW step for the
                    rest (vectors, embeddings, and lm_head via exclude_layers)

An arm whose optimizer the installed code cannot build is not dropped and
not imitated: it is reported with `status: "unavailable"` and the reason
(`unavailable_reason`). Every arm uses the same schedule: a linear warmup
from 0 to its learning rate over `warmup_steps`, then a cosine decay to
LR_FLOOR x the rate at the last step. Each seed fixes the initial weights
and the batch order, the same for every arm.
"""

import dataclasses
import inspect
import math
import re
import time

import numpy as np

from normopt.experiments import lm_data
from normopt.experiments.specs import path_of

SETTINGS = {
    "full": {"width": 128, "depth": 2, "heads": 4, "context": 128, "batch_size": 16,
             "steps": 500, "warmup_steps": 25, "eval_every": 50, "val_windows": 128,
             "eval_batch": 64, "train_chars": 2_000_000, "val_chars": 200_000,
             "max_file_chars": 32_768, "seeds": 2, "sweep_steps": 200},
    "quick": {"width": 32, "depth": 1, "heads": 2, "context": 16, "batch_size": 4,
              "steps": 6, "warmup_steps": 2, "eval_every": 3, "val_windows": 8,
              "eval_batch": 8, "train_chars": 20_000, "val_chars": 4_000,
              "max_file_chars": 4_096, "seeds": 2, "sweep_steps": 3},
}
LR_FLOOR = 0.1  # the cosine decay ends at LR_FLOOR x the arm's learning rate

# The planned `normalization_map={pattern: norm}` of the map arm, matched on
# `variable.path` (an exact path first, then re.fullmatch of each pattern;
# unmatched variables use the wrapper's `normalization`, "l2"). Hidden
# matrices are the attention and MLP kernels; the embeddings, lm_head and
# every vector stay on l2 (lm_head is named here so the map states it).
LM_NORMALIZATION_MAP = {
    r"block\d+_(attention/(qkv|out)|mlp_(in|out))/kernel": "spectral",
    r"(token|position)_embedding/embeddings": "l2",
    r"lm_head/kernel": "l2",
}
MAP_DEFAULT = "l2"
# Muon orthogonalises every 2-d variable except those whose path contains
# "embedding" (exclude_embeddings=True) or matches an exclude_layers regex:
# the output head is excluded here, as its docstring asks.
MUON_EXCLUDE_LAYERS = ["lm_head"]


@dataclasses.dataclass(frozen=True)
class Arm:
    key: str
    label: str
    grid: tuple  # the --sweep learning rates

    def unavailable_reason(self):
        """None when the installed code can build this arm, else why it cannot."""
        return UNAVAILABLE[self.key]()


# Learning rates per arm for the default run: the best final validation loss
# of `normopt experiments lm --sweep` (seed 0, 200 steps; table in
# docs/EXPERIMENTS.md, section 5), run 2026-12-07 with every arm available.
# Muon's first grid (1e-3..1.6e-2) had its best at the top edge, so 3.2e-2 and
# 6.4e-2 were run too (both worse); its grid below now includes 3.2e-2.
LEARNING_RATES = {"adamw": 4e-3, "normalized_l2": 4e-3, "normalized_map": 4e-3, "muon": 1.6e-2}
LEARNING_RATE_SOURCE = "--sweep of 2026-12-07 (seed 0, 200 steps)"

_GRID = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
ARMS = (
    Arm("adamw", "AdamW", _GRID),
    Arm("normalized_l2", "Normalized AdamW (l2)", _GRID),
    Arm("normalized_map", "Normalized AdamW (map: spectral hidden, l2 rest)", _GRID),
    Arm("muon", "Muon", tuple(2 * lr for lr in _GRID) + (3.2e-2,)),
)


def map_support_missing():
    """What the installed normopt lacks for the map arm (an empty list: nothing)."""
    from normopt import NormalizedOptimizer, normalizations

    missing = []
    if "normalization_map" not in inspect.signature(NormalizedOptimizer.__init__).parameters:
        missing.append("NormalizedOptimizer has no `normalization_map` argument")
    if "spectral" not in normalizations.normalization_names():
        missing.append('"spectral" is not a registered normalization')
    return missing


def _map_reason():
    missing = map_support_missing()
    return "; ".join(missing) if missing else None


def _muon_reason():
    import keras

    if not hasattr(keras.optimizers, "Muon"):
        return f"keras {keras.__version__} has no keras.optimizers.Muon"
    return None


UNAVAILABLE = {"adamw": lambda: None, "normalized_l2": lambda: None,
               "normalized_map": _map_reason, "muon": _muon_reason}


def schedule(learning_rate, steps, warmup_steps):
    """Linear warmup 0 -> learning_rate, then cosine decay to LR_FLOOR x learning_rate."""
    import keras

    warmup = min(warmup_steps, steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(steps - warmup, 1), alpha=LR_FLOOR,
        warmup_target=learning_rate, warmup_steps=warmup)


def build_optimizer(key, learning_rate, fused=None):
    """The optimizer of arm `key`; `learning_rate` a float or a schedule."""
    import keras

    from normopt import NormalizedOptimizer

    if key == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if key == "normalized_l2":
        return NormalizedOptimizer(keras.optimizers.AdamW(learning_rate), "l2", fused=fused)
    if key == "normalized_map":
        return NormalizedOptimizer(keras.optimizers.AdamW(learning_rate), MAP_DEFAULT,
                                   normalization_map=LM_NORMALIZATION_MAP, fused=fused)
    if key == "muon":
        return keras.optimizers.Muon(learning_rate, exclude_layers=MUON_EXCLUDE_LAYERS)
    raise ValueError(f"unknown arm {key!r}; one of {[a.key for a in ARMS]}")


def map_norms(paths, mapping, default):
    """The norm each variable path gets under `mapping`, by the planned rules.

    An exact key equal to the path wins; otherwise every pattern is tried
    with re.fullmatch, and more than one match is an error; no match gives
    `default`.
    """
    out = {}
    for path in paths:
        if path in mapping:
            out[path] = mapping[path]
            continue
        hits = [p for p in mapping if re.fullmatch(p, path)]
        if len(hits) > 1:
            raise ValueError(f"variable {path!r} matches more than one pattern: {hits}")
        out[path] = mapping[hits[0]] if hits else default
    return out


def variable_table(model):
    """Per trainable variable: path, shape, its norm in the map arm, Muon's step for it."""
    import keras

    variables = model.trainable_variables
    norms = map_norms([v.path for v in variables], LM_NORMALIZATION_MAP, MAP_DEFAULT)
    muon = None
    if _muon_reason() is None:
        muon = keras.optimizers.Muon(exclude_layers=MUON_EXCLUDE_LAYERS)
    return [{"path": v.path, "shape": list(v.shape), "map_norm": norms[v.path],
             "muon_step": None if muon is None else
             ("adamw" if muon._should_use_adamw(v) else "muon")} for v in variables]


def settings_for(quick, overrides):
    cfg = dict(SETTINGS["quick" if quick else "full"])
    for key, name in (("steps", "iterations"), ("batch_size", "batch_size"),
                      ("seeds", "seeds")):
        if overrides.get(name) is not None:
            cfg[key] = overrides[name]
    return cfg


def build_model(cfg):
    from normopt.experiments import lm_model

    return lm_model.causal_lm(lm_data.VOCAB_SIZE, cfg["context"], width=cfg["width"],
                              depth=cfg["depth"], heads=cfg["heads"])


class _Trainer:
    """One model and optimizer; tf.function train and validation steps."""

    def __init__(self, model, optimizer):
        import keras
        import tensorflow as tf

        self.model, self.optimizer = model, optimizer
        variables = model.trainable_variables
        optimizer.build(variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        @tf.function
        def eval_step(x, y):
            return loss_fn(y, model(x, training=False))

        self.train_step, self.eval_step = train_step, eval_step

    def validation_loss(self, val_x, val_y, batch):
        """Mean next-character cross-entropy (nats) over every validation token."""
        total = 0.0
        for i in range(0, len(val_x), batch):
            n = len(val_x[i:i + batch])
            total += float(self.eval_step(val_x[i:i + batch], val_y[i:i + batch])) * n
        return total / len(val_x)


def train_run(key, learning_rate, corpus, cfg, steps, seed, fused=None, bar=None):
    """Trains arm `key` for `steps` steps from seed `seed`'s weights and batches.

    Curves: the training loss of every step (the batch's mean before the
    step's update), and the validation loss before training, every
    `eval_every` steps and after the last. A non-finite training loss stops
    the run (`final.nonfinite_from` says at which step).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = build_model(cfg)
    optimizer = build_optimizer(key, schedule(learning_rate, steps, cfg["warmup_steps"]), fused)
    trainer = _Trainer(model, optimizer)
    context = cfg["context"]
    starts = lm_data.train_batches(corpus.train, steps, cfg["batch_size"], context, seed)
    val_x, val_y = lm_data.windows(
        corpus.val, lm_data.validation_starts(corpus.val, cfg["val_windows"], context), context)
    val_x, val_y = tf.constant(val_x), tf.constant(val_y)

    train_loss, val_steps, val_loss = [], [0], []
    val_loss.append(trainer.validation_loss(val_x, val_y, cfg["eval_batch"]))
    step_seconds, nonfinite_from = [], None
    start = time.perf_counter()
    for step in range(steps):
        x, y = lm_data.windows(corpus.train, starts[step], context)
        tick = time.perf_counter()
        loss = float(trainer.train_step(tf.constant(x), tf.constant(y)))
        step_seconds.append(time.perf_counter() - tick)
        train_loss.append(loss)
        if bar is not None:
            bar.update(1)
        if not math.isfinite(loss):
            nonfinite_from = step
            if bar is not None:
                bar.update(steps - step - 1)
            break
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == steps:
            val_steps.append(step + 1)
            val_loss.append(trainer.validation_loss(val_x, val_y, cfg["eval_batch"]))
    seconds = time.perf_counter() - start
    tokens = cfg["batch_size"] * context
    # the first step traces the tf.function: throughput from the others
    timed = step_seconds[1:] or step_seconds
    return {
        "seed": seed,
        "learning_rate": learning_rate,
        "path": path_of(optimizer),
        "seconds": seconds,
        "first_step_seconds": step_seconds[0],
        "tokens_per_second": tokens * len(timed) / sum(timed),
        "curves": {"train_loss": train_loss, "val_steps": val_steps, "val_loss": val_loss},
        "final": {"train_loss": train_loss[-1], "val_loss": val_loss[-1] if
                  nonfinite_from is None else float("nan"),
                  "steps": len(train_loss), "nonfinite_from": nonfinite_from},
        "parameters": int(model.count_params()),
    }


def _summary(runs):
    vals = np.array([r["final"]["val_loss"] for r in runs], dtype=np.float64)
    paths = sorted({r["path"] for r in runs})
    return {
        "val_loss_mean": float(vals.mean()),
        "val_loss_min": float(vals.min()),
        "val_loss_max": float(vals.max()),
        # half the max - min range over the seeds (NaN when a seed diverged)
        "val_loss_spread": float((vals.max() - vals.min()) / 2),
        "train_loss_mean": float(np.mean([r["final"]["train_loss"] for r in runs])),
        "tokens_per_second": float(np.mean([r["tokens_per_second"] for r in runs])),
        "path": paths[0] if len(paths) == 1 else "/".join(paths),
    }


def _arm_record(arm, learning_rate, source):
    return {"key": arm.key, "label": arm.label, "learning_rate": learning_rate,
            "learning_rate_source": source}


def _prepare(quick, overrides, out_dir):
    cfg = settings_for(quick, overrides)
    corpus, cached = lm_data.load_corpus(out_dir, cfg["train_chars"], cfg["val_chars"],
                                         cfg["max_file_chars"])
    corpus_record = dict(corpus.describe(), cache_file=lm_data.corpus_path(
        out_dir, cfg["train_chars"], cfg["val_chars"], cfg["max_file_chars"]),
        cache_reused=cached, first_train_files=corpus.train_files[:5],
        first_val_files=corpus.val_files[:5])
    return cfg, corpus, corpus_record


def _model_record(cfg):
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    return {"parameters": int(model.count_params()), "width": cfg["width"],
            "depth": cfg["depth"], "heads": cfg["heads"], "context": cfg["context"],
            "vocab_size": lm_data.VOCAB_SIZE, "variables": variable_table(model)}


def _common(quick, seed, cfg, corpus_record):
    return {"quick": quick, "seed": seed, "settings": cfg, "corpus": corpus_record,
            "model": _model_record(cfg), "schedule": {
                "warmup_steps": cfg["warmup_steps"], "decay": "cosine",
                "floor": LR_FLOOR},
            "normalization_map": {"map": LM_NORMALIZATION_MAP, "default": MAP_DEFAULT},
            "muon_exclude_layers": MUON_EXCLUDE_LAYERS}


def run_lm(quick, seed, overrides, bar_factory, out_dir):
    """The comparison at LEARNING_RATES: every arm x `seeds` seeds (seed, seed + 1, ...)."""
    cfg, corpus, corpus_record = _prepare(quick, overrides, out_dir)
    seeds = [seed + i for i in range(cfg["seeds"])]
    fused = overrides.get("fused")
    ready = [a for a in ARMS if a.unavailable_reason() is None]
    arms = []
    with bar_factory(len(ready) * len(seeds) * cfg["steps"], "lm", "step") as bar:
        for arm in ARMS:
            record = _arm_record(arm, LEARNING_RATES[arm.key], LEARNING_RATE_SOURCE)
            reason = arm.unavailable_reason()
            if reason is not None:
                arms.append(dict(record, status="unavailable", reason=reason, runs=[]))
                continue
            runs = []
            for s in seeds:
                bar.set_postfix_str(f"{arm.label} seed {s}")
                runs.append(train_run(arm.key, LEARNING_RATES[arm.key], corpus, cfg,
                                      cfg["steps"], s, fused, bar))
            arms.append(dict(record, status="ran", reason=None, runs=runs,
                             summary=_summary(runs)))
    return dict(_common(quick, seed, cfg, corpus_record), experiment="lm", seeds=seeds,
                arms=arms)


def best_rate(runs):
    """The learning rate of the run with the lowest final validation loss (non-finite: last)."""
    def key(run):
        v = run["final"]["val_loss"]
        return v if v is not None and math.isfinite(v) else math.inf

    return min(runs, key=key)["learning_rate"]


def run_sweep(quick, seed, overrides, bar_factory, out_dir):
    """Each available arm at every rate of its grid, `sweep_steps` steps, seed `seed`."""
    cfg, corpus, corpus_record = _prepare(quick, overrides, out_dir)
    steps = cfg["sweep_steps"] if overrides.get("iterations") is None else cfg["steps"]
    fused = overrides.get("fused")
    ready = [a for a in ARMS if a.unavailable_reason() is None]
    arms = []
    with bar_factory(sum(len(a.grid) for a in ready) * steps, "lm-sweep", "step") as bar:
        for arm in ARMS:
            record = {"key": arm.key, "label": arm.label, "grid": list(arm.grid)}
            reason = arm.unavailable_reason()
            if reason is not None:
                arms.append(dict(record, status="unavailable", reason=reason, runs=[],
                                 best_learning_rate=None))
                continue
            runs = []
            for lr in arm.grid:
                bar.set_postfix_str(f"{arm.label} lr={lr:g}")
                runs.append(train_run(arm.key, lr, corpus, cfg, steps, seed, fused, bar))
            arms.append(dict(record, status="ran", reason=None, runs=runs,
                             best_learning_rate=best_rate(runs)))
    return dict(_common(quick, seed, cfg, corpus_record), experiment="lm-sweep",
                sweep_steps=steps, arms=arms)


def _headline(result):
    s, c = result["settings"], result["corpus"]
    steps = result.get("sweep_steps", s["steps"])
    return (f"{result['model']['parameters']:,}-parameter causal LM, {c['train_chars']:,} train / "
            f"{c['val_chars']:,} val characters ({c['train_files']} / {c['val_files']} files), "
            f"{steps} steps x batch {s['batch_size']} x context {s['context']}")


def command(args, overrides, bar_factory, environment):
    """`normopt experiments lm [--sweep]`: run, save JSON and PNG, print the table; exit code."""
    import sys

    from normopt import FusedPathUnavailable, extras
    from normopt.experiments import report

    overrides = dict(overrides, seeds=args.seeds)
    run = run_sweep if args.sweep else run_lm
    try:
        result = run(args.quick, args.seed, overrides, bar_factory, args.out)
    except FusedPathUnavailable as exc:
        print(f"normopt experiments: error: --path fused: {exc}", file=sys.stderr)
        return 2
    result["environment"] = environment
    plot_note = extras.plot_note("experiments")
    json_path, png_paths = report.save(result, args.out, plots=plot_note is None)
    print(f"\n== {result['experiment']}{' (quick)' if args.quick else ''}: {_headline(result)}")
    print(report.format_table(result))
    if args.sweep:
        chosen = {a["key"]: a["best_learning_rate"] for a in result["arms"]}
        print(f"chosen learning rates (lm.LEARNING_RATES): {chosen}")
    print(f"wrote {', '.join([json_path] + png_paths)}")
    if plot_note:
        print(plot_note)
    return 0
