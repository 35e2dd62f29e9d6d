"""`normopt` command line: one subcommand per module, imported on use.

    normopt demo           train a small model: Adam vs normalized vs clipped
    normopt info           versions, op library, CUDA, Numba/CuPy
    normopt build          build the op library for the installed TensorFlow
    normopt bench ...      norms per layer size and whole optimizer steps
    normopt experiments .. the original wrapper's experiments, with plots
"""

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile

from normopt import extras

# subcommand -> (module, one-line help); each module has add_arguments(parser)
# and run(args) -> exit code. Importing the module and add_arguments must not
# import TensorFlow, Keras, Numba or Matplotlib (`normopt CMD --help` stays
# fast and quiet); run() imports what it needs.
SUBCOMMANDS = {
    "demo": ("normopt.demo", "train a small model with plain, normalized and clipped Adam"),
    "info": ("normopt.info", "print versions, op library status, CUDA, Numba/CuPy"),
    "build": ("normopt.build_cli", "build the op library for the installed TensorFlow"),
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


def _selected(argv, names):
    """The subcommand named on the command line, or None (e.g. `normopt --help`).

    The top-level parser has no options but -h, so it is the first argument
    that is not an option.
    """
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def build_parser(argv=None):
    """The parser; with `argv`, only the subcommand it names imports its module.

    Subcommand modules are light to import (TensorFlow, Keras, Numba,
    Matplotlib are imported inside run()), and `normopt --help` imports none
    of them at all.
    """
    parser = argparse.ArgumentParser(
        prog="normopt",
        description="Gradient-normalized Keras 3 optimizers with fused ops.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    available = _available()
    wanted = available if argv is None else {_selected(argv, available)}
    for name, (module, help_text) in available.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name in wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def quiet_tensorflow_logs():
    """Keeps TensorFlow's C++ start-up log lines off the CLI's output.

    absl's "All log messages before absl::InitializeLog()", cpu_feature_guard
    and oneDNN notices are written to stderr while TensorFlow is imported, so
    the level must be set before that first import. A TF_CPP_MIN_LOG_LEVEL the
    user set is kept. Logging only: TF_ENABLE_ONEDNN_OPTS and anything else
    that changes numerics is left alone.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL no longer silences
# (TensorFlow 2.21 logs them through absl before absl is initialised).
STARTUP_NOISE = ("absl::InitializeLog()", "cpu_feature_guard", "oneDNN custom operations")


def import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 sent to a temporary file,
    then writes back to stderr every line but the start-up notices in
    STARTUP_NOISE, so errors and warnings of the import still show."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return  # loaded already, or not installed (JAX or PyTorch only)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(True):
                if not any(noise in line for noise in STARTUP_NOISE):
                    sys.stderr.write(line)


def _command_words(argv):
    """`normopt` and the positional words of argv, e.g. "normopt bench fit"."""
    words = ["normopt"]
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    return " ".join(words)


def main(argv=None):
    quiet_tensorflow_logs()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(args._module)
    # Optional packages the command needs are checked before any work
    # (TensorFlow's import included): one line and status 2, no traceback.
    requirements = getattr(module, "requirements", None)
    try:
        extras.require(requirements(args) if requirements else (), _command_words(argv))
    except extras.MissingOptional as exc:
        print(f"normopt: error: {exc}", file=sys.stderr)
        return 2
    import_tensorflow_quietly()
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
