"""A training process killed (SIGKILL) mid-epoch and restarted with
keras.callbacks.BackupAndRestore ends bit-identical to an uninterrupted run,
weights and optimizer slots, on the fused and the pure-TF paths.

(The 2-worker case, one worker killed, is in test_multiworker.py.)

The pure-TF path runs with --runslow (a third of the file's CPU: three more
trainings): what the kill and the restore exercise, the optimizer's
variables written by the backup and read back, is the same on both paths,
and a pure-TF training resumed from saved state is checked bit for bit by
test_save_load.py's test_save_load_continue_is_identical (fused=False
throughout).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def launch(out_dir, *jobs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "fault_worker.py"), str(out_dir),
         *jobs],
        capture_output=True, text=True, env=env, timeout=600)


PATHS = ["tf", "fused"]
SLOW_PATHS = {"tf"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """Two launches: kill tf and fused (the fused training runs inside the
    tf one's model.fit, where that one stops mid-epoch: one SIGKILL ends
    both mid-epoch); resume both + refs. Without --runslow fused only."""
    every = request.config.getoption("--runslow")
    paths = [p for p in PATHS if every or p not in SLOW_PATHS]
    out = tmp_path_factory.mktemp("faults")
    first = launch(out, *[f"{p}:kill" for p in paths])
    second = launch(out, *[f"{p}:resume" for p in paths], *[f"{p}:ref" for p in paths])
    return out, (first, second)


def test_runs_were_killed_mid_epoch(runs):
    out, (first, second) = runs
    assert first.returncode == -9, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=(pytest.mark.slow,) if p in SLOW_PATHS else ()) for p in PATHS])
def test_resumed_run_is_bit_identical(runs, path):
    out, procs = runs
    ref = out / f"ref-{path}.npz"
    resumed = out / f"resumed-{path}.npz"
    assert ref.exists() and resumed.exists(), [p.stderr[-2000:] for p in procs]
    # the restarted process resumed after the last backup (end of epoch 0)
    # instead of training from scratch
    assert json.loads((out / f"resumed-{path}.json").read_text()) == {
        "epochs": [1, 2]}
    assert json.loads((out / f"ref-{path}.json").read_text()) == {
        "epochs": [0, 1, 2]}
    ref, resumed = np.load(ref), np.load(resumed)
    assert ref.files == resumed.files
    for key in ref.files:
        np.testing.assert_array_equal(resumed[key], ref[key], err_msg=key)
    # the backups are removed when training ends
    assert not (out / f"backup-{path}").exists()
