"""benchmarks/performance_summary.py renders docs/PERFORMANCE.md from a run's
JSON: every measured row appears, with ratios of its own medians, within the
summary's length, and a partial run renders the parts it has."""

import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def summary():
    path = os.path.join(ROOT, "benchmarks", "performance_summary.py")
    spec = importlib.util.spec_from_file_location("performance_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_row(set_name, inner, plain, graph, xla, fused, bpp=32, params=1e6):
    gbs = params * bpp / fused / 1e9
    return {"set": set_name, "inner": inner, "bytes_per_param": bpp,
            "times_s": {"plain": plain, "tf_graph": graph, "tf_xla": xla, "fused": fused},
            "fused_vs_tf_graph": graph / fused, "fused_vs_tf_xla": xla / fused,
            "fused_vs_plain": plain / fused, "fused_gb_per_s": gbs,
            "fused_pct_bandwidth": 100 * gbs / 30.0, "fused_path_ran": "fused"}


def timed(median):
    return {"status": "ok", "time": {"median_s": median}, "path_ran": "fused"}


def data(with_fit=True):
    out = {
        "environment": {"date_utc": "2026-12-07T09:00:00+00:00", "cpu_model": "Some CPU",
                        "cpu_count": 2, "python": "3.11", "tensorflow": "2.21",
                        "keras": "3.15", "numpy": "2.4", "normopt": "0.1.0", "gpus": []},
        "load_average": {"start": [4.0, 3.0, 2.0], "end": [5.0, 4.0, 3.0]},
        "settings": {"repeats": 10, "warmup": 2, "norm_repeats": 5, "no_fit": not with_fit},
        "duration_s": 600.0,
        "bandwidth": {"bytes_per_s": 30e9, "probes": [30e9, 25e9]},
        "adam_rows": [step_row("big", "adam", 0.050, 0.060, 0.024, 0.012),
                      step_row("eight_1k", "adam", 0.020, 0.022, 0.014, 0.008),
                      step_row("mlp", "adam", 0.006, 0.007, 0.005, 0.003)],
        "inner_rows": [step_row("big", "lion", 0.037, 0.050, 0.030, 0.0117, bpp=24)],
        "wrapper_cases": [
            {"set": "big", "wrapper": w, "path": p, **timed(t)}
            for w, tg, tf_ in (("normalized", 0.056, 0.012), ("adaptive", 0.083, 0.017))
            for p, t in (("tf_graph", tg), ("fused", tf_))],
        "norm_rows": [{"norm": n, "size": 2**20, "bytes": 4 * 2**20,
                       "times": {"tf_function": {"median_s": 6e-4},
                                 "tf_xla": {"median_s": 5e-4},
                                 "fused_op": {"median_s": 2e-4}}} for n in ("l2", "std")],
    }
    if with_fit:
        out["fit_cases"] = [
            {"model": "wide_mlp", "variant": v, **timed(t)}
            for v, t in (("fwd_bwd", 0.040), ("plain", 0.070), ("normalized_tf", 0.069),
                         ("normalized_fused", 0.050))]
        out["fit_cases"][-1].update(fused_vs_tf=0.069 / 0.050, fused_vs_plain=0.070 / 0.050)
    return out


def table_rows(text, first_cell):
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_every_row_with_its_own_ratios(summary):
    text = summary.render(data())
    assert len(text.splitlines()) <= 300
    big = table_rows(text, "big")
    # the Adam row: 60 / 12 ms = 5.00x over the graph path, 24 / 12 = 2.00x XLA
    assert any("5.00x" in r and "2.00x" in r and "4.17x" in r for r in big), big
    lion = table_rows(text, "lion")
    assert len(lion) == 1 and f"{0.050 / 0.0117:.2f}x" in lion[0]
    assert table_rows(text, "adam (first table)")  # big's Adam row joins the inner table
    adaptive = table_rows(text, "big")
    assert any("adaptive" in r and f"{0.083 / 0.017:.2f}x" in r
               and f"{0.017 / 0.012:.2f}x" in r for r in adaptive)
    assert any("3.00x" in r for r in table_rows(text, "std"))  # 600 us / 200 us
    assert any(f"{0.069 / 0.050:.2f}x" in r for r in table_rows(text, "wide_mlp"))
    # the bound: 1e6 parameters x 32 B at 30 GB/s = 1.07 ms against 12 ms
    assert any("1.07 ms" in r and "12.00 ms" in r for r in big)
    assert "load average on 2 CPUs: start 4.0, end 5.0" in text
    assert "perf-log/2026-11-25_to_12-03.md" in text


def test_partial_run_renders_its_parts(summary):
    partial = data(with_fit=False)
    del partial["norm_rows"], partial["wrapper_cases"]
    text = summary.render(partial)
    assert "## Norm of one tensor" not in text
    assert "## Wrappers and granularity" not in text
    assert "model.fit" not in text.split("## Reading")[1]
    assert table_rows(text, "mlp")


def test_summary_cites_only_names_that_exist(summary):
    from test_docs_names import check_span

    spans = set(re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", summary.render(data()),
                                                   flags=re.S)))
    problems = [f"`{s}`: {p}" for s in sorted(spans) for p in check_span(s)]
    assert not problems, problems


def backend_case(backend, set_name, variant, median, plain):
    return {"backend": backend, "set": set_name, "inner": "adam", "variant": variant,
            "status": "ok", "time": {"median_s": median}, "vs_plain": median / plain}


def test_every_backend_beside_tensorflow(summary):
    """JAX's and torch's plain and normalized Adam join TensorFlow's plain,
    pure-TF and fused rows per set, each ratio over its own backend's plain
    step, and the reading says which target each met."""
    d = data(with_fit=False)
    d["backend_steps"] = {
        "jax": {"backend": "jax", "status": "ok",
                "environment": {"jax": "0.10.2", "keras": "3.15", "tensorflow_imported": False},
                "cases": [backend_case("jax", s, v, t, p)
                          for s, p, n in (("big", 0.040, 0.042), ("mlp", 0.004, 0.0048))
                          for v, t in (("plain", p), ("normalized", n))]},
        "torch": {"backend": "torch", "status": "skipped",
                  "reason": "torch is not installed (pip install normopt[torch])"},
    }
    text = summary.render(d)
    section = text.split("## Every backend")[1].split("\n## ")[0]
    big = table_rows(section, "big")
    assert any("TensorFlow" in r and "50.00 ms" in r and "fused op" in r and "12.00 ms" in r
               and f"{0.012 / 0.050:.2f}x" in r for r in big), big
    assert any("TensorFlow" in r and "pure-TF graph" in r and "1.20x" in r for r in big)
    assert any("JAX" in r and "40.00 ms" in r and "42.00 ms" in r and "1.05x" in r
               for r in big), big
    assert any("JAX" in r and "1.20x" in r for r in table_rows(section, "mlp"))
    assert "PyTorch: skipped, torch is not installed" in section
    assert "TensorFlow imported in that process: no" in section
    reading = text.split("## Reading")[1]
    assert "big 1.05x, mlp 1.20x; target <= 1.10x: met on big, not on mlp." in reading
    assert "PyTorch" not in reading
    # without the part, no section
    assert "## Every backend" not in summary.render(data(with_fit=False))


def test_tf_keras_and_spectral_parts(summary):
    """The tf_keras wrapper's rows (issue 32) and the spectral cases (issue
    33) render as tables with their own ratios and a target line each; an
    old JSON without them renders without the sections."""
    d = data(with_fit=False)
    times = {"adam": (0.050, 0.100, 0.025), "legacy_sgd_momentum": (0.040, 0.080, 0.040)}
    d["tf_keras_step"] = {"status": "ok", "rows": [
        {"set": "big", "inner": inner, "times": {
            "plain": {"median_s": p}, "tf_graph": {"median_s": g, "path_ran": "tf_graph"},
            "fused": {"median_s": f, "path_ran": "fused"}},
         "fused_vs_tf_graph": g / f, "fused_vs_plain": p / f}
        for inner, (p, g, f) in times.items()]}
    d["spectral_cases"] = [
        {"set": s, "inner": "adam", "wrapper": w, "path": p, **timed(t)}
        for s, ts in (("big", (0.060, 0.012, 0.090, 0.024)),
                      ("transformer", (0.010, 0.002, 0.012, 0.006)))
        for (w, p), t in zip((("normalized", "tf_graph"), ("normalized", "fused"),
                              ("normalized_spectral", "tf_graph"),
                              ("normalized_spectral", "fused")), ts)]
    text = summary.render(d)
    section = text.split("## tf_keras")[1].split("\n## ")[0]
    adam = table_rows(section, "Adam")
    assert len(adam) == 1 and "100.00 ms" in adam[0] and "4.00x" in adam[0], adam
    legacy = table_rows(section, "legacy SGD (momentum)")
    assert len(legacy) == 1 and "2.00x" in legacy[0] and "1.00x" in legacy[0], legacy
    section = text.split("## Spectral norm")[1].split("\n## ")[0]
    # big: 24 / 12 ms = 2.00x the fused l2 step, 90 / 24 = 3.75x faster than pure TF
    assert any("24.00 ms" in r and "2.00x" in r and "3.75x" in r
               for r in table_rows(section, "big"))
    # transformer: 6 / 2 ms = 3.00x, 12 / 6 = 2.00x
    assert any("3.00x" in r and "2.00x" in r for r in table_rows(section, "transformer"))
    reading = text.split("## Reading")[1]
    assert ("Adam 4.00x, legacy SGD (momentum) 2.00x; target >= 3.00x: met on Adam, "
            "not on legacy SGD (momentum)." in reading)
    assert ("big 2.00x, transformer 3.00x; target <= 2.50x: met on big, not on "
            "transformer." in reading)
    assert "big 3.75x, transformer 2.00x; target >= 2.00x: met on every set." in reading
    from test_docs_names import check_span

    spans = set(re.findall(r"`([^`\n]+)`", text))
    problems = [f"`{s}`: {p}" for s in sorted(spans) for p in check_span(s)]
    assert not problems, problems
    skipped = dict(d, tf_keras_step={"status": "skipped", "reason": "tf_keras is not installed"})
    text = summary.render(skipped)
    assert "Not measured: skipped, tf_keras is not installed." in text
    assert "**tf_keras.**" not in text


def test_old_json_still_renders(summary):
    import json

    path = os.path.join(ROOT, "docs", "perf-log", "2026-12-07_summary.json")
    with open(path) as f:
        text = summary.render(json.load(f), path)
    assert "## Whole optimizer step" in text
    assert "## Spectral norm" not in text and "## tf_keras" not in text
