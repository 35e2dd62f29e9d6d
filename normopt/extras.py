"""Which optional package each command needs, and the extra that installs it.

    EXTRAS        extra -> the modules it installs (pyproject.toml's
                  [project.optional-dependencies], by import name)
    require()     raises MissingOptional: "... needs scikit-learn, which is not
                  installed: pip install "normopt[demo]"" (the CLI prints it as
                  one line and exits with status 2, before any work)
    plot_note()   None when the plotting library is there, else the one-line
                  note that replaces the plot (the results are kept)

A command module declares what it needs with `requirements(args)`: a list of
(module, extra) pairs, checked by `normopt.cli.main` through `require` before
TensorFlow is imported. Progress bars (tqdm) are never required: without
tqdm a terminal gets the plain progress lines.
"""

import importlib.util

# import name -> distribution name, for the message
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "numba": "numba",
    "jax": "jax[cpu]",
    "torch": "torch",
}
EXTRAS = {
    "jax": ("jax",),
    "torch": ("torch",),
    "kernels": ("numba",),
    "demo": ("sklearn", "tqdm"),
    "bench": ("matplotlib", "tqdm"),
    "experiments": ("matplotlib", "tqdm", "sklearn"),
    "all": ("numba", "sklearn", "matplotlib", "tqdm"),
}
PLOTTING = "matplotlib"


class MissingOptional(ImportError):
    """An optional package a command needs is not installed."""


def available(module):
    """Whether `module` can be imported here, without importing it.

    A module set to None in sys.modules (Python's way to block an import)
    counts as missing.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(extra):
    return f'pip install "normopt[{extra}]"'


def require(needs, what):
    """Raises MissingOptional naming every missing module of `needs`.

    `needs`: (module, extra) pairs; `what`: who needs them, e.g.
    "normopt demo". One line, with the extras to install.
    """
    missing = [(m, e) for m, e in dict.fromkeys(needs) if not available(m)]
    if not missing:
        return
    names = ", ".join(dict.fromkeys(DISTRIBUTIONS.get(m, m) for m, _ in missing))
    extras = ",".join(dict.fromkeys(e for _, e in missing))
    verb = "is" if len({m for m, _ in missing}) == 1 else "are"
    raise MissingOptional(f"{what} needs {names}, which {verb} not installed: "
                          f"{install_hint(extras)}")


def plot_note(extra):
    """None when plots can be drawn, else the note that replaces a plot."""
    if available(PLOTTING):
        return None
    return (f"plot skipped: {DISTRIBUTIONS[PLOTTING]} is not installed "
            f"({install_hint(extra)})")
