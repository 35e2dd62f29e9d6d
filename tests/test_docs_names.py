"""Every name the docs cite in backticks exists, so a rename cannot leave
README.md or docs/*.md (not the dated docs/perf-log/) pointing at nothing.

What an inline code span is checked as (fenced blocks are commands and
examples, not checked):

    a repository path      a token starting with normopt/, csrc/, tests/,
                           benchmarks/, docs/ or .ci/: it exists (a glob:
                           something matches; a pytest id's [...] dropped)
    a source file name     a bare name ending .py/.h/.cc/.cu/.cuh/.cpp: a
                           file of that name is in the repository
    normopt.<dotted>       imports and resolves, attribute by attribute
    Normopt<Name>          an op registered in csrc/ops/register_ops.cc
    NORMOPT_<NAME>         a macro or environment variable the sources use
    opt.<attr>             an attribute of a built wrapper (opt is one in
                           the docs)
    <module>.<attr>        where <module> is a module of normopt (its last
                           name, e.g. fit_bench.baseline_model): resolves
    a bare identifier      one with "_" or a capital after a lowercase
                           letter, called or not (`unit_finish`,
                           `StepPath(name, reason)`): a word of the
                           repository's code, or a name in keras / tf
                           (keras.callbacks.CSVLogger is cited as `CSVLogger`)

Other spans (keras./tf./np. names, formulas, options, values) are not ours
to check.
"""

import glob
import importlib
import os
import pkgutil
import re

import pytest

import normopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
REPO_DIRS = ("normopt/", "csrc/", "tests/", "benchmarks/", "docs/", ".ci/")
# Paths that exist only after a build or an install: the op library, and the
# sources a wheel carries (setup.py's build_py).
GENERATED = {"normopt/ops/_normopt_ops*.so", "normopt/_src"}
CODE_EXT = (".py", ".h", ".cc", ".cu", ".cuh", ".cpp")
CODE_DIRS = ("normopt", "csrc", "tests", "benchmarks")
IDENT = r"[A-Za-z_]\w*"


def spans(path):
    with open(os.path.join(ROOT, path)) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return sorted(set(re.findall(r"`([^`\n]+)`", text)))


def all_spans():
    return [(doc, span) for doc in DOCS for span in spans(doc)]


def code_files():
    out = [os.path.join(ROOT, "setup.py"), os.path.join(ROOT, "CMakeLists.txt")]
    for d in CODE_DIRS:
        for base, dirs, names in os.walk(os.path.join(ROOT, d)):
            dirs[:] = [x for x in dirs if x not in ("__pycache__", "fixtures", "_src")]
            out += [os.path.join(base, n) for n in names
                    if n.endswith(CODE_EXT) or n == "CMakeLists.txt"]
    # not this file: the names its own tests make up must not count
    return [p for p in out if os.path.isfile(p) and p != os.path.abspath(__file__)]


_CACHE = {}


def code_words():
    if "words" not in _CACHE:
        words = set()
        for p in code_files():
            with open(p, errors="replace") as f:
                words.update(re.findall(r"\w+", f.read()))
        _CACHE["words"] = words
    return _CACHE["words"]


def registered_ops():
    with open(os.path.join(ROOT, "csrc", "ops", "register_ops.cc")) as f:
        return set(re.findall(r'REGISTER_OP\("(\w+)"\)', f.read()))


def normopt_modules():
    """{last name: module name} of every normopt module (first one wins)."""
    if "modules" not in _CACHE:
        out = {}
        for info in pkgutil.walk_packages(normopt.__path__, "normopt."):
            if ".experiments" in info.name or info.name.endswith("__main__"):
                continue
            out.setdefault(info.name.rsplit(".", 1)[1], info.name)
        _CACHE["modules"] = out
    return _CACHE["modules"]


def resolve(dotted):
    """Imports the longest module prefix of `dotted`, then getattr the rest;
    a problem as a string, or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:j])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]!r}"


def wrapper_attributes():
    if "opt" not in _CACHE:
        import keras

        opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1))
        opt.build([keras.Variable([1.0, 2.0])])  # the variables build() adds
        _CACHE["opt"] = set(dir(opt))
    return _CACHE["opt"]


def external_name(name):
    import keras
    import tensorflow as tf

    spaces = (keras, keras.callbacks, keras.layers, keras.optimizers, keras.mixed_precision,
              keras.distribution, tf, tf.distribute, tf.config)
    return any(hasattr(space, name) for space in spaces)


def check_path(token):
    token = re.sub(r"\[[^\]]*\]$", "", token).rstrip(",.;:)")
    if token in GENERATED:
        return None
    if any(c in token for c in "*?["):
        return None if glob.glob(os.path.join(ROOT, token)) else f"no file matches {token}"
    return None if os.path.exists(os.path.join(ROOT, token)) else f"no such path {token}"


def check_span(span):
    """The problems of one code span (empty: fine or not ours)."""
    problems = []
    tokens = span.split()
    for token in tokens:
        if token.startswith(REPO_DIRS):
            problem = check_path(token)
            if problem:
                problems.append(problem)
        elif re.fullmatch(r"[\w-]+\.(py|h|cc|cu|cuh|cpp)", token):
            if not glob.glob(os.path.join(ROOT, "**", token), recursive=True):
                problems.append(f"no file named {token} in the repository")
    for dotted in re.findall(r"(?<![\w.])normopt(?:\.\w+)+", span):
        problem = resolve(dotted)
        if problem:
            problems.append(problem)
    for op in re.findall(r"\bNormopt[A-Z]\w*", span):
        if op not in registered_ops():
            problems.append(f"{op} is not an op of csrc/ops/register_ops.cc")
    for macro in re.findall(r"\bNORMOPT_[A-Z0-9_]+", span):
        if macro not in code_words():
            problems.append(f"{macro} is in no source file")
    m = re.fullmatch(rf"opt\.({IDENT})\b.*", span)
    if m and m.group(1) not in wrapper_attributes():
        problems.append(f"the wrappers have no attribute {m.group(1)!r}")
    m = re.fullmatch(rf"({IDENT})\.({IDENT})(?:\(.*\))?", span)
    if m and m.group(1) in normopt_modules():
        problem = resolve(f"{normopt_modules()[m.group(1)]}.{m.group(2)}")
        if problem:
            problems.append(problem)
    m = re.fullmatch(rf"({IDENT})(?:\(.*\))?", span)
    if m and ("_" in m.group(1).strip("_") or re.search(r"[a-z][A-Z]", m.group(1))):
        name = m.group(1)
        if name not in code_words() and not external_name(name):
            problems.append(f"{name} is in no source file and not a Keras/TF name")
    return problems


def test_docs_cite_only_names_that_exist():
    found = [f"{doc}: `{span}`: {problem}"
             for doc, span in all_spans() for problem in check_span(span)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("span, problem", [
    ("normopt/ops/no_such_module.py", "no such path"),
    ("csrc/ops/*_nothing.cc", "no file matches"),
    ("no_such_file.py", "no file named"),
    ("normopt.ops.no_such_thing", "has no attribute"),
    ("NormoptApplyAdam", "not an op"),
    ("NORMOPT_NO_SUCH_MACRO=1", "in no source file"),
    ("opt.no_such_attribute", "no attribute"),
    ("keras_adapters.NO_SUCH_TABLE", "has no attribute"),
    ("no_such_function()", "in no source file"),
])
def test_each_rule_catches_a_rename(span, problem):
    """Each rule refuses a name that does not exist (the check is not vacuous)."""
    found = check_span(span)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize("span", [
    "normopt/ops/keras_adapters.py", "csrc/cuda/*.cu", "tests/test_kernels_cupy.py[emulated]",
    "step_ratios.py", "normopt.ops.fused.norms", "NormoptApply", "NORMOPT_DISABLE_OPS=1",
    "opt.last_path.name", "keras_adapters.INDEXED_SLICES", "unit_finish", "CSVLogger",
    "keras.optimizers.NotOurs", "(pre, mult)",
])
def test_existing_and_foreign_names_pass(span):
    assert check_span(span) == []
