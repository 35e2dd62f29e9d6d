"""`normopt experiments NAME [--quick] [--out DIR]`: run, tabulate, save, plot.

    normopt experiments convex            # quadratic, gap to the optimum
    normopt experiments lr-sweep          # Adam vs Normalized Adam over lr
    normopt experiments mlp [--dataset digits|mnist]
    normopt experiments cnn [--dataset digits|cifar10]
    normopt experiments lm [--sweep]      # small causal LM: AdamW, normalized, Muon
    normopt experiments all --quick       # everything but lm, tiny sizes

Writes <out>/<name>.json (every curve, settings, path taken) and
<out>/<name>.png, and prints a summary table per experiment.
"""

import argparse
import os
import sys

from normopt import extras

CHOICES = ("convex", "lr-sweep", "mlp", "cnn", "lm", "all")
DEFAULT_OUT = os.path.join("normopt-out", "experiments")
DEFAULT_DATASET = {"mlp": "digits", "cnn": "digits"}
FUSED_CHOICES = {"auto": None, "fused": True, "tf": False}
ALLOWED_DATASETS = {"mlp": ("digits", "mnist"), "cnn": ("digits", "cifar10")}
QUADRATIC = ("convex", "lr-sweep")  # the experiments on problems.make_quadratic


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**31 - 1:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**31 - 1), got {value}")
    return value


def add_arguments(parser):
    parser.add_argument("name", choices=CHOICES, help="which experiment (all: every one but lm, in order)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds per experiment): a smoke test, not a result")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder for JSON and PNG files (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    parser.add_argument("--dataset", choices=("digits", "mnist", "cifar10"), default=None,
                        help="mlp: digits (default) or mnist; cnn: digits (default) or cifar10. "
                             "mnist/cifar10 come from keras.datasets (cache or download)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="override the epochs of mlp and cnn")
    parser.add_argument("--iterations", type=_positive_int, default=None,
                        help="override the iterations of convex and lr-sweep, the steps of lm")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="override the batch size of mlp, cnn and lm")
    parser.add_argument("--sweep", action="store_true",
                        help="lm: sweep each arm's learning rate (short runs, --seed only)")
    parser.add_argument("--seeds", type=_positive_int, default=None,
                        help="lm: how many seeds (--seed, --seed + 1, ...; default 2)")
    parser.add_argument("--path", choices=tuple(FUSED_CHOICES), default="auto",
                        help="wrapper step path: auto (compiled op where it runs, the default), "
                             "fused (require it) or tf (pure TensorFlow)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress output (a live bar on a terminal, "
                             "one line per finished run otherwise)")


def _bar_factory(disabled):
    """bar_factory(total, desc, unit) for the suite: normopt.progress bars on stderr."""
    from normopt import progress

    def factory(total, desc, unit):
        return progress.bar(total, desc, unit, stream=sys.stderr, enabled=not disabled)

    return factory


def _fail(message):
    print(f"normopt experiments: error: {message}", file=sys.stderr)
    return 2


def requirements(args):
    """(module, extra) pairs of the experiments named (checked by normopt.cli):
    the convex problem and the digits dataset come from scikit-learn. The
    plots are optional (see `run`)."""
    from normopt.experiments.suite import NAMES

    names = NAMES if args.name == "all" else (args.name,)
    on_digits = [n for n in names if n in ALLOWED_DATASETS
                 and (_dataset_choice(args, n) or "digits") == "digits"]
    if on_digits or any(n in QUADRATIC for n in names):
        return [("sklearn", "experiments")]
    return []


def _dataset_choice(args, name):
    if args.dataset in (None, "digits"):
        return "digits"
    return args.dataset if args.dataset in ALLOWED_DATASETS[name] else None


def run(args):
    from normopt import FusedPathUnavailable
    from normopt.experiments import data, report, suite

    names = list(suite.NAMES) if args.name == "all" else [args.name]
    if args.name != "lm" and (args.sweep or args.seeds is not None):
        return _fail(f"--sweep and --seeds apply to lm only, not {args.name}")
    needs_data = [n for n in names if n in ALLOWED_DATASETS]
    if args.dataset not in (None, "digits"):
        wrong = [n for n in needs_data if _dataset_choice(args, n) is None]
        if args.name != "all" and (not needs_data or wrong):
            allowed = {n: ALLOWED_DATASETS[n] for n in ALLOWED_DATASETS}
            return _fail(f"--dataset {args.dataset} does not apply to {args.name}; "
                         f"datasets per experiment: {allowed}")
    # Load every dataset before any training, so a missing download fails fast.
    datasets = {}
    try:
        for n in needs_data:
            choice = _dataset_choice(args, n) or "digits"
            if choice not in datasets:
                datasets[choice] = data.load_dataset(choice, args.seed)
    except data.DatasetUnavailable as exc:
        return _fail(str(exc))

    overrides = {"epochs": args.epochs, "iterations": args.iterations,
                 "batch_size": args.batch_size, "fused": FUSED_CHOICES[args.path]}
    bars = _bar_factory(args.no_progress)
    if args.name == "lm":  # its own runs and outputs: the comparison or --sweep
        from normopt.experiments import lm

        return lm.command(args, overrides, bars, _environment(args))
    runners = {"convex": suite.run_convex, "lr-sweep": suite.run_lr_sweep,
               "mlp": suite.run_mlp, "cnn": suite.run_cnn}
    for name in names:
        extra = ()
        if name in ALLOWED_DATASETS:
            extra = (datasets[_dataset_choice(args, name) or "digits"],)
        try:
            result = runners[name](args.quick, args.seed, overrides, bars, *extra)
        except FusedPathUnavailable as exc:  # --path fused where the op cannot run
            return _fail(f"--path fused: {exc}")
        result["environment"] = _environment(args)
        plot_note = extras.plot_note("experiments")
        json_path, png_paths = report.save(result, args.out, plots=plot_note is None)
        print(f"\n== {name}{' (quick)' if args.quick else ''}: {_headline(result)}")
        print(report.format_table(result))
        print(f"wrote {', '.join([json_path] + png_paths)}")
        if plot_note:
            print(plot_note)
    return 0


def _headline(result):
    if "problem" in result:
        p = result["problem"]
        return (f"{p['dim']}-d quadratic, cond(Q) {p['condition_number']:.3g}, "
                f"L* {p['optimum']:.6g}, {result['settings']['iterations']} iterations")
    d, s = result["dataset"], result["settings"]
    return (f"{d['name']} {d['train_examples']} train / {d['test_examples']} test, "
            f"{s['epochs']} epochs, batch {s['batch_size']}")


def _environment(args):
    import keras
    import numpy
    import tensorflow as tf

    import normopt

    return {"normopt": normopt.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__,
            "arguments": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
