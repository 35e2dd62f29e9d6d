"""`normopt` command line: one subcommand per module, imported on use.

    normopt demo           train a small model: Adam vs normalized vs clipped
    normopt info           versions, op library, CUDA, Numba/CuPy
    normopt bench ...      norms per layer size and whole optimizer steps
    normopt experiments .. the original wrapper's experiments, with plots
"""

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help); each module has add_arguments(parser)
# and run(args) -> exit code.
SUBCOMMANDS = {
    "demo": ("normopt.demo", "train a small model with plain, normalized and clipped Adam"),
    "info": ("normopt.info", "print versions, op library status, CUDA, Numba/CuPy"),
    "bench": ("normopt.bench.cli", "benchmark norms per layer size and optimizer steps"),
    "experiments": ("normopt.experiments.cli", "reproduce the original wrapper's experiments"),
}


def _available():
    found = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        found[name] = (module, help_text)
    return found


def build_parser():
    parser = argparse.ArgumentParser(
        prog="normopt",
        description="Gradient-normalized Keras 3 optimizers with fused ops.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
