"""`normopt bench fit`: outputs, recorded paths, the Python entry, bad arguments.

Tiny models only (`--scale tiny`, a few samples of one step): what is checked
is that every model x call is measured and recorded with the path it took,
never how fast (no timing asserts).
"""

import contextlib
import io
import json
import math

import keras
import numpy as np
import pytest

import normopt.bench
from helpers import unfused_inner
from normopt.bench import fit_bench, fit_models
from normopt.cli import main
from normopt.ops import library_status

# A dense model and one with an Embedding (integer inputs, a sparse gradient):
# each traces its four calls, the transformer's normalized_tf step alone
# several seconds, so the transformer's group runs with --runslow
# (test_transformer_group_times_every_call).
MODELS = ["wide_mlp", "embedding"]
CALLS = ["fwd_bwd", "plain", "normalized_tf", "normalized_fused"]
REPEATS = 2
op_library = pytest.mark.skipif(
    not library_status()["loaded"], reason="the op library is not loaded"
)


def _run_cli(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def baseline_models():
    """The models the cli_run fixture's fwd_bwd baselines timed (filled by it)."""
    return []


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, baseline_models):
    out = tmp_path_factory.mktemp("fit")
    json_path, plot_path = out / "fit.json", out / "fit.png"
    real = fit_bench._fwd_bwd_call

    def spy(model, dataset):
        baseline_models.append(model)
        return real(model, dataset)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_bench, "_fwd_bwd_call", spy)
        code, stdout = _run_cli([
            "bench", "fit", "--quick", "--scale", "tiny", "--models", ",".join(MODELS),
            "--inners", "adam", "--repeats", str(REPEATS), "--steps-per-sample", "1",
            "--warmup", "1", "--no-progress", "--json", str(json_path),
            "--plot", str(plot_path),
        ])
    with open(json_path) as f:
        return code, stdout, json.load(f), plot_path


def test_cli_baselines_ran_on_models_no_optimizer_stepped(cli_run, baseline_models):
    """The fwd_bwd baseline of each model (the embedding model's Embedding
    included) timed its own copy, which no optimizer ever stepped, though
    the three variants of the same group trained theirs (see
    test_baseline_runs_on_a_model_no_optimizer_stepped)."""
    _, _, data, _ = cli_run
    assert len(baseline_models) == len(MODELS)
    for model in baseline_models:
        assert int(model.optimizer.iterations) == 0
    for c in data["fit"]["cases"]:
        assert c["status"] == "ok", c


def _check_time(record, repeats=REPEATS):
    assert record["status"] == "ok", record.get("error")
    assert len(record["samples_s"]) == repeats
    assert all(math.isfinite(s) and s > 0 for s in record["samples_s"])
    t = record["time"]
    assert t["min_s"] <= t["q1_s"] <= t["median_s"] <= t["q3_s"] <= t["max_s"]
    assert t["repeats"] == repeats


def test_cli_exits_zero_and_writes_table_json_plot(cli_run):
    code, stdout, _, plot_path = cli_run
    assert code == 0
    with open(plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for heading in ("fwd+bwd only", "plain inner", "normalized TF", "normalized fused",
                    "fused vs TF", "opt share plain/TF/fused", "fused path"):
        assert heading in stdout
    table_rows = [line.split()[0] for line in stdout.splitlines() if line.split()[:1]]
    for model in MODELS:
        assert model in table_rows


def test_json_holds_every_model_and_call_with_its_path(cli_run):
    _, _, data, _ = cli_run
    cases = data["fit"]["cases"]
    assert sorted((c["model"], c["variant"]) for c in cases) == sorted(
        (m, v) for m in MODELS for v in CALLS
    )
    for c in cases:
        _check_time(c)
        assert c["inner"] == "adam"
        assert c["batch_size"] == 8 and c["params"] > 0
    by = {(c["model"], c["variant"]): c for c in cases}
    for model in MODELS:
        assert by[(model, "fwd_bwd")]["path_ran"] == "none"
        assert by[(model, "plain")]["path_ran"] == "plain"
        assert by[(model, "normalized_tf")]["path_ran"] == "tf"
        fused = by[(model, "normalized_fused")]
        assert fused["path_ran"] in ("fused", "tf")
        if fused["path_ran"] == "tf":
            assert fused["path_reason"]
        assert fused["fused_vs_tf"] > 0 and fused["fused_vs_plain"] > 0
        assert "optimizer_share" in fused
    # The embedding model's token ids are integers below the Embedding's vocabulary.
    (spec,) = by[("embedding", "plain")]["inputs"]
    assert spec["dtype"] == "int32" and spec["int_bound"] == 50


@pytest.mark.slow  # by default the cli_run fixture times wide_mlp and embedding
def test_transformer_group_times_every_call():
    """The tiny transformer (attention, LayerNorm, an Embedding fed token ids
    below its vocabulary): every call timed, each with its path."""
    cases = fit_bench.run(["transformer"], ["adam"], scale="tiny", repeats=1,
                          steps_per_sample=1, warmup=1)["cases"]
    assert [c["variant"] for c in cases] == CALLS
    for c in cases:
        _check_time(c, repeats=1)
    by = {c["variant"]: c for c in cases}
    assert by["fwd_bwd"]["path_ran"] == "none" and by["plain"]["path_ran"] == "plain"
    assert by["normalized_tf"]["path_ran"] == "tf"
    assert by["normalized_fused"]["path_ran"] in ("fused", "tf")
    (spec,) = by["plain"]["inputs"]
    assert spec["dtype"] == "int32" and spec["int_bound"] == 50


@op_library
def test_fused_variant_of_a_dense_model_ran_fused(cli_run):
    _, _, data, _ = cli_run
    (fused,) = [c for c in data["fit"]["cases"]
                if c["model"] == "wide_mlp" and c["variant"] == "normalized_fused"]
    assert fused["path_ran"] == "fused", fused["path_reason"]


def test_json_records_environment_and_settings(cli_run):
    _, _, data, _ = cli_run
    for key in ("date_utc", "tensorflow", "keras", "cpu_count", "op_library",
                "load_average_1_5_15_min"):
        assert key in data["environment"]
    settings = data["settings"]
    assert settings["mode"] == "fit" and settings["quick"] is True
    assert list(settings["inners"]) == ["adam"] and settings["jit_compile"] is False
    assert data["runtime_s"] > 0


@op_library
def test_fused_inners_come_from_the_probe(monkeypatch):
    # a candidate without a fused update rule
    monkeypatch.setitem(fit_bench.INNER_CANDIDATES, "unfused", lambda keras: unfused_inner())
    probes = {}
    found = fit_bench.fused_inners(probes=probes)
    assert {"sgd_momentum", "adam", "adamw", "rmsprop", "nadam", "lion"} <= set(found)
    assert all(probes[name]["path"] == "fused" for name in found)
    # Those without a fused update rule are probed and left out.
    assert probes["unfused"]["path"] != "fused" and "unfused" not in found
    assert fit_bench.default_inners() == found


def _tiny_dense():
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
         keras.layers.Dense(2)], name="tiny_dense")


def _dense(g):
    import tensorflow as tf

    return tf.convert_to_tensor(g).numpy()


def test_fwd_bwd_baseline_computes_every_gradient():
    """The floor of a step is forward and backward: its function returns
    the gradients of the batch, equal to an eager tape's (the transformer's
    Embedding gradient included, as IndexedSlices)."""
    import tensorflow as tf

    case = fit_models.reference_model("transformer", "tiny")
    model = case.build()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = fit_models.synthetic_inputs(fit_models.input_specs(model, case.batch_size))
    y = fit_models.synthetic_targets(model, case.batch_size, classification=True)
    iterator = fit_bench._timing_iterator(model, fit_bench._dataset(x, y))
    loss, grads = fit_bench.fwd_bwd_function(model)(iterator)
    with tf.GradientTape() as tape:
        want_loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True),
                                       training=True)
    want = tape.gradient(want_loss, model.trainable_variables)
    assert any(isinstance(g, tf.IndexedSlices) for g in grads)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(_dense(g), _dense(w), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # by default: test_cli_baselines_ran_on_models_no_optimizer_stepped
def test_baseline_runs_on_a_model_no_optimizer_stepped(monkeypatch):
    """The fwd_bwd baseline times its own copy of the model, never stepped:
    after a Keras sparse update (here plain Adagrad's scatters into the
    Embedding table) TF copies the whole variable on every read, which a
    baseline on the plain variant's model would time as forward work."""
    seen = []
    real = fit_bench._fwd_bwd_call

    def spy(model, dataset):
        seen.append(model)
        return real(model, dataset)

    monkeypatch.setattr(fit_bench, "_fwd_bwd_call", spy)
    case = fit_models.reference_model("embedding", "tiny")
    first = case.build()
    x = fit_models.synthetic_inputs(fit_models.input_specs(first, case.batch_size))
    y = fit_models.synthetic_targets(first, case.batch_size, classification=True)
    records = fit_bench.run_group(
        "embedding", case.build, x, y, "adagrad",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        repeats=1, steps_per_sample=1, warmup=1)
    (model,) = seen
    assert int(model.optimizer.iterations) == 0
    assert {r["variant"] for r in records} == set(fit_bench.CALLS)
    assert all(r["status"] == "ok" for r in records), records


def test_python_entry_times_a_model_object():
    assert normopt.bench.fit is fit_bench.fit
    model = _tiny_dense()
    before = [w.copy() for w in model.get_weights()]
    result = normopt.bench.fit(model, ["sgd_momentum"], batch_size=4, repeats=2,
                               steps_per_sample=1, warmup=1)
    cases = result["cases"]
    assert [c["variant"] for c in cases] == CALLS
    for c in cases:
        _check_time(c)
        assert c["model"] == "tiny_dense" and c["inner"] == "sgd_momentum"
        assert c["inputs"] == [{"shape": [4, 3], "dtype": "float32", "int_bound": None}]
    if library_status()["loaded"]:
        assert cases[-1]["path_ran"] == "fused"
    # The model passed in is copied, never trained.
    for w0, w1 in zip(before, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)


def _multi_input_model(kind):
    """Token ids (vocabulary 30), a category id (vocabulary 4: the Embedding
    found first is the larger one) and float features, as a list or a dict
    (keys not in sorted order); two outputs."""
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    category = keras.Input((1,), dtype="int32", name="category")
    features = keras.Input((3,), name="features")
    t = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 4)(tokens))
    c = keras.layers.Flatten()(keras.layers.Embedding(4, 2)(category))
    x = keras.layers.Concatenate()([t, c, features])
    outputs = [keras.layers.Dense(2)(x), keras.layers.Dense(1)(x)]
    if kind == "list":
        return keras.Model([tokens, category, features], outputs, name="multi")
    return keras.Model({"tokens": tokens, "features": features, "category": category},
                       outputs, name="multi")


MULTI_INPUTS = {"tokens": {"shape": [4, 5], "dtype": "int32", "int_bound": 30},
                "category": {"shape": [4, 1], "dtype": "int32", "int_bound": 4},
                "features": {"shape": [4, 3], "dtype": "float32", "int_bound": None}}


@pytest.mark.parametrize("kind", ["list", pytest.param("dict", marks=pytest.mark.slow)])
def test_model_path_times_a_saved_multi_input_model(kind, tmp_path, monkeypatch):
    """`normopt bench fit --model PATH` on a saved model with several inputs,
    as a list (the dict with --runslow: its batch is checked below), integer
    ones feeding Embeddings of different sizes: every call is timed, each int
    input drawing valid indices of the Embedding it feeds; the table names
    the file and the JSON records its path. (A single token-id input is the
    `tokens` input here.) Without Matplotlib (blocked here) the table and
    JSON are kept and one note replaces the plot (as in
    tests/test_optional_packages.py, whose own bench fit run is --runslow)."""
    import sys

    model = _multi_input_model(kind)
    path = str(tmp_path / "multi.keras")
    model.save(path)
    json_path, plot_path = tmp_path / "out.json", tmp_path / "out.png"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, stdout = _run_cli([
        "bench", "fit", "--model", path, "--inners", "sgd_momentum", "--batch-size", "4",
        "--repeats", "1", "--steps-per-sample", "1", "--warmup", "1", "--no-progress",
        "--json", str(json_path), "--plot", str(plot_path),
    ])
    assert code == 0
    assert "multi.keras" in stdout and "normalized fused" in stdout  # the table
    assert not plot_path.exists()
    assert ('plot skipped: matplotlib is not installed (pip install "normopt[bench]")'
            in stdout.splitlines())
    with open(json_path) as f:
        data = json.load(f)
    assert data["settings"]["model_path"] == path
    cases = data["fit"]["cases"]
    assert [c["variant"] for c in cases] == CALLS
    for c in cases:
        _check_time(c, repeats=1)
        assert c["inner"] == "sgd_momentum"
    loaded = keras.models.load_model(path, compile=False)
    assert cases[0]["inputs"] == [MULTI_INPUTS[t.name] for t in loaded.inputs]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_multi_input_batch_is_packed_as_the_model_takes_it(kind, tmp_path):
    """The batch of a saved multi-input model (list or dict) is packed as the
    model takes it, each array where its input is, with valid indices: the
    loaded model runs forward and backward on it."""
    import tensorflow as tf

    path = str(tmp_path / "multi.keras")
    _multi_input_model(kind).save(path)
    loaded = keras.models.load_model(path, compile=False)
    specs = fit_models.input_specs(loaded, 4)
    assert [dict(zip(("shape", "dtype", "int_bound"), (list(s[0]), s[1], s[2])))
            for s in specs] == [MULTI_INPUTS[t.name] for t in loaded.inputs]
    x = fit_models.synthetic_inputs(specs, 0, fit_models.input_structure(loaded))
    named = x if kind == "dict" else dict(zip(["tokens", "category", "features"], x))
    assert isinstance(x, dict if kind == "dict" else tuple)
    for name, array in named.items():
        want = MULTI_INPUTS[name]
        assert list(array.shape) == want["shape"] and array.dtype == want["dtype"]
        if want["int_bound"]:
            assert 0 <= array.min() and array.max() < want["int_bound"]
    with tf.GradientTape() as tape:
        outputs = loaded(x, training=True)
        loss = sum(tf.reduce_sum(o) for o in outputs)
    grads = tape.gradient(loss, loaded.trainable_weights)
    assert [tuple(o.shape) for o in outputs] == [(4, 2), (4, 1)]
    assert all(g is not None for g in grads)


def test_input_specs_of_unknown_dims_and_int_inputs_without_embedding():
    inp = keras.Input((None, 2), dtype="int32")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.ops.cast(inp, "float32")))
    (spec,) = fit_models.input_specs(model, 3)
    assert spec == ((3, fit_models.DEFAULT_UNKNOWN_DIM, 2), "int32", fit_models.DEFAULT_INT_BOUND)
    x = fit_models.synthetic_inputs([spec])
    assert x.dtype == np.int32 and x.min() >= 0 and x.max() < fit_models.DEFAULT_INT_BOUND


def test_params_column_shows_the_count_of_small_and_large_models():
    """97 parameters read "97", not "0k"; three significant digits in k,
    two decimals in M."""
    from normopt.bench import fit_report

    def params_cell(n):
        case = {"model": "m", "params": n, "batch_size": 4, "inner": "adam",
                "variant": "plain", "status": "failed", "error": "not run"}
        return fit_report.rows({"cases": [case]})[0][fit_report.HEADER.index("params")]

    assert [params_cell(n) for n in (97, 999, 1_234, 12_345, 588_298, 999_700,
                                      14_708_746)] == [
        "97", "999", "1.23k", "12.3k", "588k", "1.00M", "14.71M"]


@pytest.mark.parametrize("argv, message", [
    (["--models", "mlp30,nope"], "unknown model 'nope'"),
    (["--inners", "sgd_momentum,bogus"], "unknown inner optimizer 'bogus'"),
    (["--scale", "huge"], "invalid choice: 'huge'"),
    (["--repeats", "0"], "below the minimum 1"),
    (["--steps-per-sample", "x"], "'x' is not an integer"),
    (["--batch-size", "0"], "below the minimum 1"),
    (["--model", "missing.keras"], "no such file"),
    (["--model", "model.h5"], "not a .keras file"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "fit", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_step_mode_refuses_fit_only_inner(capsys, monkeypatch):
    from normopt.bench import step_bench

    # every candidate is a step inner now: lamb stands for a fit-only one
    monkeypatch.setattr(step_bench, "INNERS", tuple(i for i in step_bench.INNERS if i != "lamb"))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "step", "--inners", "lamb"])
    assert exc.value.code == 2
    assert "unknown inner optimizer 'lamb'" in capsys.readouterr().err


@pytest.mark.parametrize("name", fit_models.MODELS)
def test_every_reference_model_builds_tiny_with_class_logits(name):
    case = fit_models.reference_model(name, "tiny")
    model = case.build()
    assert model.count_params() < 20_000
    x = fit_models.synthetic_inputs(fit_models.input_specs(model, case.batch_size))
    assert tuple(model(x).shape) == (case.batch_size, fit_models.CLASSES)


@pytest.mark.parametrize("name, params", [
    # Dense(n -> m) holds n*m + m; Embedding(v, d) holds v*d.
    ("wide_mlp", (1024 * 2048 + 2048) + 3 * (2048 * 2048 + 2048) + (2048 * 10 + 10)),
    ("embedding", 100_000 * 64 + (64 * 64 + 64) + (64 * 10 + 10)),
])
def test_reference_model_sizes_are_the_documented_ones(name, params):
    model = fit_models.reference_model(name).build()
    assert model.count_params() == params
    assert f"{params:,}" in fit_models.__doc__
