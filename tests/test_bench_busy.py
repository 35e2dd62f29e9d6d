"""`normopt bench` on a busy machine: the run says so and marks its figures.

The signals (load average, other processes' CPU time, bandwidth probes,
sample spread) are fed in, never measured, so every verdict here is
deterministic; no timing is asserted.
"""

import contextlib
import io
import json
import os

import pytest

from normopt.bench import busy, environment, fit_report, report, timing
from normopt.cli import main

QUIET_PROBES = [{"bytes_per_s": 10e9}, {"bytes_per_s": 9e9}]  # 10% apart
TIGHT = timing.summarize([1.00e-3, 1.01e-3, 0.99e-3, 1.00e-3, 1.02e-3])
WIDE = timing.summarize([1e-3, 1e-3, 4e-3, 16e-3, 24e-3])  # preempted samples


def test_quiet_machine_is_not_busy():
    v = busy.machine_verdict(2, [1.0, 0.8, 0.5], [2.0, 1.5, 1.0], 0.05, QUIET_PROBES)
    assert v["busy"] is False and v["reasons"] == []
    assert v["signals"]["other_cpu_share"] == 0.05
    assert v["signals"]["bandwidth_probe_disagreement"] == pytest.approx(0.1)
    assert v["thresholds"] == busy.THRESHOLDS


@pytest.mark.parametrize("kwargs, reason", [
    (dict(other_share=0.46), "other processes used 46% of the CPU time"),
    (dict(load_before=[3.2, 1, 1]), "load average 3.2 before the run on 2 CPUs"),
    (dict(load_after=[8.8, 5, 2]), "load average 8.8 after the run on 2 CPUs"),
    (dict(probes=[{"bytes_per_s": 10e9}, {"bytes_per_s": 6.9e9}]),
     "the bandwidth probes before and after the run differ by 31%"),
], ids=["cpu share", "load before", "load after", "probes"])
def test_each_signal_alone_makes_the_machine_busy(kwargs, reason):
    quiet = dict(load_before=[1.0, 1, 1], load_after=[2.0, 1, 1], other_share=0.0,
                 probes=QUIET_PROBES)
    v = busy.machine_verdict(2, **{**quiet, **kwargs})
    assert v["busy"] is True and v["reasons"] == [reason]


def test_thresholds_are_exclusive_and_missing_signals_are_quiet():
    at = busy.machine_verdict(
        4, [busy.LOAD_PER_CPU * 4] * 3, [busy.LOAD_PER_CPU * 4] * 3, busy.OTHER_CPU_SHARE,
        [{"bytes_per_s": 4.0}, {"bytes_per_s": 4.0 * (1 - busy.PROBE_DISAGREEMENT)}])
    assert at["busy"] is False, at["reasons"]
    none = busy.machine_verdict(4)  # no load average, no /proc/stat, no probes
    assert none["busy"] is False
    assert none["signals"]["bandwidth_probe_disagreement"] is None


def test_other_cpu_share_is_machine_time_outside_this_process():
    before = {"machine_s": 100.0, "own_s": 10.0, "wall_s": 50.0}
    after = {"machine_s": 118.0, "own_s": 14.0, "wall_s": 60.0}
    # (18 s machine - 4 s ours) / (10 s x 2 CPUs)
    assert busy.other_cpu_share(before, after, 2) == pytest.approx(0.7)
    alone = dict(after, machine_s=104.0)  # only we ran: nothing left for others
    assert busy.other_cpu_share(before, alone, 2) == 0.0
    assert busy.other_cpu_share(dict(before, machine_s=None), after, 2) is None


def test_cpu_snapshot_counts_this_process():
    snap = busy.cpu_snapshot()
    assert snap["own_s"] > 0 and snap["wall_s"] > 0
    if os.path.exists("/proc/stat"):
        assert snap["machine_s"] >= snap["own_s"]


def _records():
    return [{"status": "ok", "time": dict(TIGHT)}, {"status": "ok", "time": dict(WIDE)},
            {"status": "failed", "error": "x"}]


def test_quiet_machine_distrusts_only_widely_spread_samples():
    tight, wide, failed = records = _records()
    busy.flag(records, busy.machine_verdict(2))
    assert tight["trusted"] is True and tight["untrusted_reasons"] == []
    spread = WIDE["iqr_s"] / WIDE["median_s"]
    assert wide["trusted"] is False
    assert wide["untrusted_reasons"] == [
        f"samples spread over {100 * spread:.0f}% of the median (IQR)"]
    assert "trusted" not in failed
    assert busy.note(records).startswith("! = not to be trusted: its samples spread")


def test_busy_machine_distrusts_every_figure():
    records = _records()
    busy.flag(records, busy.machine_verdict(2, load_after=[8.8, 5, 2]))
    assert [r.get("trusted") for r in records] == [False, False, None]
    assert records[0]["untrusted_reasons"] == [busy.BUSY]
    assert busy.note(records) == (
        "! = not to be trusted: the machine was busy during the run (see above); "
        "rerun on a quiet machine")


def _norm_case(impl, t):
    return {"norm": "l2", "size": 256, "impl": impl, "status": "ok", "time": dict(t),
            "gb_per_s": 1.0}


def test_tables_mark_the_distrusted_figures_and_add_one_note():
    cases = [_norm_case("tf_eager", TIGHT), _norm_case("numba_cpu", WIDE)]
    busy.flag(cases, busy.machine_verdict(2))
    lines = report.norms_table({"cases": cases, "unavailable": {}}).splitlines()
    (row,) = [line for line in lines if line.startswith("l2")]
    assert row.count("!") == 1 and row.rstrip().endswith("!")  # numba_cpu, last column
    assert sum(line.startswith("! = ") for line in lines) == 1

    fit_cases = [{"model": "m", "inner": "adam", "variant": v, "status": "ok",
                  "time": dict(TIGHT), "params": 97, "batch_size": 4, "path_ran": "fused"}
                 for v in fit_report.COLUMNS]
    busy.flag(fit_cases, busy.machine_verdict(2, other_share=0.5))
    text = fit_report.table({"cases": fit_cases})
    assert text.count(" !") == len(fit_report.COLUMNS)
    assert [line for line in text.splitlines() if line.startswith("! = ")] == [
        busy.note(fit_cases)]
    assert "the machine was busy during the run" in busy.note(fit_cases)


def test_unflagged_results_print_no_mark():
    cases = [_norm_case("tf_eager", WIDE)]  # e.g. a JSON from before the flags
    text = report.norms_table({"cases": cases, "unavailable": {}})
    assert "!" not in text


def test_bench_on_a_busy_machine_says_so(monkeypatch, tmp_path):
    """The run records the verdict and marks its figures (the load average
    fed in is ten per CPU)."""
    cpus = os.cpu_count()
    monkeypatch.setattr(environment, "load_average", lambda: [10.0 * cpus] * 3)
    json_path = tmp_path / "n.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "norms", "--sizes", "256", "--norms", "l2", "--impls",
                     "tf_eager", "--repeats", "3", "--warmup", "0", "--bandwidth-mib",
                     "1", "--no-progress", "--no-plot", "--json", str(json_path)])
    assert code == 0
    with open(json_path) as f:
        data = json.load(f)
    verdict = data["busy_machine"]
    assert verdict["busy"] is True
    assert f"load average {10.0 * cpus:.1f} after the run on {cpus} CPUs" in verdict["reasons"]
    (case,) = data["norms"]["cases"]
    assert case["trusted"] is False and busy.BUSY in case["untrusted_reasons"]
    lines = out.getvalue().splitlines()
    assert any(line.startswith("warning: the machine was busy during the run:")
               for line in lines)
    (row,) = [line for line in lines if line.startswith("l2 ")]
    assert row.rstrip().endswith("!")
