"""Whole `model.fit` step time, per model, inner optimizer and variant.

For one model and one inner optimizer, four calls are timed:

    fwd_bwd           a compiled tf.function that draws the batch from the
                      same kind of iterator, computes the loss and returns
                      it with the gradients, and applies nothing (the floor
                      of any step), on its own copy of the model that no
                      optimizer has stepped
    plain             model.fit's step with the bare inner optimizer
    normalized_tf     ... with NormalizedOptimizer(inner, fused=False)
    normalized_fused  ... with NormalizedOptimizer(inner, fused=None); the
                      path it actually took (`opt.last_path.name`, "fused"
                      when the compiled op ran) is recorded, never assumed

"model.fit's step" is `model.train_function(iterator)`, the function fit
calls once per step, on an iterator over a tf.data dataset of one in-memory
batch built as fit builds it (the model's distribution strategy's
`experimental_distribute_dataset`). Each variant trains its own copy of the
model (same initial weights), compiled with `jit_compile=False` so that the
fused op can run on any device. Warm-up: `model.fit(dataset, epochs=1,
steps_per_epoch=warmup)` (this traces the step), then one untimed call on the
timing iterator.

Samples are interleaved: round r takes sample r of every call (in an order
rotated by one each round) before any takes sample r+1, so load changes on a
shared machine hit all variants alike. A sample is `steps_per_sample`
back-to-back steps; its value is their mean time per step. Every sample is
kept. Ratios are of medians of the same (model, inner) group:

    fused_vs_tf     = median(normalized_tf) / median(normalized_fused)
    fused_vs_plain  = median(plain) / median(normalized_fused)
    optimizer_share = (median(step) - median(fwd_bwd)) / median(step)

The optimizer share includes Keras's own per-step bookkeeping outside the
gradient computation (loss tracker, metrics), which the plain variant shows
with no normalization at all. It also includes what an optimizer's sparse
updates cost the next forward pass: after one scatter into a TF resource
variable (Keras's sparse SGD, Adagrad, RMSprop, ... on an Embedding), TF
keeps that variable in copy-on-read mode, and every later read of it copies
the whole table. The baseline's own model is never stepped for that reason;
on a plain model that had been, the 100,000 x 64 table's copy made the
baseline read 2-3x slower.

Which inner optimizers are benchmarked by default comes from one place,
`fused_inners()`: every registered candidate (INNER_CANDIDATES) whose
NormalizedOptimizer step takes the "fused" path on this machine, so an inner
optimizer that gains a fused kernel is picked up without changing this file.
"""

import numpy as np

from normopt.bench import fit_models, timing
from normopt.bench.inners import INNER_CANDIDATES, make_inner

VARIANTS = ("plain", "normalized_tf", "normalized_fused")
BASELINE = "fwd_bwd"
CALLS = (BASELINE,) + VARIANTS


# Candidates that are the same fused kernel as one listed before them, left
# out of the default list (still selectable by name).
SAME_KERNEL_AS = {"sgd_nesterov": "sgd_momentum"}
# When no candidate takes the fused path (op library not loaded), these are
# timed anyway; their normalized_fused variant then records path "tf".
FALLBACK_INNERS = ("sgd_momentum", "adam", "adamw")


def probe_path(name, norm="l2"):
    """(path name, reason) of one eager NormalizedOptimizer(inner) step."""
    import keras
    import tensorflow as tf

    from normopt import NormalizedOptimizer

    opt = NormalizedOptimizer(make_inner(name), normalization=norm, fused=None)
    variable = keras.Variable(np.full((4, 4), 0.5, np.float32), name="probe")
    opt.apply([tf.ones((4, 4))], [variable])
    path = opt.last_path
    return path.name, path.reason


def fused_inners(candidates=None, norm="l2", probes=None):
    """Names of the candidates whose normalized step takes the "fused" path.

    In INNER_CANDIDATES order, leaving out SAME_KERNEL_AS duplicates unless
    named in `candidates`. `probes`, a dict, receives every candidate's
    {"path", "reason"} (or "error").
    """
    names = list(candidates) if candidates is not None else [
        n for n in INNER_CANDIDATES if n not in SAME_KERNEL_AS
    ]
    found = []
    for name in names:
        try:
            path, reason = probe_path(name, norm)
        except Exception as exc:  # an optimizer this Keras lacks, or a bug
            if probes is not None:
                probes[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if probes is not None:
            probes[name] = {"path": path, "reason": reason}
        if path == "fused":
            found.append(name)
    return tuple(found)


def default_inners(norm="l2", probes=None):
    """fused_inners(), or FALLBACK_INNERS when none is fused here."""
    return fused_inners(norm=norm, probes=probes) or FALLBACK_INNERS


def make_optimizer(inner, variant, norm):
    from normopt import NormalizedOptimizer

    base = make_inner(inner)
    if variant == "plain":
        return base
    fused = None if variant == "normalized_fused" else False
    return NormalizedOptimizer(base, normalization=norm, fused=fused)


def _dataset(x, y):
    import tensorflow as tf

    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _timing_iterator(model, dataset):
    """An iterator as model.fit builds one (TFEpochIterator)."""
    return iter(model.distribute_strategy.experimental_distribute_dataset(dataset))


def _sync(result):
    import tensorflow as tf

    tf.nest.map_structure(
        lambda t: t.numpy() if hasattr(t, "numpy") else t, result
    )


def _fit_call(model, dataset, warmup):
    """Warm `model` up through model.fit; return its zero-arg synced step."""
    model.fit(dataset, epochs=1, steps_per_epoch=max(1, warmup), verbose=0,
              shuffle=False)
    iterator = _timing_iterator(model, dataset)

    def step():
        return model.train_function(iterator)

    _sync(step())  # traces for this iterator if its spec differs from fit's
    return step


def fwd_bwd_function(model):
    """tf.function(iterator) -> (loss, gradients) of one batch, nothing applied.

    The gradients are outputs, not control dependencies of the loss: Grappler
    prunes stateless ops that only a control edge needs, and such a baseline
    timed the forward pass alone.
    """
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(jit_compile=False)
    def fwd_bwd(iterator):
        x, y = next(iterator)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        return loss, tape.gradient(loss, variables)

    return fwd_bwd


def baseline_model(build, inner, loss):
    """A fresh copy of the model for the fwd_bwd baseline, compiled with the
    plain inner optimizer (for compute_loss) and never stepped: no optimizer
    update has put its variables in TF's copy-on-read mode."""
    model = build()
    model.compile(optimizer=make_inner(inner), loss=loss, jit_compile=False)
    return model


def _fwd_bwd_call(model, dataset):
    """Zero-arg synced call of fwd_bwd_function(model) on a fit-like iterator."""
    iterator = _timing_iterator(model, dataset)
    fwd_bwd = fwd_bwd_function(model)

    def step():
        return fwd_bwd(iterator)[0]

    _sync(step())
    return step


def _path_of(model, variant):
    if variant == "plain":
        return "plain", None
    opt = model.optimizer
    if not hasattr(opt, "last_path") and hasattr(opt, "inner_optimizer"):
        opt = opt.inner_optimizer  # a LossScaleOptimizer around ours
    path = getattr(opt, "last_path", None)
    if path is None:
        return None, "the optimizer recorded no path"
    return path.name, path.reason


def run_group(model_name, build, x, y, inner, *, loss, norm="l2", repeats=15,
              steps_per_sample=3, warmup=3, params=None, batch_size=None,
              on_progress=None):
    """Times the four calls of one (model, inner optimizer); list of records."""
    calls, paths, failed = {}, {}, {}
    dataset = _dataset(x, y)
    for variant in VARIANTS:
        try:
            model = build()
            model.compile(optimizer=make_optimizer(inner, variant, norm),
                          loss=loss, jit_compile=False)
            calls[variant] = _fit_call(model, dataset, warmup)
            paths[variant] = _path_of(model, variant)
        except Exception as exc:
            failed[variant] = f"{type(exc).__name__}: {exc}"
        if on_progress:
            on_progress()
    try:
        calls = {BASELINE: _fwd_bwd_call(baseline_model(build, inner, loss), dataset),
                 **calls}
        paths[BASELINE] = ("none", None)
    except Exception as exc:
        failed[BASELINE] = f"{type(exc).__name__}: {exc}"
    if on_progress:
        on_progress()
    samples = timing.interleaved_samples(
        calls, repeats, dict.fromkeys(calls, steps_per_sample),
        on_round=on_progress, finish=_sync) if calls else {}
    if not calls and on_progress:
        for _ in range(repeats):
            on_progress()
    records = []
    for name in CALLS:
        record = {
            "model": model_name, "params": params, "batch_size": batch_size,
            "inner": inner, "variant": name, "norm": None if name in ("plain", BASELINE) else norm,
        }
        if name in failed:
            record.update(status="failed", error=failed[name])
        else:
            stats = timing.summarize(samples[name])
            stats["steps_per_sample"] = steps_per_sample
            path, reason = paths[name]
            record.update(status="ok", time=stats, samples_s=samples[name],
                          path_ran=path, path_reason=reason)
        records.append(record)
    _add_ratios(records)
    return records


def _add_ratios(records):
    median = {r["variant"]: r["time"]["median_s"] for r in records if r["status"] == "ok"}
    base = median.get(BASELINE)
    for r in records:
        if r["status"] != "ok" or r["variant"] == BASELINE:
            continue
        t = r["time"]["median_s"]
        if base is not None:
            r["fwd_bwd_median_s"] = base
            r["optimizer_share"] = (t - base) / t
        if r["variant"] == "normalized_fused":
            if "normalized_tf" in median:
                r["fused_vs_tf"] = median["normalized_tf"] / t
            if "plain" in median:
                r["fused_vs_plain"] = median["plain"] / t



def run(models, inners, *, scale="reference", norm="l2", repeats=15,
        steps_per_sample=3, warmup=3, batch_size=None, seed=0, progress=None):
    """Times every reference model x inner optimizer; {"cases": [...]}.

    `progress`: a normopt.progress bar (or None).
    """
    cases = []
    for name in models:
        case = fit_models.reference_model(name, scale)
        cases += _run_model(
            name, case.build, inners, batch_size or case.batch_size,
            classification=True, norm=norm, repeats=repeats,
            steps_per_sample=steps_per_sample, warmup=warmup, seed=seed,
            progress=progress, note=case.note,
        )
    return {"cases": cases}


def progress_total(n_models, n_inners, repeats):
    """Units of a run's progress bar: per group, 4 builds and `repeats` rounds."""
    return n_models * n_inners * (len(CALLS) + repeats)


def _run_model(name, build, inners, batch_size, *, classification, norm,
               repeats, steps_per_sample, warmup, seed, progress, note=None,
               vocabulary=None, loss=None):
    import keras

    keras.utils.set_random_seed(seed)
    first = build()
    specs = fit_models.input_specs(first, batch_size, vocabulary)
    x = fit_models.synthetic_inputs(specs, seed, fit_models.input_structure(first))
    y = fit_models.synthetic_targets(first, batch_size, classification, seed + 1)
    weights = first.get_weights()
    params = int(sum(int(np.prod(v.shape)) for v in first.trainable_variables))
    del first

    def same_start():
        model = build()
        model.set_weights(weights)
        return model

    if loss is None:
        loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True)
                if classification else "mse")
    records = []
    for inner in inners:
        if progress is not None:
            progress.set_postfix_str(f"{name} {inner}")
        group = run_group(
            name, same_start, x, y, inner, loss=loss, norm=norm, repeats=repeats,
            steps_per_sample=steps_per_sample, warmup=warmup, params=params,
            batch_size=batch_size,
            on_progress=progress.update if progress is not None else None,
        )
        for r in group:
            r["inputs"] = [{"shape": list(s), "dtype": d, "int_bound": b} for s, d, b in specs]
            if note:
                r["note"] = note
        records += group
    return records


def _builder(model):
    """A zero-arg builder of fresh copies of `model` (Model, callable or path)."""
    import keras

    if isinstance(model, str):
        return lambda: keras.models.load_model(model, compile=False)
    if isinstance(model, keras.Model):
        def clone():
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
            return copy
        return clone
    if callable(model):
        return model
    raise TypeError(
        "model must be a keras.Model, a path to a .keras file or a zero-argument "
        f"callable returning a new model, not {type(model).__name__}"
    )


def fit(model, inners=None, *, batch_size=32, norm="l2", repeats=15,
        steps_per_sample=3, warmup=3, loss=None, vocabulary=None, seed=0,
        progress=False, name=None):
    """Times model.fit steps of `model` on synthetic data; returns {"cases": [...]}.

    `model`: a keras.Model (each variant trains a `keras.models.clone_model`
    copy with the same weights; a subclassed model cannot be cloned, pass a
    callable instead), a path to a saved `.keras` model, or a zero-argument
    callable returning a new model. Inputs are synthetic with the model's
    input shapes and dtypes, in its input structure (one input, a list or a
    dict; unknown dimensions past the batch become 16; integer inputs draw
    from [0, vocabulary), by default per input from [0, the smallest
    input_dim of the Embedding layers it feeds)). `loss` defaults to mean
    squared error against normal targets of each output's shape (the loss
    does not change the optimizer's cost). `inners`: names from INNER_CANDIDATES, default `default_inners()`.
    Records are as in `run`. `progress`: True for a normopt.progress bar on
    stderr (a live bar on a terminal, plain lines otherwise), or a bar to use.
    """
    import contextlib

    from normopt import progress as progress_output

    build = _builder(model)
    inners = tuple(inners) if inners else default_inners(norm)
    if name is None:
        name = model if isinstance(model, str) else getattr(model, "name", "model")
    if isinstance(progress, bool):
        total = progress_total(1, len(inners), repeats)
        bar = progress_output.bar(total, "fit", "task", enabled=progress)
    else:
        bar = contextlib.nullcontext(progress)
    with bar as bar:
        cases = _run_model(
            str(name), build, inners, batch_size, classification=False, norm=norm,
            repeats=repeats, steps_per_sample=steps_per_sample, warmup=warmup,
            seed=seed, progress=bar, vocabulary=vocabulary, loss=loss,
        )
    return {"cases": cases}
