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


def run_worker(replicas, jobs):
    """One process on `replicas` replicas running `jobs` in turn; a result
    per job (dist_worker.py)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "dist_worker.py"), str(replicas),
         json.dumps([[str(a) for a in job] for job in jobs])],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == len(jobs), out.stderr[-3000:]
    return {tuple(map(str, job)): json.loads(ln) for job, ln in zip(jobs, lines)}


KINDS = ["normalized_adam", "clipped_nesterov"]
# fused=None takes the same compiled path as True here (choose_path and
# fused=None have their own tests).
FUSED = ["false", "true"]
# (kind, fused) of the parity runs: every path of two kinds; Nadam (state
# outside the slots, advanced in the cross-replica context) on the fused one;
# a global norm (of the summed gradients) and unit-wise adaptive clipping on
# the fused one (the op's own granularities; the pure-TF path scales the
# summed gradients with the same code at every granularity, covered above
# per tensor); an Embedding's IndexedSlices gradient under Adam on both
# paths and under Adagrad, whose rows alone the fused op updates.
CASES = [(k, f) for k in KINDS for f in FUSED] + [("normalized_nadam", "true")] + [
    ("global_adam", "true"), ("agc_adam", "true"), ("embedding_adam", "false"),
    ("embedding_adam", "true"), ("embedding_adagrad", "null")]
# Pure-TF cases that the default run leaves to --runslow: normalized_adam
# keeps the pure-TF path covered, and these add only TF's own distribution.
SLOW_CASES = {("clipped_nesterov", "false"), ("embedding_adam", "false")}


# The recorded gradient norms of a custom-loop step (dist_worker.recorded_norms).
NORMS_JOB = ("recorded_norms", "null", "", "", "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """Every scenario: one launch on 2 replicas, then one on 1 replica."""
    tmp = tmp_path_factory.mktemp("distribute")
    dist, single = str(tmp / "dist.keras"), str(tmp / "single.keras")
    every = request.config.getoption("--runslow")
    plain = [(k, f, "noskip", "", "") for k, f in CASES
             if every or (k, f) not in SLOW_CASES]
    skip = [("normalized_adam", f, "skip", "", "") for f in ("false", "true")]
    two = run_worker(2, plain + skip + [("normalized_adam", "true", "noskip", dist, ""),
                                        NORMS_JOB])
    one = run_worker(1, plain + skip + [
        ("normalized_adam", "null", "noskip", single, ""),
        ("normalized_adam", "false", "noskip", "", dist),
        ("normalized_adam", "null", "noskip", "", single),
    ])
    return {"one": one, "two": two, "dist": dist, "single": single}


def assert_same_training(a, b, rtol=1e-5, atol=1e-6):
    assert a["iterations"] == b["iterations"]
    assert a["skipped"] == b["skipped"]
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)
    for sa, sb in zip(a["slots"], b["slots"]):
        np.testing.assert_allclose(sa, sb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind, fused", [
    pytest.param(k, f, marks=(pytest.mark.slow,) if (k, f) in SLOW_CASES else ())
    for k, f in CASES])
def test_two_replicas_match_one(runs, kind, fused):
    job = (kind, fused, "noskip", "", "")
    one, two = runs["one"][job], runs["two"][job]
    assert two["replicas"] == 2
    # the compiled op runs per device under MirroredStrategy
    expected = "tf" if fused == "false" else "fused"
    assert one["path"] == two["path"] == expected, (one["reason"], two["reason"])
    assert_same_training(one, two)
    assert one["iterations"] == 8


@pytest.mark.parametrize("fused", ["false", "true"])
def test_skip_nonfinite_under_distribution(runs, fused):
    job = ("normalized_adam", fused, "skip", "", "")
    one, two = runs["one"][job], runs["two"][job]
    assert two["path"] == ("tf" if fused == "false" else "fused")
    assert one["skipped"] == 2  # the poisoned batch, once per epoch
    assert one["iterations"] == 6
    assert_same_training(one, two)


def test_save_distributed_load_single(runs):
    """Saved under MirroredStrategy (fused), resumed on one device (pure TF):
    the same as never distributed."""
    dist, single = runs["dist"], runs["single"]
    saved = runs["two"][("normalized_adam", "true", "noskip", dist, "")]
    assert saved["path"] == "fused"
    from_dist = runs["one"][("normalized_adam", "false", "noskip", "", dist)]
    assert from_dist["path"] == "tf"
    from_single = runs["one"][("normalized_adam", "null", "noskip", "", single)]
    assert from_dist["iterations"] == 16
    assert_same_training(from_dist, from_single)


def test_recorded_norms_after_the_cross_replica_sum(runs):
    """The wrapper's recorded norms on 2 replicas are those of the global
    batch's gradient (after the cross-replica sum), as a tape takes them."""
    result = runs["two"][NORMS_JOB]
    assert result["replicas"] == 2
    assert result["path"] == "fused"
    np.testing.assert_allclose(result["norms"], result["expected"], rtol=1e-5)
