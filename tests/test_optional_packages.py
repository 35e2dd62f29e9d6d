"""Commands without their optional packages (scikit-learn, Matplotlib, tqdm).

    up front      a command that needs a missing package ends before any work
                  (TensorFlow not imported, nothing run) with one line naming
                  what to install, pip install "normopt[EXTRA]", and status 2
    plots         without Matplotlib, `bench fit`, `bench norms` and the
                  experiments keep their table and JSON and print one note
                  in place of the plot
    progress      without tqdm a terminal gets the plain progress lines
    extras        normopt/extras.py lists the same extras as pyproject.toml

A missing package is simulated with sys.modules[name] = None (Python's way to
block an import), in a subprocess where the whole command runs.
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

from normopt import cli, demo, extras, progress
from normopt.experiments import cli as experiments_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _without(modules, argv, tmp_path):
    """Runs `normopt ARGV` as the console script does, in a fresh Python where
    `modules` cannot be imported; returns the process, its stderr but the
    last line, and whether it had imported TensorFlow when it ended."""
    script = (
        "import atexit, runpy, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = ['normopt'] + {list(argv)!r}\n"
        "atexit.register(lambda: print('IMPORTED', 'tensorflow' in sys.modules,\n"
        "                              file=sys.stderr))\n"
        "runpy.run_module('normopt', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    *err, imported = proc.stderr.rstrip("\n").splitlines()
    return proc, "\n".join(err), imported == "IMPORTED True"


@pytest.mark.parametrize("argv, extra", [
    (["demo"], "demo"),
    (["experiments", "convex", "--quick"], "experiments"),
    (["experiments", "mlp", "--quick"], "experiments"),  # the digits dataset
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_missing_scikit_learn_stops_before_any_work(argv, extra, tmp_path):
    proc, err, imported_tf = _without(["sklearn"], argv, tmp_path)
    assert proc.returncode == 2, err[-2000:]
    assert err.splitlines() == [
        f"normopt: error: normopt {' '.join(a for a in argv if not a.startswith('-'))} "
        f'needs scikit-learn, which is not installed: pip install "normopt[{extra}]"'
    ]
    assert proc.stdout == ""
    assert not imported_tf
    assert not os.listdir(tmp_path)  # nothing written


def test_experiments_need_scikit_learn_only_for_its_problems_and_digits():
    def needs(name, dataset=None):
        return experiments_cli.requirements(argparse.Namespace(name=name, dataset=dataset))

    sklearn = [("sklearn", "experiments")]
    assert needs("convex") == needs("lr-sweep") == needs("all", "mnist") == sklearn
    assert needs("mlp") == needs("cnn", "digits") == needs("cnn", "mnist") == sklearn
    assert needs("mlp", "mnist") == needs("cnn", "cifar10") == []
    assert demo.requirements(None) == [("sklearn", "demo")]


def test_require_names_every_missing_package_and_its_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    extras.require([("numpy", "all")], "x")  # present: nothing raised
    with pytest.raises(extras.MissingOptional) as exc:
        extras.require([("sklearn", "demo"), ("matplotlib", "bench"), ("numpy", "all")],
                       "normopt x")
    assert str(exc.value) == ('normopt x needs scikit-learn, matplotlib, which are not '
                              'installed: pip install "normopt[demo,bench]"')
    assert isinstance(exc.value, ImportError)


def _main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


# By default the same check runs inside tests/test_bench_fit.py's
# test_model_path_times_a_saved_multi_input_model (one bench fit run for both).
@pytest.mark.slow
def test_bench_fit_without_matplotlib_keeps_table_and_json(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    json_path, plot_path = tmp_path / "fit.json", tmp_path / "fit.png"
    code, out = _main([
        "bench", "fit", "--scale", "tiny", "--models", "wide_mlp", "--inners", "adam",
        "--repeats", "1", "--steps-per-sample", "1", "--warmup", "1", "--no-progress",
        "--json", str(json_path), "--plot", str(plot_path)])
    assert code == 0
    assert "wide_mlp" in out and "normalized fused" in out  # the table
    with open(json_path) as f:
        assert {c["variant"] for c in json.load(f)["fit"]["cases"]} == {
            "fwd_bwd", "plain", "normalized_tf", "normalized_fused"}
    assert not plot_path.exists()
    assert ('plot skipped: matplotlib is not installed (pip install "normopt[bench]")'
            in out.splitlines())


def test_bench_norms_without_matplotlib_keeps_table_and_json(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    json_path, plot_path = tmp_path / "n.json", tmp_path / "n.png"
    code, out = _main([
        "bench", "norms", "--sizes", "256", "--norms", "l2", "--impls", "tf_eager",
        "--repeats", "1", "--warmup", "0", "--bandwidth-mib", "1", "--no-progress",
        "--json", str(json_path), "--plot", str(plot_path)])
    assert code == 0
    with open(json_path) as f:
        (case,) = json.load(f)["norms"]["cases"]
    assert case["status"] == "ok" and case["size"] == 256
    assert not plot_path.exists()
    assert 'plot skipped: matplotlib is not installed (pip install "normopt[bench]")' in out


def test_experiments_without_matplotlib_keep_table_and_json(monkeypatch, tmp_path):
    from normopt.experiments import suite

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(suite.SETTINGS["lr-sweep"], "quick",
                        dict(suite.SETTINGS["lr-sweep"]["quick"], points=1))
    code, out = _main(["experiments", "lr-sweep", "--quick", "--iterations", "2",
                       "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    assert os.listdir(tmp_path) == ["lr_sweep.json"]
    assert "final gap, Adam" in out  # the table
    assert ('plot skipped: matplotlib is not installed (pip install '
            '"normopt[experiments]")' in out.splitlines())


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_without_tqdm_prints_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stream = FakeTerminal()
    with progress.bar(2, "demo", "epoch", stream=stream) as bar:
        bar.set_postfix_str("Adam")
        bar.update(2)
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().startswith("demo: Adam done (2/2 epochs")
    assert not progress.live_bar_enabled(True, FakeTerminal())
    assert isinstance(progress.live_bar(2, "norms", "case", stream=FakeTerminal()),
                      progress.NullProgress)


def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    module_of = {dist: module for module, dist in extras.DISTRIBUTIONS.items()}
    for extra, modules in extras.EXTRAS.items():
        assert sorted(module_of[d] for d in declared[extra]) == sorted(modules), extra
    # every extra but TensorFlow's and the test tools' is known to the CLI
    assert set(declared) - {"cpu", "gpu", "test"} == set(extras.EXTRAS)
