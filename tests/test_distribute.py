"""tf.distribute.MirroredStrategy on 2 logical CPUs vs 1 replica.

The norm is taken of the gradient after the cross-replica sum, so 2 replicas
on a global batch must give the result of 1 replica on the same batch.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_worker(jobs):
    """One process running `jobs` ((replicas, *job)) in turn; a result per
    job (dist_worker.py)."""
    legacy = any(job[1] == "legacy_keras" for job in jobs)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
        TF_USE_LEGACY_KERAS="1" if legacy else "0")
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "dist_worker.py"),
         json.dumps([[str(a) for a in job] for job in jobs])],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == len(jobs), out.stderr[-3000:]
    return [json.loads(ln) for ln in lines]


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
# Cases that the default run leaves to --runslow. Pure TF: the skip test's
# normalized_adam on the pure-TF path (skip_nonfinite=True: 6 finite steps
# applied on 2 replicas as on 1, 2 skipped) keeps the pure-TF path covered
# (its step is that of normalized_adam's parity case plus the skip's cond;
# skip_nonfinite=False under the strategy runs on the fused path in every
# other default case), and these add only TF's own distribution.
# ClippedOptimizer on the fused path: the clipping formula is the same code
# as normalized_adam's scaling (tested in-process), and test_multiworker.py
# keeps ClippedOptimizer's fused path under a multi-replica strategy.
SLOW_CASES = {("normalized_adam", "false"), ("clipped_nesterov", "false"),
              ("embedding_adam", "false"), ("clipped_nesterov", "true")}


# The recorded gradient norms of a custom-loop step (dist_worker.recorded_norms),
# on 2 replicas.
NORMS_JOB = (2, "recorded_norms", "null", "", "", "")


# test_without_tf_keras_and_with_tf_use_legacy_keras, last in the launch
# (which then starts with TF_USE_LEGACY_KERAS=1 and tf-keras hidden until
# its first check is done: dist_worker.without_tf_keras).
TF_KERAS = importlib.util.find_spec("tf_keras") is not None
LEGACY_JOB = (2, "legacy_keras", "null", "", "", "")


# The model a parity job (normalized_adam, fused) saves, for
# test_save_distributed_load_single: on 2 replicas to "dist", on 1 to "single".
SAVED = ("normalized_adam", "true")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """Every scenario, in one launch: each on 2 replicas (MirroredStrategy),
    then on 1 replica (no strategy), then the loads of the saved models."""
    tmp = tmp_path_factory.mktemp("distribute")
    dist, single = str(tmp / "dist.keras"), str(tmp / "single.keras")
    every = request.config.getoption("--runslow")
    plain = [(k, f, "noskip") for k, f in CASES if every or (k, f) not in SLOW_CASES]
    skip = [("normalized_adam", f, "skip") for f in ("false", "true")]
    jobs = {}
    for replicas, save in ((2, dist), (1, single)):
        for job in plain + skip:
            jobs[(replicas, *job)] = (*job, save if job == (*SAVED, "noskip") else "", "")
    jobs[NORMS_JOB] = NORMS_JOB[1:]
    # resumed on 1 replica: saved under the strategy (fused), loaded on the
    # pure-TF path; saved without (fused), loaded with fused=None
    jobs["from_dist"] = ("normalized_adam", "false", "noskip", "", dist)
    jobs["from_single"] = ("normalized_adam", "null", "noskip", "", single)
    if TF_KERAS:
        jobs[LEGACY_JOB] = LEGACY_JOB[1:]
    keys = list(jobs)
    replicas = [k[0] if isinstance(k, tuple) else 1 for k in keys]
    results = run_worker([(r, *jobs[k]) for r, k in zip(replicas, keys)])
    by_key = dict(zip(keys, results))
    return {"one": {k[1:]: v for k, v in by_key.items() if isinstance(k, tuple) and k[0] == 1},
            "two": {k[1:]: v for k, v in by_key.items() if isinstance(k, tuple) and k[0] == 2},
            "from_dist": by_key["from_dist"], "from_single": by_key["from_single"],
            "norms": by_key[NORMS_JOB], "legacy": by_key.get(LEGACY_JOB)}


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
    job = (kind, fused, "noskip")
    one, two = runs["one"][job], runs["two"][job]
    assert two["replicas"] == 2
    # the compiled op runs per device under MirroredStrategy
    expected = "tf" if fused == "false" else "fused"
    assert one["path"] == two["path"] == expected, (one["reason"], two["reason"])
    assert_same_training(one, two)
    assert one["iterations"] == 8


@pytest.mark.parametrize("fused", ["false", "true"])
def test_skip_nonfinite_under_distribution(runs, fused):
    job = ("normalized_adam", fused, "skip")
    one, two = runs["one"][job], runs["two"][job]
    assert two["path"] == ("tf" if fused == "false" else "fused")
    assert one["skipped"] == 2  # the poisoned batch, once per epoch
    assert one["iterations"] == 6
    assert_same_training(one, two)


def test_save_distributed_load_single(runs):
    """Saved under MirroredStrategy (fused), resumed on one device (pure TF):
    the same as never distributed."""
    saved = runs["two"][(*SAVED, "noskip")]  # the parity job, saved
    assert saved["path"] == "fused" and saved["replicas"] == 2
    from_dist = runs["from_dist"]
    assert from_dist["path"] == "tf" and from_dist["replicas"] == 1
    from_single = runs["from_single"]
    assert from_single["path"] == "fused"
    assert from_dist["iterations"] == 16
    assert_same_training(from_dist, from_single)


def test_recorded_norms_after_the_cross_replica_sum(runs):
    """The wrapper's recorded norms on 2 replicas are those of the global
    batch's gradient (after the cross-replica sum), as a tape takes them."""
    result = runs["norms"]
    assert result["replicas"] == 2
    assert result["path"] == "fused"
    np.testing.assert_allclose(result["norms"], result["expected"], rtol=1e-5)


def test_without_tf_keras_and_with_tf_use_legacy_keras(runs):
    """(normopt.tf_keras beside Keras 3, a job of this launch for its fresh
    process: TensorFlow imported once.) With tf-keras missing, `import
    normopt` and the Keras 3 wrappers work and normopt.tf_keras says what to
    install; with it back and TF_USE_LEGACY_KERAS=1, tf.keras is tf_keras and
    its optimizers wrap and train, on the fused path under a MirroredStrategy
    of 2 CPUs as on one replica (the norm is that of the summed gradient)."""
    if not TF_KERAS:
        pytest.skip("tf_keras is not installed")
    got = runs["legacy"]
    np.testing.assert_allclose(got["keras3_step"], [2.7, 3.6], rtol=0, atol=1e-6)
    error = got["import_error"]
    assert error is not None and error.startswith("normopt.tf_keras wraps Keras 2"), error
    assert "tf-keras" in error
    assert got["tf_keras_is_tf_keras"]
    two, one = got["two"], got["one"]
    assert (two[3], one[3]) == (2, 1)  # replicas
    for a, b in zip(two[0], one[0]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert (two[1], one[1], two[2]) == ("fused", "fused", 2)
