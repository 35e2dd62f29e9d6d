"""Whole optimizer steps on Keras's JAX and torch backends, each in its own process.

Keras fixes its backend when it is imported, so `normopt bench` (TensorFlow)
times the other backends in child processes:

    KERAS_BACKEND=jax python -m normopt.bench.backend_step --backend jax --sets big,mlp

prints one JSON object (the last line of stdout); `run(backend, ...)` starts
that child with KERAS_BACKEND set and reads the object back, or says why
there is none (backend not installed, the child failed). Variants, per
(variable set, inner optimizer), timed interleaved (timing.py):

    plain                the bare inner optimizer
    normalized           NormalizedOptimizer(inner, norm), fused=None (the
                         keras.ops path on these backends; on torch with
                         normopt.ops.torch_norms turned off)
    normalized_foreach   torch only: the same with it (the default there: the
                         norms and the scaling by torch._foreach_norm and
                         torch._foreach_mul)

    jax    `optimizer.stateless_apply(optimizer_vars, grads, trainable_vars)`
           under `jax.jit`, both states donated, as Keras's JAX training
           loop writes it; its record's `hlo` counts the compiled step's
           kernels (`hlo_counts`), which no load on the machine changes
    torch  `optimizer.apply(grads, variables)`, eager (Keras's torch
           optimizers update with torch._foreach_*)

Each record's `vs_plain` is its median over plain's, same run. Plain is
built twice, first and last (`PLAIN_AGAIN`), and its two copies are timed
in the same rounds and pooled: identical compiled JAX steps in one process
were seen to differ by 5-30% (more under load), the first built often the
faster, so a plain built only first favoured it. Plain's record keeps the
second copy's median over the first's (`plain_again_vs_first`), the noise
floor of every `vs_plain` of that run. Before the
timing, one step of every normalized variant from the initial state is
checked against the first step of plain (the inner optimizer) on gradients
divided by their norm in NumPy (float64): `max_rel_diff` (over all variables,
relative to max(|w|, 1e-3)). Gradients are constant arrays drawn like
step_bench's (seed 0).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from normopt.bench import cases, inners, timing

BACKENDS = ("jax", "torch")
# the second copy of plain, built after every other variant and pooled with
# the first (see the module docstring)
PLAIN_AGAIN = "plain (built last)"
INSTALL_HINT = {"jax": "pip install normopt[jax]", "torch": "pip install normopt[torch]"}
CHILD_TIMEOUT_S = 900


# ---------------------------------------------------------------- the parent


def installed(backend):
    """Whether `backend`'s package can be found (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(backend) is not None


def run(backend, sets, inner_names, norm="l2", repeats=20, warmup=3, python=None,
        timeout=CHILD_TIMEOUT_S):
    """{"backend", "status": ok|skipped|failed, ...}: the child's result
    (environment and cases) when it ran, else the reason."""
    if python is None and not installed(backend):
        return {"backend": backend, "status": "skipped",
                "reason": f"{backend} is not installed ({INSTALL_HINT[backend]})"}
    argv = [python or sys.executable, "-m", "normopt.bench.backend_step",
            "--backend", backend, "--sets", ",".join(sets),
            "--inners", ",".join(inner_names), "--norm", norm,
            "--repeats", str(repeats), "--warmup", str(warmup)]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "status": "failed",
                "reason": f"no result within {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": backend, "status": "failed",
                "reason": f"exit code {proc.returncode}: {tail}"}
    result = json.loads(lines[-1])
    result["runtime_s"] = time.perf_counter() - started  # the child's, start to end
    return result


# ----------------------------------------------------------------- the child


def _variants(backend):
    return ["plain", "normalized"] + (["normalized_foreach"] if backend == "torch" else [])


def _foreach_norms(variant):
    """The context a torch variant runs in: `_foreach_norm` on or off."""
    from normopt.ops import torch_norms

    return torch_norms.foreach_norms(variant == "normalized_foreach")


def _optimizer(inner, variant, norm):
    """The inner optimizer (plain) or NormalizedOptimizer of it."""
    base = inners.make_inner(inner)
    if variant == "plain":
        return base
    from normopt import NormalizedOptimizer

    return NormalizedOptimizer(base, normalization=norm)


# norm(g) without eps, float64 (the DESIGN.md table) for the check
_NUMPY_NORMS = {
    "l1": lambda x: np.abs(x).sum(),
    "l2": lambda x: np.sqrt((x * x).sum()),
    "avg_l1": lambda x: np.abs(x).mean(),
    "avg_l2": lambda x: np.sqrt((x * x).mean()),
    "max": lambda x: np.abs(x).max(),
    "std": lambda x: x.std(),
}


def _numpy_normalized(grads, norm, eps):
    """g / (norm(g) + eps) per tensor in float64, cast back; None for a norm
    the check does not cover."""
    formula = _NUMPY_NORMS.get(norm)
    if formula is None:
        return None
    return [(g.astype(np.float64) / (formula(g.astype(np.float64)) + eps)).astype(g.dtype)
            for g in grads]


def _max_rel_diff(got, want):
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - w)
                            / np.maximum(np.abs(w), 1e-3)))
               for g, w in zip(got, want))


_NO_KERNEL = frozenset(("parameter", "constant", "bitcast", "tuple", "get-tuple-element"))
_REDUCE_OPS = frozenset(("reduce", "reduce-window"))


def hlo_counts(text):
    """{"kernels", "reductions", "conditionals"} of a compiled XLA module
    (its `as_text()`), over the entry computation: kernels = instructions
    that run code (all but parameters, constants, bitcasts and tuples),
    reductions = those that reduce (a reduce, or a fusion whose computation
    holds one), conditionals = the lax.cond's. A conditional counts once,
    whatever its branches hold."""
    import re

    bodies, name, lines = {}, None, []
    for line in text.splitlines():
        head = re.match(r"(ENTRY )?%(\S+) .*\{$", line)
        if head:
            name, lines = ("ENTRY" if head.group(1) else head.group(2)), []
        elif line.startswith("}") and name is not None:
            bodies[name], name = lines, None
        elif name is not None:
            lines.append(line)

    def opcode(line):
        found = re.search(r"= \S+ ([a-z][\w-]*)\(", line)
        return found and found.group(1)

    def reduces(line):
        if opcode(line) in _REDUCE_OPS:
            return True
        called = re.search(r"calls=%([\w.-]+)", line)
        return bool(called) and any(opcode(x) in _REDUCE_OPS
                                    for x in bodies.get(called.group(1), ()))

    kernels = [x for x in bodies.get("ENTRY", ()) if opcode(x) and opcode(x) not in _NO_KERNEL]
    return {"kernels": len(kernels),
            "reductions": sum(map(reduces, kernels)),
            "conditionals": sum(opcode(x) == "conditional" for x in kernels)}


class _JaxStep:
    """A jitted stateless step of `opt` from `initial`, state donated;
    `hlo`: hlo_counts of the step compiled for its first gradients."""

    def __init__(self, opt, initial):
        import jax
        import keras

        variables = [keras.Variable(v) for v in initial]
        opt.build(variables)
        self.opt = opt
        self.opt_values = [v.value for v in opt.variables]
        self.initial = initial

        def step(opt_values, train_values, grads):
            train_values, opt_values = opt.stateless_apply(opt_values, grads, train_values)
            return opt_values, train_values

        self.jitted = jax.jit(step, donate_argnums=(0, 1))
        self.state = None
        self.hlo = None

    def first(self, grads):
        """One step from the initial state (fresh copies: donation)."""
        import jax.numpy as jnp

        opt_values = [jnp.array(v, copy=True) for v in self.opt_values]
        train = [jnp.asarray(w) for w in self.initial]
        if self.hlo is None:
            # compiled apart (the same XLA module), so that the timed calls
            # take jax.jit's own dispatch, as a training loop does
            self.hlo = hlo_counts(self.jitted.lower(opt_values, train, grads).compile().as_text())
        opt_values, train = self.jitted(opt_values, train, grads)
        self.state = (opt_values, train)
        return [np.asarray(t) for t in train]

    def call(self, grads):
        import jax

        def timed():
            self.state = self.jitted(self.state[0], self.state[1], grads)
            jax.block_until_ready(self.state)
        return timed


class _TorchStep:
    """opt.apply(grads, variables), eager, `_foreach_norm` on or off."""

    def __init__(self, opt, initial, variant="plain"):
        import keras

        self.variables = [keras.Variable(v) for v in initial]
        opt.build(self.variables)
        self.opt = opt
        self.variant = variant

    def first(self, grads):
        self.call(grads)()
        return [np.asarray(keras_to_numpy(v)) for v in self.variables]

    def call(self, grads):
        def timed():
            with _foreach_norms(self.variant):
                self.opt.apply(grads, self.variables)
        return timed


def keras_to_numpy(variable):
    from keras import ops

    return ops.convert_to_numpy(variable)


def _path_ran(opt, variant):
    if variant == "plain":
        return "plain"
    path = getattr(opt, "last_path", None)
    return getattr(path, "name", None) or str(path)


def measure_set(backend, set_name, inner, norm, repeats, warmup, seed=0):
    """Records of every variant of (set, inner) on this process's backend."""
    import keras

    shapes = cases.step_shapes(set_name)
    params = cases.parameter_count(shapes)
    rng = np.random.default_rng(seed)
    host_grads = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in shapes]
    initial = [rng.standard_normal(s, dtype=np.float32) * 0.05 for s in shapes]
    grads = [keras.ops.convert_to_tensor(g) for g in host_grads]
    if backend == "jax":
        make = lambda opt, initial, variant: _JaxStep(opt, initial)  # noqa: E731
    else:
        make = _TorchStep
    steps, calls, failed = {}, {}, {}
    reference = None  # plain comes first
    for variant in _variants(backend) + [PLAIN_AGAIN]:
        try:
            made = _optimizer(inner, "plain" if variant == PLAIN_AGAIN else variant, norm)
            steps[variant] = make(made, initial, variant)
        except Exception as exc:  # a variant this installation cannot run
            failed[variant] = f"{type(exc).__name__}: {exc}"
    if "plain" in failed:
        steps.pop(PLAIN_AGAIN, None)
    failed.pop(PLAIN_AGAIN, None)
    rel = {}
    for variant, step in list(steps.items()):
        try:
            if variant == PLAIN_AGAIN:
                step.first(grads)
            elif variant == "plain":
                # the reference: plain's first step on NumPy-normalized
                # gradients (its later, timed steps take the raw ones)
                normalized = _numpy_normalized(host_grads, norm, keras.config.epsilon())
                first = step.first([keras.ops.convert_to_tensor(g)
                                    for g in (normalized or host_grads)])
                reference = first if normalized is not None else None
            else:
                first = step.first(grads)
                if reference is not None:
                    rel[variant] = _max_rel_diff(first, reference)
            calls[variant] = step.call(grads)
        except Exception as exc:
            failed[variant] = f"{type(exc).__name__}: {exc}"
            steps.pop(variant)
    stats, again = _timed(calls, repeats, warmup)
    plain = stats.get("plain", {}).get("median_s")
    records = []
    for variant in _variants(backend):
        record = {"backend": backend, "set": set_name, "variables": len(shapes),
                  "params": params, "inner": inner, "variant": variant, "norm": norm,
                  "bytes_per_param": inners.bytes_per_param(inner, variant != "plain")}
        if variant in failed:
            record.update(status="unavailable", reason=failed[variant])
        else:
            seconds = stats[variant]["median_s"]
            record.update(status="ok", time=stats[variant],
                          path_ran=_path_ran(steps[variant].opt, variant),
                          gb_per_s=params * record["bytes_per_param"] / seconds / 1e9)
            if plain:
                record["vs_plain"] = seconds / plain
            if variant in rel:
                record["max_rel_diff"] = rel[variant]
            if variant == "plain" and again is not None:
                record["plain_again_vs_first"] = again
            if getattr(steps[variant], "hlo", None) is not None:
                record["hlo"] = steps[variant].hlo
        records.append(record)
    return records


def _timed(calls, repeats, warmup):
    """({variant: timing summary}, plain_again_vs_first or None): the calls
    timed interleaved (timing.py), plain's summary over the samples of both
    its copies."""
    if not calls:
        return {}, None
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    number = {k: timing.calls_per_sample(fn, 0.002) for k, fn in calls.items()}
    if PLAIN_AGAIN in number:
        number[PLAIN_AGAIN] = number["plain"]
    samples = timing.interleaved_samples(calls, repeats, number)
    again = None
    if PLAIN_AGAIN in samples:
        second = samples.pop(PLAIN_AGAIN)
        again = float(np.median(second) / np.median(samples["plain"]))
        samples["plain"] = samples["plain"] + second
    stats = {}
    for k, values in samples.items():
        stats[k] = timing.summarize(values)
        stats[k]["calls_per_sample"] = number[k]
    if again is not None:
        # rounds, as for every variant; each round timed both copies
        stats["plain"].update(repeats=repeats, copies=2)
    return stats, again


def child_environment(backend):
    import platform

    import keras

    from normopt.bench import environment

    module = __import__(backend)
    env = {"backend": keras.backend.backend(), backend: module.__version__,
           "keras": keras.version(), "python": platform.python_version(),
           "load_average_1_5_15_min": environment.load_average(),
           # whether the wrapper pulled TensorFlow in (it should not)
           "tensorflow_imported": "tensorflow" in sys.modules}
    if backend == "torch":
        env["torch_threads"] = module.get_num_threads()
    if backend == "jax":
        env["jax_devices"] = [str(d) for d in module.devices()]
    return env


def child_main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--sets", required=True)
    parser.add_argument("--inners", default="adam")
    parser.add_argument("--norm", default="l2")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != args.backend:
        parser.error(f"KERAS_BACKEND is {keras.backend.backend()!r}, not {args.backend!r}")
    records = []
    for set_name in args.sets.split(","):
        for inner in args.inners.split(","):
            records += measure_set(args.backend, set_name, inner, args.norm,
                                   args.repeats, args.warmup)
    env = child_environment(args.backend)
    result = {"backend": args.backend, "status": "ok", "environment": env,
              "variants": _variants(args.backend), "cases": records}
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
