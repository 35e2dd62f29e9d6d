"""normopt: gradient-normalized and norm-clipped Keras 3 optimizers.

    from normopt import NormalizedOptimizer, ClippedOptimizer
    opt = NormalizedOptimizer(keras.optimizers.Adam(1e-3), normalization="l2")
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BUILTIN_NORMALIZATIONS": "normopt.normalizations",
    "normalization_names": "normopt.normalizations",
    "register_normalization": "normopt.normalizations",
    "unregister_normalization": "normopt.normalizations",
    "FusedPathUnavailable": "normopt.ops.step_plan",
    "AdaptiveClippedOptimizer": "normopt.optimizers",
    "ClippedOptimizer": "normopt.optimizers",
    "NormalizedOptimizer": "normopt.optimizers",
    "callbacks": "normopt.callbacks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"{__name__}.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _started_as_cli():
    """Whether this process is the `normopt` command (console script or -m)."""
    if sys.argv and os.path.basename(sys.argv[0]) in ("normopt", "normopt.exe", "normopt-script.py"):
        return True
    argv = getattr(sys, "orig_argv", None) or []  # Python 3.10+
    return any(a == "-m" and b in ("normopt", "normopt.cli") for a, b in zip(argv, argv[1:]))


# Library use imports everything now, as before: `import normopt` alone
# registers the optimizers with Keras serialization, so keras.models.load_model
# finds them. The `normopt` command imports TensorFlow only in the subcommand
# that needs it (`normopt --help` takes a fraction of a second), and only after
# it has set TensorFlow's log level; its modules reach these names through
# __getattr__ above.
if not _started_as_cli():
    from normopt.normalizations import (  # noqa: E402,F401
        BUILTIN_NORMALIZATIONS,
        normalization_names,
        register_normalization,
        unregister_normalization,
    )
    from normopt.ops.step_plan import FusedPathUnavailable  # noqa: E402,F401
    from normopt.optimizers import (  # noqa: E402,F401
        AdaptiveClippedOptimizer,
        ClippedOptimizer,
        NormalizedOptimizer,
    )
    from normopt import callbacks  # noqa: E402,F401
