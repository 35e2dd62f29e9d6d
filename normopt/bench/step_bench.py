"""Time per whole optimizer step, per variable set, inner optimizer and path.

Gradients are precomputed constant tensors, so only `opt.apply(grads, vars)`
inside a `tf.function` is timed. Paths:

    plain     the inner Keras optimizer alone, no normalization (graph)
    tf_graph  wrapper with fused=False in tf.function: pure TF
    tf_xla    wrapper with fused=False in tf.function(jit_compile=True)
    fused     wrapper with fused=True (the compiled op); which path actually
              ran is read back from `wrapper.last_path`

All paths of one (variable set, inner optimizer) are timed interleaved
(`timing.time_calls_interleaved`) and every ratio is against the tf_graph
path of the same wrapper in the same run:

    speedup = time(tf_graph) / time(path)

Achieved bandwidth uses the minimum memory traffic of a step in bytes per
fp32 parameter (B/param below), over the median step time:

    Adam:          normalized 32 = read g twice, read var/m/v, write var/m/v
                   plain      28 = read g, var, m, v; write var, m, v
    SGD-nesterov:  normalized 24 = read g twice, read var/m, write var/m
                   plain      20
"""

import numpy as np

from normopt.bench import cases, inners, timing

# One inner optimizer per fused rule family.
INNERS = inners.STEP_INNERS
# The default wrappers, and every one (unit-wise and global normalization,
# adaptive gradient clipping per unit, the spectral norm per tensor, whatever
# the run's norm: --wrappers).
WRAPPERS = ("normalized", "clipped")
ALL_WRAPPERS = WRAPPERS + ("normalized_unit", "normalized_global", "adaptive",
                           "normalized_spectral")
PATHS = ("plain", "tf_graph", "tf_xla", "fused")
CLIPNORM = 1.0


def bytes_per_param(inner, path):
    return inners.bytes_per_param(inner, path != "plain")


make_inner = inners.make_inner


def make_optimizer(inner, wrapper, path, norm):
    """The optimizer of one path (plain: the bare inner optimizer)."""
    from normopt import AdaptiveClippedOptimizer, ClippedOptimizer, NormalizedOptimizer

    base = make_inner(inner)
    if path == "plain":
        return base
    fused = path == "fused"
    if wrapper == "normalized":
        return NormalizedOptimizer(base, normalization=norm, fused=fused)
    if wrapper == "clipped":
        return ClippedOptimizer(base, normalization=norm, clipnorm=CLIPNORM, fused=fused)
    if wrapper in ("normalized_unit", "normalized_global"):
        return NormalizedOptimizer(base, normalization=norm, fused=fused,
                                   granularity=wrapper.split("_")[1])
    if wrapper == "adaptive":
        return AdaptiveClippedOptimizer(base, normalization=norm, fused=fused)
    if wrapper == "normalized_spectral":
        return NormalizedOptimizer(base, normalization="spectral", fused=fused)
    raise KeyError(f"unknown wrapper {wrapper!r}; known: {ALL_WRAPPERS}")


def make_step(opt, grads, variables, path):
    """The zero-arg timed call: one opt.apply in a tf.function, synced."""
    import tensorflow as tf

    opt.build(variables)

    def step():
        opt.apply(grads, variables)
        return opt.iterations

    compiled = tf.function(step, jit_compile=path == "tf_xla")
    return lambda: compiled().numpy()


def _variables(initial):
    import keras

    return [keras.Variable(v, name=f"v{i}") for i, v in enumerate(initial)]


def _path_ran(opt, path):
    return "plain" if path == "plain" else getattr(opt.last_path, "name", None)


def run_set(set_name, inners, wrappers, paths, norm="l2", repeats=20,
            warmup=3, seed=0, on_case=None):
    """Times every (inner, wrapper, path) on one variable set."""
    import tensorflow as tf

    shapes = cases.step_shapes(set_name)
    params = cases.parameter_count(shapes)
    rng = np.random.default_rng(seed)
    grads = [
        tf.constant(rng.standard_normal(s, dtype=np.float32) * 1e-2)
        for s in shapes
    ]
    initial = [rng.standard_normal(s, dtype=np.float32) * 0.05 for s in shapes]
    results = []
    for inner in inners:
        variants = [("none", "plain")] if "plain" in paths else []
        variants += [(w, p) for w in wrappers for p in paths if p != "plain"]
        calls, meta, failed = {}, {}, {}
        for wrapper, path in variants:
            key = (wrapper, path)
            try:
                opt = make_optimizer(inner, wrapper, path, norm)
                call = make_step(opt, grads, _variables(initial), path)
                call()  # trace, compile, build slots
            except Exception as exc:  # FusedPathUnavailable and real failures
                failed[key] = f"{type(exc).__name__}: {exc}"
            else:
                calls[key] = call
                meta[key] = _path_ran(opt, path)
            if on_case:
                on_case()
        stats = timing.time_calls_interleaved(calls, repeats, warmup) if calls else {}
        for wrapper, path in variants:
            key = (wrapper, path)
            record = {
                "set": set_name,
                "variables": len(shapes),
                "params": params,
                "inner": inner,
                "wrapper": wrapper,
                "path": path,
                "norm": norm,
                "bytes_per_param": bytes_per_param(inner, path),
            }
            if key in failed:
                record.update(status="unavailable", reason=failed[key])
            else:
                seconds = stats[key]["median_s"]
                gbs = params * record["bytes_per_param"] / seconds / 1e9
                record.update(
                    status="ok", time=stats[key], path_ran=meta[key], gb_per_s=gbs
                )
            results.append(record)
        _add_ratios(results, set_name, inner, wrappers)
    return results


def _add_ratios(results, set_name, inner, wrappers):
    """speedup_vs_tf_graph on every record of (set, inner), per wrapper."""
    mine = [r for r in results if r["set"] == set_name and r["inner"] == inner]

    def median(wrapper, path):
        for r in mine:
            if r["wrapper"] == wrapper and r["path"] == path and r["status"] == "ok":
                return r["time"]["median_s"]
        return None

    for r in mine:
        if r["status"] != "ok":
            continue
        if r["path"] == "plain":
            r["speedup_vs_tf_graph"] = {
                w: median(w, "tf_graph") / r["time"]["median_s"]
                for w in wrappers
                if median(w, "tf_graph")
            }
        else:
            base = median(r["wrapper"], "tf_graph")
            if base:
                r["speedup_vs_tf_graph"] = base / r["time"]["median_s"]


def run(sets, inners, wrappers, paths, norm="l2", repeats=20, warmup=3,
        progress=True):
    """Runs every set; returns {"cases": [...]} (one record per measurement)."""
    from normopt import progress as progress_output

    per_set = len(inners) * (
        ("plain" in paths) + len(wrappers) * len([p for p in paths if p != "plain"])
    )
    results = []
    with progress_output.live_bar(len(sets) * per_set, "step", "case",
                                  enabled=progress) as bar:
        for name in sets:
            bar.set_postfix_str(name)
            results += run_set(
                name, inners, wrappers, paths, norm, repeats, warmup,
                on_case=bar.update,
            )
    return {"cases": results}
