"""The `normopt` command itself: fast --help, progress output, quiet start.

    --help        `normopt --help` and `normopt CMD --help` import no TensorFlow,
                  Keras, Numba or Matplotlib (checked with -X importtime)
    progress      a live \\r bar only on a terminal; plain lines otherwise
                  (normopt.progress, used by demo, bench and experiments)
    quiet start   TensorFlow's C++ start-up log lines never come before the
                  CLI's own output; a TF_CPP_MIN_LOG_LEVEL the user set is kept
"""

import argparse
import io
import os
import subprocess
import sys

import pytest

from normopt import cli, demo, progress
from normopt.experiments import cli as experiments_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tensorflow", "keras", "numba", "matplotlib")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def _clean_env():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it; the CLI must
    return env


def _heavy_imports(importtime_stderr):
    """Top-level packages among HEAVY that `-X importtime` saw imported."""
    found = set()
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name.split(".")[0] in HEAVY:
            found.add(name.split(".")[0])
    return found


@pytest.mark.parametrize("command", [[], *([name] for name in cli.SUBCOMMANDS)],
                         ids=lambda c: " ".join(c) or "top")
def test_help_imports_no_heavy_module(command):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "normopt", *command, "--help"],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: normopt"), proc.stdout
    assert _heavy_imports(proc.stderr) == set()


def test_console_script_help_is_light():
    script = os.path.join(os.path.dirname(sys.executable), "normopt")
    if not os.path.exists(script):
        pytest.skip("the normopt console script is not installed next to this Python")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: normopt" in proc.stdout
    assert _heavy_imports(proc.stderr) == set()


def test_only_the_named_subcommand_module_is_imported(monkeypatch):
    imported = []
    real = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: imported.append(name) or real(name))
    cli.build_parser(["--help"])
    assert imported == []
    cli.build_parser(["info", "--help"])
    assert imported == ["normopt.info"]


# ---- progress --------------------------------------------------------------

def _demo_like(stream, enabled=True):
    """The calls demo.run makes: 3 optimizers x 4 epochs."""
    with progress.bar(12, "demo", "epoch", stream=stream, enabled=enabled) as bar:
        for label in ("Adam", "Normalized", "Clipped"):
            bar.set_postfix_str(label)
            for _ in range(4):
                bar.update()
    return stream.getvalue()


def test_progress_not_a_terminal_prints_one_plain_line_per_stage():
    out = _demo_like(io.StringIO())
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("demo: Adam done (4/12 epochs")
    assert lines[2].startswith("demo: Clipped done (12/12 epochs")


def test_progress_on_a_terminal_draws_a_live_bar():
    out = _demo_like(FakeTerminal())
    assert "\r" in out and "12/12" in out


def test_progress_disabled_prints_nothing():
    assert _demo_like(io.StringIO(), enabled=False) == ""
    assert _demo_like(FakeTerminal(), enabled=False) == ""


def test_live_bar_only_on_a_terminal():
    assert progress.live_bar_enabled(True, FakeTerminal())
    assert not progress.live_bar_enabled(True, io.StringIO())
    assert not progress.live_bar_enabled(False, FakeTerminal())


def _fake_demo(monkeypatch, stderr):
    """demo.run with training replaced: each 'fit' just reports its epochs."""
    def fake_train(label, make, data, args, on_epoch_end):
        for _ in range(args.epochs):
            on_epoch_end()
        return (label, 0.5, 0.9, 0.6, 0.8, 0.1, "tf")

    monkeypatch.setattr(demo, "load_digits_split",
                        lambda seed: (([0] * 8, [0] * 8), ([0] * 2, [0] * 2)))
    monkeypatch.setattr(demo, "_optimizers", lambda lr: {"Adam": None, "Clipped": None})
    monkeypatch.setattr(demo, "_train", fake_train)
    monkeypatch.setattr(sys, "stderr", stderr)
    args = argparse.Namespace(epochs=3, batch_size=4, lr=1e-3, seed=0)
    assert demo.run(args) == 0
    return stderr.getvalue()


def test_demo_progress_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    err = _fake_demo(monkeypatch, io.StringIO())
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("demo: ") for line in lines), err
    assert "Clipped" in capsys.readouterr().out  # the results table


def test_demo_progress_live_bar_on_a_terminal(monkeypatch, capsys):
    err = _fake_demo(monkeypatch, FakeTerminal())
    assert "\r" in err and "6/6" in err
    capsys.readouterr()


def test_experiments_bars_follow_the_same_rule(monkeypatch):
    for stream, expect_cr in ((io.StringIO(), False), (FakeTerminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        with experiments_cli._bar_factory(False)(4, "convex", "step") as bar:
            bar.set_postfix_str("Adam")
            bar.update(4)
        assert ("\r" in stream.getvalue()) == expect_cr
        assert "convex" in stream.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    with experiments_cli._bar_factory(True)(4, "convex", "step") as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


# ---- quiet start -----------------------------------------------------------

def test_quiet_tensorflow_logs_keeps_the_users_level(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    cli.quiet_tensorflow_logs()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_info_output_starts_with_its_own_line():
    proc = subprocess.run(
        [sys.executable, "-m", "normopt", "info"],
        cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("normopt:"), proc.stdout[:1000]
    assert not [line for line in lines
                if "absl::InitializeLog" in line or "cpu_feature_guard" in line]


def test_build_subcommand_is_covered_by_the_help_test():
    # test_help_imports_no_heavy_module runs `normopt build --help` through this table
    assert cli.SUBCOMMANDS["build"][0] == "normopt.build_cli"
