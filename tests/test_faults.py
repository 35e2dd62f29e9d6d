"""A training process killed (SIGKILL) mid-epoch and restarted with
keras.callbacks.BackupAndRestore ends bit-identical to an uninterrupted run,
weights and optimizer slots, on the fused and the pure-TF paths.

(The 2-worker case, one worker killed, is in test_multiworker.py.)
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two launches: kill tf and fused (the fused training runs inside the
    tf one's model.fit, where that one stops mid-epoch: one SIGKILL ends
    both mid-epoch); resume both + refs."""
    out = tmp_path_factory.mktemp("faults")
    first = launch(out, "tf:kill", "fused:kill")
    second = launch(out, "tf:resume", "fused:resume", "tf:ref", "fused:ref")
    return out, (first, second)


def test_runs_were_killed_mid_epoch(runs):
    out, (first, second) = runs
    assert first.returncode == -9, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]


@pytest.mark.parametrize("path", ["tf", "fused"])
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
