"""`normopt bench`: the quick mode end to end, outputs, and bad arguments.

Timings are only checked to be positive and finite (no speed asserts); each
successful norm result must agree with the float64 pure-TF norm the
benchmark records beside it, and that record is checked against an
independent NumPy norm (tests/reference.py).
"""

import json
import math
import os
import sys

import numpy as np
import pytest

import reference as R

from normopt.bench import norm_impls
from normopt.cli import main

NORMS = ["l2", "std", "max"]
SIZES = [2**8, 2**10]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the step benchmark's smallest set (a 32 -> 16 -> 4 dense net): the paths
# and their records are what is checked, not the speed of a large step
TINY_PARAMS = 32 * 16 + 16 + 16 * 4 + 4


def test_step_sets_have_their_documented_sizes():
    from normopt.bench import cases

    assert cases.parameter_count(cases.step_shapes("eight_1k")) == 8 * 1024 * 1024
    assert cases.parameter_count(cases.step_shapes("tiny")) == TINY_PARAMS
    assert cases.parameter_count(cases.step_shapes("big")) == 4096 * 4096


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, plot_path = out / "quick.json", out / "quick.png"
    code = main([
        "bench", "quick", "--norms", ",".join(NORMS), "--min-exp", "8",
        "--max-exp", "10", "--exp-step", "2", "--repeats", "2", "--warmup", "1",
        "--sets", "tiny", "--bandwidth-mib", "16", "--no-progress",
        # the other backends' children: tests/test_bench_backends.py
        "--backends", "none",
        "--json", str(json_path), "--plot", str(plot_path),
    ])
    with open(json_path) as f:
        return code, json.load(f), plot_path


def _positive_finite_time(stats):
    for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s"):
        assert math.isfinite(stats[key]) and stats[key] > 0, (key, stats)
    assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
    assert stats["repeats"] == 2


def test_quick_exits_zero_and_writes_plot(quick_run):
    code, _, plot_path = quick_run
    assert code == 0
    with open(plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_json_records_environment_and_bandwidth(quick_run):
    _, data, _ = quick_run
    env = data["environment"]
    for key in ("date_utc", "tensorflow", "keras", "numpy", "numba", "cpu_count", "op_library"):
        assert key in env
    assert set(env["op_library"]) >= {"loaded", "path", "reason"}
    bw = data["bandwidth"]
    assert len(bw["probes"]) == 2
    assert bw["bytes_per_s"] == max(p["bytes_per_s"] for p in bw["probes"]) > 0


def test_json_records_whether_the_machine_was_busy(quick_run):
    """The verdict and its signals are recorded, and each timed figure says
    whether it can be trusted (the verdict itself depends on this machine:
    tests/test_bench_busy.py feeds the signals in)."""
    _, data, _ = quick_run
    verdict = data["busy_machine"]
    assert verdict["busy"] == bool(verdict["reasons"])
    signals = verdict["signals"]
    assert signals["cpus"] == data["environment"]["cpu_count"]
    probes = data["bandwidth"]["probes"]
    assert signals["bandwidth_probe_disagreement"] == pytest.approx(
        1 - min(p["bytes_per_s"] for p in probes) / max(p["bytes_per_s"] for p in probes))
    for case in data["norms"]["cases"] + data["step"]["cases"]:
        if case["status"] == "ok":
            assert case["trusted"] is (not case["untrusted_reasons"])
            assert case["trusted"] or not verdict["busy"] or (
                "the machine was busy during the run" in case["untrusted_reasons"])


def test_every_norm_size_and_available_impl_is_timed(quick_run):
    _, data, _ = quick_run
    result = data["norms"]
    available = [i for i in norm_impls.IMPLEMENTATIONS if i not in result["unavailable"]]
    # The three pure-TF implementations can always run.
    assert {"tf_eager", "tf_function", "tf_xla"} <= set(available)
    for impl, reason in result["unavailable"].items():
        assert impl in norm_impls.IMPLEMENTATIONS
        assert isinstance(reason, str) and reason
    by_key = {(c["impl"], c["norm"], c["size"]): c for c in result["cases"]}
    assert len(by_key) == len(result["cases"]) == len(available) * len(NORMS) * len(SIZES)
    bw = data["bandwidth"]["bytes_per_s"]
    for impl in available:
        for norm in NORMS:
            for size in SIZES:
                c = by_key[(impl, norm, size)]
                assert c["status"] == "ok", c
                _positive_finite_time(c["time"])
                seconds = c["time"]["median_s"]
                assert c["bytes_read"] == size * 4
                assert c["elements_per_s"] == pytest.approx(size / seconds)
                assert c["gb_per_s"] == pytest.approx(size * 4 / seconds / 1e9)
                assert c["pct_bandwidth"] == pytest.approx(100 * size * 4 / seconds / bw)
                assert c["rel_diff"] < 1e-5, c


def test_recorded_reference_norm_matches_numpy(quick_run):
    # The benchmark's data is standard normal from a fixed seed; rebuild it
    # and check the recorded reference against the NumPy formulas.
    _, data, _ = quick_run
    rng = np.random.default_rng(0)
    eps = 1e-7
    for size in SIZES:
        x = rng.standard_normal(size).astype(np.float32).astype(np.float64)
        for norm in NORMS:
            recorded = next(
                c["reference_value"] for c in data["norms"]["cases"]
                if c["norm"] == norm and c["size"] == size
            )
            assert recorded == pytest.approx(R.norm(x, norm, eps), rel=1e-12)


def test_step_json_has_every_path_with_ratios(quick_run):
    _, data, _ = quick_run
    cases = data["step"]["cases"]
    by_path = {c["path"]: c for c in cases}
    assert set(by_path) == {"plain", "tf_graph", "tf_xla", "fused"}
    for c in cases:
        assert c["set"] == "tiny" and c["params"] == TINY_PARAMS
        if c["status"] != "ok":
            assert c["path"] == "fused" and c["reason"], c
            continue
        _positive_finite_time(c["time"])
        seconds = c["time"]["median_s"]
        assert c["gb_per_s"] == pytest.approx(c["params"] * c["bytes_per_param"] / seconds / 1e9)
    graph = by_path["tf_graph"]["time"]["median_s"]
    assert by_path["tf_graph"]["path_ran"] == "tf"
    assert by_path["tf_xla"]["path_ran"] == "tf"
    assert by_path["tf_xla"]["speedup_vs_tf_graph"] == pytest.approx(
        graph / by_path["tf_xla"]["time"]["median_s"])
    assert by_path["plain"]["speedup_vs_tf_graph"]["normalized"] == pytest.approx(
        graph / by_path["plain"]["time"]["median_s"])
    fused = by_path["fused"]
    if fused["status"] == "ok":
        assert fused["path_ran"] == "fused"
        assert fused["speedup_vs_tf_graph"] == pytest.approx(graph / fused["time"]["median_s"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["norms", "--norms", "l2,nope"], "unknown norm 'nope'"),
        (["norms", "--min-exp", "12", "--max-exp", "10"], "bad size range"),
        (["norms", "--max-exp", "31"], "above 30"),
        (["norms", "--sizes", "0,16"], "below the minimum 1"),
        (["norms", "--impls", "tf_eager,magic"], "unknown implementation 'magic'"),
        (["step", "--sets", "huge"], "unknown variable set 'huge'"),
        (["step", "--paths", "warp"], "unknown path 'warp'"),
        (["step", "--repeats", "0"], "below the minimum 1"),
        (["turbo"], "invalid choice: 'turbo'"),
    ],
)
def test_bad_arguments_exit_nonzero_with_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["bench"] + argv + ["--out-dir", str(tmp_path)])
    assert info.value.code != 0
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_benchmark_suite_collects(capsys):
    """pytest collects the benchmarks folder (in this process: a second
    Python would spend its time importing TensorFlow again)."""
    saved_path, saved_conftest = list(sys.path), sys.modules.get("conftest")
    try:
        code = pytest.main(["--collect-only", "-q", "--capture=no", "-p", "no:cacheprovider",
                            "--rootdir", REPO, os.path.join(REPO, "benchmarks")])
    finally:  # the nested run imported benchmarks/conftest.py as `conftest`
        sys.path[:] = saved_path
        if saved_conftest is not None:
            sys.modules["conftest"] = saved_conftest
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test_norm_call" in out and "test_optimizer_step" in out


def test_every_step_inner_takes_the_fused_path_and_counts_its_slots():
    from normopt.bench import fit_bench, inners
    from normopt.ops import library, step_plan

    if not library.status()["loaded"]:
        pytest.fail(f"the op library is not loaded: {library.status()['reason']}")
    for name in inners.STEP_INNERS:
        assert fit_bench.probe_path(name) == ("fused", None), name
        opt = inners.make_inner(name)
        slots = {"adam": 2, "adamw": 2, "sgd_nesterov": 1, "rmsprop": 1, "adagrad": 1,
                 "adamax": 2, "nadam": 2, "adadelta": 2, "ftrl": 2, "lion": 1,
                 "lamb": 2, "schedule_free_adamw": 2}[name]
        assert inners.bytes_per_param(name, True) == 12 + 8 * slots + 4
        assert step_plan.update_kernel(opt) is not None


def test_interleaved_samples_rotate_and_finish_each_sample():
    """Round r starts at call r mod n; a sample is number[name] calls, its
    last result goes to finish; on_round follows every round."""
    from normopt.bench import timing

    number = {"a": 1, "b": 2, "c": 3}
    log, finished, rounds = [], [], []
    calls = {name: (lambda name=name: log.append(name) or len(log)) for name in number}
    samples = timing.interleaved_samples(
        calls, 4, number, on_round=lambda: rounds.append(len(log)), finish=finished.append)
    expected, sample_ends = [], []
    for r in range(4):
        for name in (list(number)[r % 3:] + list(number)[:r % 3]):
            expected += [name] * number[name]
            sample_ends.append(len(expected))  # the last call returns len(log)
    assert log == expected
    assert finished == sample_ends
    assert rounds == [6, 12, 18, 24]
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for v in samples.values() for t in v)
