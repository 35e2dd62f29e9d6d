"""`normopt bench step` on the other Keras backends: each runs in its own
process (normopt.bench.backend_step) and its records join the step JSON
and table.

No timing is asserted, only that every time is positive and finite and that
each ratio is that of the recorded medians. The real behaviour is checked
through the record the child writes: the normalized step ran on that
backend's keras.ops path, without TensorFlow, and its first step agrees with
plain Adam on gradients normalized in NumPy. A backend that is not installed
is reported as skipped, with the command that installs it.
"""

import json
import math
import sys

import pytest
from neutral import skip_module_unless

skip_module_unless("tensorflow",
                   "the bench runs on TensorFlow and starts the other backends itself")

from normopt.bench import backend_step  # noqa: E402
from normopt.cli import main  # noqa: E402

TINY_PARAMS = 32 * 16 + 16 + 16 * 4 + 4


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "step.json"
    code = main([
        "bench", "step", "--sets", "tiny", "--inners", "adam", "--wrappers", "normalized",
        "--paths", "plain", "--backends", "jax,torch", "--repeats", "2",
        "--warmup", "1", "--bandwidth-mib", "8", "--no-progress", "--no-plot",
        "--json", str(json_path),
    ])
    with open(json_path) as f:
        return code, json.load(f)


def _positive_finite(stats):
    for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s"):
        assert math.isfinite(stats[key]) and stats[key] > 0, (key, stats)
    assert stats["repeats"] == 2


@pytest.mark.parametrize("backend", backend_step.BACKENDS)
def test_each_backend_runs_in_its_own_process_or_says_why_not(step_run, backend):
    code, data = step_run
    assert code == 0
    result = data["step"]["backends"][backend]
    assert result["backend"] == backend
    if not backend_step.installed(backend):
        assert result["status"] == "skipped"
        assert f"{backend} is not installed" in result["reason"]
        assert backend_step.INSTALL_HINT[backend] in result["reason"]
        return
    assert result["status"] == "ok", result
    env = result["environment"]
    assert env["backend"] == backend
    assert env["tensorflow_imported"] is False
    cases = {c["variant"]: c for c in result["cases"]}
    assert set(cases) == set(result["variants"]) >= {"plain", "normalized"}
    plain = cases["plain"]
    for variant, c in cases.items():
        assert c["status"] == "ok", c
        assert (c["set"], c["inner"], c["params"], c["variables"]) == (
            "tiny", "adam", TINY_PARAMS, 4)
        _positive_finite(c["time"])
        assert c["vs_plain"] == pytest.approx(c["time"]["median_s"] / plain["time"]["median_s"])
        assert c["gb_per_s"] == pytest.approx(
            c["params"] * c["bytes_per_param"] / c["time"]["median_s"] / 1e9)
        assert "trusted" in c  # the run's busy verdict reaches these records too
        if variant == "plain":
            # built twice (first and last), both copies timed and pooled
            assert c["time"]["copies"] == 2 and c["plain_again_vs_first"] > 0, c
        else:
            assert c["path_ran"] not in ("fused", "plain"), c
            assert c["max_rel_diff"] < 1e-4, c  # plain Adam on NumPy-normalized grads
        if backend == "jax":
            # the compiled step: plain Adam only updates elementwise; the
            # normalized step also measures each gradient (reductions) and
            # holds the one overflow-rescue cond of scale_math.builtin_norms
            hlo = c["hlo"]
            assert hlo["kernels"] > hlo["reductions"] >= 0, hlo
            if variant == "plain":
                assert (hlo["reductions"], hlo["conditionals"]) == (0, 0), hlo
            else:
                assert hlo["reductions"] >= 1 and hlo["conditionals"] == 1, hlo


def test_the_table_shows_the_backends(step_run, capsys):
    from normopt.bench import report

    _, data = step_run
    text = report.backend_step_table(data["step"]["backends"])
    for backend in backend_step.BACKENDS:
        result = data["step"]["backends"][backend]
        if result["status"] == "ok":
            row = next(line for line in text.splitlines() if line.startswith(backend))
            assert "tiny" in row and "adam" in row and "x)" in row
        else:
            assert f"{result['status']}: {backend}: {result['reason']}" in text


_MODULE = """HloModule m

%fused_square (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %m = f32[8]{0} multiply(%p, %p)
}

%fused_sum (q: f32[8]) -> f32[] {
  %q = f32[8]{0} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[] reduce(%q, %z), dimensions={0}, to_apply=%add
}

ENTRY %main (a: f32[8], b: f32[8]) -> (f32[8], f32[]) {
  %a = f32[8]{0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %c = f32[] constant(1)
  %sq = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_square
  %s = f32[] fusion(%b), kind=kLoop, calls=%fused_sum
  %w = f32[] reduce-window(%s, %c), window={}, to_apply=%add
  %k = (f32[]) conditional(%p, %t, %t), branch_computations={%fused_sum, %fused_square}
  %g = f32[] get-tuple-element(%k), index=0
  %v = f32[8]{0} bitcast(%sq)
  ROOT %out = (f32[8], f32[]) tuple(%v, %g)
}
"""


def test_hlo_counts_reads_the_entry_computation():
    # by hand: kernels sq, s, w, k; s calls a reduce and w is one; the
    # conditional counts once although a branch reduces
    assert backend_step.hlo_counts(_MODULE) == {
        "kernels": 4, "reductions": 2, "conditionals": 1}


def test_a_failed_child_is_reported_not_raised():
    # given an interpreter, the child is started as asked; an unknown
    # backend fails it at once (Keras or the argument parser refuses it)
    result = backend_step.run("theano", ["tiny"], ["adam"], repeats=1, warmup=0,
                              python=sys.executable)
    assert result["backend"] == "theano" and result["status"] == "failed"
    code, _, last_line = result["reason"].partition(": ")
    assert code in ("exit code 1", "exit code 2") and "theano" in last_line, result


def test_tensorflow_only_runs_no_child(tmp_path):
    json_path = tmp_path / "step.json"
    assert main(["bench", "step", "--sets", "tiny", "--inners", "adam",
                 "--wrappers", "normalized", "--paths", "plain", "--backends", "none",
                 "--repeats", "1", "--warmup", "0", "--bandwidth-mib", "8",
                 "--no-progress", "--no-plot", "--json", str(json_path)]) == 0
    with open(json_path) as f:
        assert json.load(f)["step"]["backends"] == {}
