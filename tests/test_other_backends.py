"""The backend-neutral tests on JAX, from the TensorFlow process.

Keras fixes its backend at import, so the backend-neutral tests (marker
`backend_neutral`, files in conftest.BACKEND_NEUTRAL_FILES) run on JAX in a
pytest process of their own: this test starts it (`KERAS_BACKEND=jax python
-m pytest -m backend_neutral`, one process, `--runslow` passed on) and fails
with its report when any of its tests fails. Run from here, that process
shares the machine with the TensorFlow suite's other files instead of waiting
for the whole suite to end. Its counts are printed at the end of this run
(conftest.pytest_terminal_summary).

Run by hand, on every core:
KERAS_BACKEND=jax python -m pytest -n auto --dist loadfile -m backend_neutral
(PyTorch the same way with KERAS_BACKEND=torch: README, "Testing on other
backends"; not run here, its wheel pulls several GB).
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# How a child's summary line reads: "185 passed, 450 skipped in 71.0s".
_SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed).*) in [\d.]+s")


@pytest.mark.parametrize("backend", ["jax"])
def test_backend_neutral_suite(backend, request, tmp_path, record_property):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install normopt[{backend}])")
    runslow = request.config.getoption("--runslow")
    argv = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
            "-p", "no:xdist", "-m", "backend_neutral", f"--basetemp={tmp_path / 'tmp'}",
            HERE] + (["--runslow"] if runslow else [])
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run(argv, cwd=os.path.dirname(HERE), env=env, capture_output=True,
                          text=True, timeout=3600 if runslow else 1200)
    lines = done.stdout.strip().splitlines()
    summary = next((m.group(1) for m in map(_SUMMARY.match, reversed(lines)) if m), None)
    record_property("backend_suite", f"{backend}: {summary or 'no summary'}")
    assert done.returncode == 0 and summary is not None, (
        f"the backend-neutral tests failed on {backend} (exit code {done.returncode}):\n"
        + "\n".join(lines[-150:]) + "\n" + done.stderr[-3000:])
    assert " passed" in summary and "failed" not in summary and "error" not in summary
