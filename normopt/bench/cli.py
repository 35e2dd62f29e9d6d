"""`normopt bench [quick|norms|step|fit]`: argument parsing and the run.

    normopt bench                  quick default of both (well under 2 min here)
    normopt bench norms            norms per layer size, every implementation
    normopt bench step             whole optimizer steps on realistic variable sets
    normopt bench fit              whole model.fit steps of six reference models
    normopt bench fit --quick      the same six models, Adam only, few samples
    normopt bench fit --model M.keras --inners adam   a saved model of yours

Tables go to the terminal, every figure to `--json` and a PNG to `--plot`
(both default to files in `--out-dir`; without Matplotlib a note replaces
the PNG). A run on a busy machine says so and marks the figures it cannot
trust (normopt.bench.busy). Options a mode does not use are ignored; unset
ones take that mode's default (see DEFAULTS).
"""

import argparse
import os
import sys

from normopt import extras
from normopt.bench import busy, cases, fit_bench, fit_models, norm_impls, step_bench

MODES = ("quick", "norms", "step", "fit")
MAX_EXP = 30

# mode -> defaults of the options left unset on the command line.
DEFAULTS = {
    "quick": dict(min_exp=8, max_exp=20, exp_step=4, repeats=5, warmup=1,
                  norms=("l2", "avg_l1_l2", "max", "std"),
                  sets=("eight_1k", "mlp"), inners=("adam",),
                  wrappers=("normalized",), bandwidth_mib=128),
    "norms": dict(min_exp=8, max_exp=20, exp_step=2, repeats=7, warmup=2,
                  bandwidth_mib=256),
    "step": dict(repeats=20, warmup=3, bandwidth_mib=256),
    "fit": dict(),  # FIT_FULL / FIT_QUICK below
}
# `normopt bench fit` (full) and `--quick`. inners=None: every inner
# optimizer whose normalized step takes the fused path here
# (fit_bench.default_inners()).
FIT_FULL = dict(models=fit_models.MODELS, inners=None, repeats=15,
                steps_per_sample=3, warmup=3)
FIT_QUICK = dict(models=fit_models.MODELS, inners=("adam",), repeats=5,
                 steps_per_sample=2, warmup=1)
INNER_NAMES = tuple(dict.fromkeys(step_bench.INNERS + tuple(fit_bench.INNER_CANDIDATES)))
COMMON = dict(
    min_exp=8, max_exp=20, exp_step=2, repeats=7, warmup=2, bandwidth_mib=256,
    norms=None, sets=cases.STEP_SETS, inners=step_bench.INNERS,
    wrappers=step_bench.WRAPPERS, paths=step_bench.PATHS,
    impls=norm_impls.IMPLEMENTATIONS,
)


def _choices(kind, known, canonical=lambda x: x):
    """argparse type: a comma-separated list, each item one of `known`."""

    def parse(text):
        items = [canonical(t.strip()) for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list of {kind}")
        bad = [t for t in items if t not in known]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, bad))}; choose from "
                f"{', '.join(known)}"
            )
        return tuple(dict.fromkeys(items))

    return parse


def _norm_list(text):
    from normopt import normalizations

    known = normalizations.BUILTIN_NORMALIZATIONS
    return _choices("norm", known, normalizations.canonical_name)(text)


def _statistic_norm_list(text):
    """Norms the norms benchmark measures: those made of statistics, which
    every implementation computes (not spectral: `normopt bench step
    --wrappers normalized_spectral`)."""
    from normopt import header_tables, normalizations

    return _choices("norm", header_tables.STATISTIC_NORMS, normalizations.canonical_name)(text)


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    return parse


def _size_list(text):
    parse = _int_at_least(1)
    sizes = tuple(parse(t) for t in text.split(",") if t.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("empty list of sizes")
    too_big = [s for s in sizes if s > 2**MAX_EXP]
    if too_big:
        raise argparse.ArgumentTypeError(f"sizes above 2^{MAX_EXP}: {too_big}")
    return sizes


def add_arguments(parser):
    parser.add_argument("mode", nargs="?", default="quick", choices=MODES,
                        help="quick (default): a short run of both; norms; step; "
                        "fit: whole model.fit steps")
    g = parser.add_argument_group("norms benchmark")
    g.add_argument("--norms", type=_statistic_norm_list,
                   help="comma-separated built-in norms (default: all; quick: "
                   "l2,avg_l1_l2,max,std)")
    g.add_argument("--impls", type=_choices("implementation", norm_impls.IMPLEMENTATIONS),
                   help="comma-separated implementations (default: all; those "
                   "that cannot run here are listed as unavailable)")
    g.add_argument("--sizes", type=_size_list,
                   help="comma-separated element counts (overrides the exponents)")
    g.add_argument("--min-exp", type=_int_at_least(0), help="smallest size 2^MIN_EXP (default 8)")
    g.add_argument("--max-exp", type=_int_at_least(0),
                   help=f"largest size 2^MAX_EXP, at most {MAX_EXP} (default 20; full sweep 24)")
    g.add_argument("--exp-step", type=_int_at_least(1),
                   help="exponent step (default 2; quick 4)")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g = parser.add_argument_group("step benchmark")
    g.add_argument("--sets", type=_choices("variable set", cases.STEP_SETS),
                   help=f"comma-separated variable sets (default: all of {','.join(cases.STEP_SETS)}; "
                   "quick: eight_1k,mlp)")
    g.add_argument("--inners", type=_choices("inner optimizer", INNER_NAMES),
                   help="comma-separated inner optimizers. step: from "
                   f"{','.join(step_bench.INNERS)} (default: every one; quick: adam). fit: "
                   f"from {','.join(fit_bench.INNER_CANDIDATES)} (default: every one "
                   "whose normalized step takes the fused path here; --quick: adam)")
    g.add_argument("--wrappers", type=_choices("wrapper", step_bench.ALL_WRAPPERS),
                   help="comma-separated wrappers, from "
                   f"{','.join(step_bench.ALL_WRAPPERS)} (default: normalized,clipped; "
                   "quick: normalized)")
    g.add_argument("--paths", type=_choices("path", step_bench.PATHS),
                   help="comma-separated paths (default: plain,tf_graph,tf_xla,fused)")
    g.add_argument("--step-norm", type=_norm_list, default=("l2",),
                   help="the norm the wrappers use (default l2)")
    g = parser.add_argument_group(
        "fit benchmark",
        "full (default): the six reference models x every fused inner "
        "optimizer, 15 samples of 3 steps after 3 warm-up steps; --quick: "
        "the six models x adam, 5 samples of 2 steps after 1 (see "
        "docs/PERFORMANCE.md for runtimes)")
    g.add_argument("--quick", action="store_true",
                   help="fit: the short run (CI smoke tests: add --scale tiny)")
    g.add_argument("--models", type=_choices("model", fit_models.MODELS),
                   help=f"comma-separated reference models (default: {','.join(fit_models.MODELS)})")
    g.add_argument("--scale", choices=fit_models.SCALES, default="reference",
                   help="reference (default): the documented sizes; tiny: the same "
                   "architectures a few hundred times smaller, for smoke tests")
    g.add_argument("--model", metavar="PATH", dest="model_path",
                   help="time a saved .keras model on synthetic data of its input "
                   "shapes and dtypes (one input, a list or a dict) instead of "
                   "the reference models")
    g.add_argument("--batch-size", type=_int_at_least(1),
                   help="batch size (default: each reference model's own; --model: 32)")
    g.add_argument("--vocabulary", type=_int_at_least(1),
                   help="--model: integer inputs draw from [0, VOCABULARY) (default: "
                   "per input, the smallest input_dim of the Embedding layers it "
                   f"feeds, else {fit_models.DEFAULT_INT_BOUND})")
    g.add_argument("--steps-per-sample", type=_int_at_least(1),
                   help="fit: back-to-back steps per timed sample (default 3; quick 2)")
    g = parser.add_argument_group("timing and output")
    g.add_argument("--repeats", type=_int_at_least(1),
                   help="timed samples per case (default: norms 7, step 20, quick 5, "
                   "fit 15, fit --quick 5)")
    g.add_argument("--warmup", type=_int_at_least(0),
                   help="untimed calls first (default: norms 2, step 3, quick 1; fit: "
                   "warm-up steps through model.fit, 3, --quick 1)")
    g.add_argument("--bandwidth-mib", type=_int_at_least(1),
                   help="array size of the copy-bandwidth probe in MiB (default 256; quick 128)")
    g.add_argument("--out-dir", default="normopt-out",
                   help="where the default JSON and plot go (default normopt-out)")
    g.add_argument("--json", metavar="PATH", help="JSON output (default OUT_DIR/bench-MODE.json)")
    g.add_argument("--plot", metavar="PATH", help="PNG output (default OUT_DIR/bench-MODE.png)")
    g.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none unless stderr is a terminal)")
    parser.set_defaults(_bench_parser=parser)


def _resolve_fit(args):
    defaults = FIT_QUICK if args.quick else FIT_FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.inners is not None:
        bad = [i for i in args.inners if i not in fit_bench.INNER_CANDIDATES]
        if bad:
            raise ValueError(
                f"fit: unknown inner optimizer {', '.join(map(repr, bad))}; choose "
                f"from {', '.join(fit_bench.INNER_CANDIDATES)}")
    if args.model_path is not None:
        if not args.model_path.endswith(".keras"):
            raise ValueError(f"--model {args.model_path!r}: not a .keras file")
        if not os.path.isfile(args.model_path):
            raise ValueError(f"--model {args.model_path!r}: no such file")
    for name in ("json", "plot"):
        if getattr(args, name) is None:
            setattr(args, name, os.path.join(args.out_dir, f"bench-fit.{'json' if name == 'json' else 'png'}"))
    return args


def resolve(args):
    """Fills unset options from the mode's defaults and checks the ranges."""
    if args.mode == "fit":
        return _resolve_fit(args)
    if args.inners is not None:
        bad = [i for i in args.inners if i not in step_bench.INNERS]
        if bad:
            raise ValueError(
                f"{args.mode}: unknown inner optimizer {', '.join(map(repr, bad))}; "
                f"choose from {', '.join(step_bench.INNERS)}")
    defaults = {**COMMON, **DEFAULTS[args.mode]}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.norms is None:
        from normopt import header_tables

        args.norms = header_tables.STATISTIC_NORMS
    if args.sizes is None:
        if args.max_exp > MAX_EXP:
            raise ValueError(f"--max-exp {args.max_exp} is above {MAX_EXP}")
        if args.min_exp > args.max_exp:
            raise ValueError(
                f"bad size range: --min-exp {args.min_exp} is above --max-exp "
                f"{args.max_exp}"
            )
        args.sizes = tuple(cases.layer_sizes(args.min_exp, args.max_exp, args.exp_step))
    for name in ("json", "plot"):
        if getattr(args, name) is None:
            setattr(args, name, os.path.join(args.out_dir, f"bench-{args.mode}.{'json' if name == 'json' else 'png'}"))
    return args


def _settings(args):
    keys = ("mode", "norms", "impls", "sizes", "dtype", "sets", "inners",
            "wrappers", "paths", "step_norm", "repeats", "warmup", "bandwidth_mib")
    return {k: getattr(args, k) for k in keys}


def _command_line():
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        return "normopt " + " ".join(argv)
    return None


def _fit_settings(args):
    keys = ("mode", "quick", "models", "scale", "model_path", "inners", "batch_size",
            "vocabulary", "step_norm", "repeats", "steps_per_sample", "warmup")
    settings = {k: getattr(args, k) for k in keys}
    settings["jit_compile"] = False
    return settings


def _busy_verdict(env, cpu_start, payload, probes=()):
    """busy.machine_verdict of the run that began at `cpu_start`, recorded in
    payload["busy_machine"] (see normopt.bench.busy)."""
    cpus = env["cpu_count"]
    share = busy.other_cpu_share(cpu_start, busy.cpu_snapshot(), cpus)
    verdict = busy.machine_verdict(cpus, env["load_average_1_5_15_min"],
                                   payload["load_average_1_5_15_min_after"], share, probes)
    payload["busy_machine"] = verdict
    return verdict


def _write_plot(args, draw, env):
    """draw(title) writes the PNG, unless --no-plot; without the plotting
    library a one-line note replaces it (the table and JSON are written)."""
    if args.no_plot:
        return
    note = extras.plot_note("bench")
    if note:
        print(note)
        return
    draw(f"{env['cpu_model']}, {env['cpu_count']} CPUs, {env['date_utc']}")
    print(f"plot: {args.plot}")


def run_fit(args):
    """`normopt bench fit`: table on stdout, JSON and PNG (see fit_bench)."""
    import time

    import tensorflow as tf

    from normopt import progress as progress_output
    from normopt.bench import environment, fit_report, report

    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    env = environment.collect()
    cpu_start = busy.cpu_snapshot()
    print(f"normopt bench fit{' --quick' if args.quick else ''}: {env['cpu_model']}, "
          f"{env['cpu_count']} CPUs, TF {env['tensorflow']}, Keras {env['keras']}, op "
          f"library {'loaded' if env['op_library']['loaded'] else 'not loaded'}")
    probes = {}
    inners = args.inners or fit_bench.default_inners(args.step_norm[0], probes)
    settings = _fit_settings(args)
    settings["inners"] = inners
    payload = {"command": _command_line(), "settings": settings, "environment": env,
               "inner_probes": probes}
    models = [args.model_path] if args.model_path else args.models
    total = fit_bench.progress_total(len(models), len(inners), args.repeats)
    with progress_output.bar(total, "fit", "task", enabled=not args.no_progress) as bar:
        common = dict(norm=args.step_norm[0], repeats=args.repeats,
                      steps_per_sample=args.steps_per_sample, warmup=args.warmup)
        if args.model_path:
            result = fit_bench.fit(args.model_path, inners, batch_size=args.batch_size or 32,
                                   vocabulary=args.vocabulary, progress=bar, **common)
        else:
            result = fit_bench.run(args.models, inners, scale=args.scale,
                                   batch_size=args.batch_size, progress=bar, **common)
    payload["fit"] = result
    payload["runtime_s"] = time.perf_counter() - started
    payload["load_average_1_5_15_min_after"] = environment.load_average()
    verdict = _busy_verdict(env, cpu_start, payload)
    busy.flag(result["cases"], verdict)
    if busy.summary(verdict):
        print(busy.summary(verdict))
    print("\n" + fit_report.table(result))
    report.write_json(args.json, payload)
    print(f"\nJSON: {args.json}")
    _write_plot(args, lambda title: fit_report.plot(args.plot, result, title=title), env)
    print(f"runtime: {payload['runtime_s']:.0f} s")
    return 0


def run(args):
    try:
        resolve(args)
    except ValueError as exc:
        args._bench_parser.error(str(exc))
    if args.mode == "fit":
        return run_fit(args)
    import tensorflow as tf

    from normopt import progress as progress_output
    from normopt.bench import environment, norms_bench, report, timing

    tf.get_logger().setLevel("ERROR")  # tf.function retracing notices
    # norms_bench and step_bench draw tqdm bars on stderr: only on a terminal,
    # where the carriage-return redraws do not pile up as lines.
    progress = progress_output.live_bar_enabled(not args.no_progress, sys.stderr)
    env = environment.collect()
    cpu_start = busy.cpu_snapshot()
    probe_bytes = args.bandwidth_mib * 2**20
    probes = [timing.memory_bandwidth(probe_bytes)]
    print(f"normopt bench {args.mode}: {env['cpu_model']}, {env['cpu_count']} CPUs, "
          f"TF {env['tensorflow']}, Keras {env['keras']}, op library "
          f"{'loaded' if env['op_library']['loaded'] else 'not loaded'}")
    payload = {"command": _command_line(), "settings": _settings(args),
               "environment": env}
    norms_result = step_result = None
    if args.mode in ("quick", "norms"):
        norms_result = norms_bench.run(
            args.sizes, args.norms, args.impls, args.dtype, args.repeats,
            args.warmup, progress=progress,
        )
    if args.mode in ("quick", "step"):
        step_result = step_bench.run(
            args.sets, args.inners, args.wrappers, args.paths,
            args.step_norm[0], args.repeats, args.warmup, progress=progress,
        )
    probes.append(timing.memory_bandwidth(probe_bytes))
    bw = timing.reference_bandwidth(probes)
    bandwidth = {"bytes_per_s": bw, "method": probes[0]["method"],
                 "reference": "the higher of the probes before and after the run",
                 "probes": probes}
    payload["bandwidth"] = bandwidth
    payload["load_average_1_5_15_min_after"] = environment.load_average()
    verdict = _busy_verdict(env, cpu_start, payload, probes)
    print(f"memory bandwidth: {bw / 1e9:.1f} GB/s (before the run "
          f"{probes[0]['bytes_per_s'] / 1e9:.1f}, after {probes[1]['bytes_per_s'] / 1e9:.1f}; "
          f"{bandwidth['method']})")
    if busy.summary(verdict):
        print(busy.summary(verdict))
    if norms_result is not None:
        timing.add_percent_of_bandwidth(norms_result["cases"], bw)
        busy.flag(norms_result["cases"], verdict)
        payload["norms"] = norms_result
        print("\n" + report.norms_table(norms_result, bandwidth))
    if step_result is not None:
        timing.add_percent_of_bandwidth(step_result["cases"], bw)
        busy.flag(step_result["cases"], verdict)
        payload["step"] = step_result
        print("\n" + report.step_table(step_result, bandwidth))
    report.write_json(args.json, payload)
    print(f"\nJSON: {args.json}")
    _write_plot(args, lambda title: report.plot(args.plot, norms_result, step_result,
                                                title=title), env)
    return 0
