"""tf.distribute.MirroredStrategy on 2 logical CPUs vs 1 replica.

The norm is taken of the gradient after the cross-replica sum, so 2 replicas
on a global batch must give the result of 1 replica on the same batch.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_worker(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "dist_worker.py"), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_same_training(a, b, rtol=1e-5, atol=1e-6):
    assert a["iterations"] == b["iterations"]
    assert a["skipped"] == b["skipped"]
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)
    for sa, sb in zip(a["slots"], b["slots"]):
        np.testing.assert_allclose(sa, sb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["normalized_adam", "clipped_nesterov"])
@pytest.mark.parametrize("fused", ["false", "null", "true"])
def test_two_replicas_match_one(kind, fused):
    one = run_worker(1, kind, fused, "noskip")
    two = run_worker(2, kind, fused, "noskip")
    assert two["replicas"] == 2
    # the compiled op runs per device under MirroredStrategy
    expected = "tf" if fused == "false" else "fused"
    assert one["path"] == two["path"] == expected, (one["reason"], two["reason"])
    assert_same_training(one, two)
    assert one["iterations"] == 8


@pytest.mark.parametrize("fused", ["false", "true"])
def test_skip_nonfinite_under_distribution(fused):
    one = run_worker(1, "normalized_adam", fused, "skip")
    two = run_worker(2, "normalized_adam", fused, "skip")
    assert two["path"] == ("tf" if fused == "false" else "fused")
    assert one["skipped"] == 2  # the poisoned batch, once per epoch
    assert one["iterations"] == 6
    assert_same_training(one, two)


def test_save_distributed_load_single(tmp_path):
    """Saved under MirroredStrategy (fused), resumed on one device (pure TF):
    the same as never distributed."""
    dist, single = tmp_path / "dist.keras", tmp_path / "single.keras"
    assert run_worker(2, "normalized_adam", "true", "noskip", dist)["path"] == "fused"
    run_worker(1, "normalized_adam", "null", "noskip", single)
    from_dist = run_worker(1, "normalized_adam", "false", "noskip", "", dist)
    assert from_dist["path"] == "tf"
    from_single = run_worker(1, "normalized_adam", "null", "noskip", "", single)
    assert from_dist["iterations"] == 16
    assert_same_training(from_dist, from_single)
