"""The fused ops give bitwise identical results with 1 and 2 intra-op threads.

Each run is a fresh subprocess (the thread count is fixed when TensorFlow
initializes): norms, scaling, two NormalizedOptimizer(AdamW, amsgrad) and
two ClippedOptimizer(Lamb) steps on the fused path, over a tensor of 2M
elements split into many fixed chunks. Fixed chunking and a fixed merge order make the thread count
irrelevant to every bit of the result.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from normopt.ops import library

WORKER = os.path.join(os.path.dirname(__file__), "fused_determinism_worker.py")


def run_worker(threads, out_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, WORKER, str(threads), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out_path))


def test_one_and_two_threads_give_identical_bits(tmp_path):
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")
    one = run_worker(1, tmp_path / "one.npz")
    two = run_worker(2, tmp_path / "two.npz")
    assert int(one.pop("threads")) == 1 and int(two.pop("threads")) == 2
    assert sorted(one) == sorted(two)
    assert any(k.startswith("slot_") for k in one)
    assert any(k.startswith("lamb_slot_") for k in one)
    assert any(k.startswith("rows_slot_") for k in one)
    for key in one:
        a, b = one[key], two[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), f"{key} differs between 1 and 2 threads"
        assert np.all(np.isfinite(a)), key
