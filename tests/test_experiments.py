"""`normopt experiments`: quick runs end to end, checked against NumPy.

Each quick experiment runs once (module fixture) through the real CLI entry
point; the tests then read its JSON and compare with quantities computed here
from the formulas (closed-form optimum by a NumPy solve, loss at w0, the
Nesterov stability bound, parameter counts).
"""

import math
import re

import numpy as np
import pytest

from helpers import assert_png, strict_json
from normopt.cli import main
from normopt.experiments import data, problems, suite
from normopt.ops import paths


def _run_cli(*argv):
    return main(["experiments", *argv, "--no-progress"])


# The classifier runs of the default quick fixture: one run per kind of
# optimizer the suites hold (plain and wrapped, each inner, per-tensor,
# unit-wise and adaptive clipping), not every learning-rate/norm pairing:
# each Keras fit costs seconds of tracing, the norms are checked elsewhere,
# and every spec is built by the tests below. The whole lists train in
# test_classifier_quick_full_suites (--runslow). The per-tensor Normalized
# Adam run is the cnn's (the mlp's own is in the full suite).
MLP_QUICK = ["Adam lr=0.001", "Normalized Adam (l2, unit) lr=0.001",
             "AGC Adam (clip 0.01) lr=0.001"]
CNN_QUICK = ["SGD-nesterov lr=0.01", "Normalized Adam (l2) lr=0.001"]


def _specs(specs, labels):
    by_label = {s.label: s for s in specs}
    return [by_label[label] for label in labels]


def _run_quick(tmp_path_factory, names):
    results = {}
    for name in names:
        out = tmp_path_factory.mktemp(name.replace("-", "_"))
        assert _run_cli(name, "--quick", "--out", str(out)) == 0
        stem = name.replace("-", "_")
        assert_png(out / f"{stem}.png")
        results[name] = (strict_json(out / f"{stem}.json"), out)
    return results


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """name -> (JSON dict, output folder) of each --quick experiment, run once
    (mlp and cnn on the MLP_QUICK / CNN_QUICK runs of their suites)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(suite, "MLP_SPECS", _specs(suite.MLP_SPECS, MLP_QUICK))
        mp.setattr(suite, "CNN_SPECS", _specs(suite.CNN_SPECS, CNN_QUICK))
        return _run_quick(tmp_path_factory, suite.NAMES)


def _numpy_problem(dim, seed):
    """Q, b, w0 of the experiment and the optimum, solved here with NumPy."""
    p = problems.make_quadratic(dim, seed)
    w_star = np.linalg.solve(p.Q, p.b)
    l_star = 0.5 * w_star @ p.Q @ w_star - p.b @ w_star
    return p, w_star, l_star


def _run(result, label):
    matches = [r for r in result["runs"] if r["optimizer"]["label"] == label]
    assert len(matches) == 1, [r["optimizer"]["label"] for r in result["runs"]]
    return matches[0]


# ------------------------------------------------------------ the problem

@pytest.mark.parametrize("dim,seed", [(20, 0), (100, 0), (50, 3)])
def test_closed_form_optimum_matches_numpy_solve(dim, seed):
    p, w_star, l_star = _numpy_problem(dim, seed)
    assert np.allclose(p.Q, p.Q.T, rtol=0, atol=0)
    assert np.linalg.eigvalsh(p.Q).min() > 0
    # the gradient Q w - b vanishes at the solve's w*
    assert np.linalg.norm(p.Q @ w_star - p.b) <= 1e-8 * np.linalg.norm(p.b)
    w_closed, l_closed = p.optimum()
    np.testing.assert_allclose(w_closed, w_star, rtol=1e-10, atol=1e-10)
    assert l_closed == pytest.approx(l_star, rel=1e-10)
    assert l_closed == pytest.approx(-0.5 * p.b @ np.linalg.inv(p.Q) @ p.b, rel=1e-8)
    # no point nearby does better
    rng = np.random.RandomState(seed)
    for _ in range(5):
        assert p.loss(w_star + 1e-3 * rng.standard_normal(dim)) > l_star


def test_problem_is_sklearn_spd_matrix_and_seeded():
    from sklearn.datasets import make_spd_matrix

    a, b = problems.make_quadratic(30, 7), problems.make_quadratic(30, 7)
    raw = make_spd_matrix(n_dim=30, random_state=7)
    np.testing.assert_allclose(a.Q, 0.5 * (raw + raw.T), rtol=0, atol=1e-15)
    assert np.array_equal(a.b, b.b) and np.array_equal(a.w0, b.w0)
    assert not np.array_equal(a.b, problems.make_quadratic(30, 8).b)


# ------------------------------------------------------------ convex

def test_convex_quick_outputs_and_optimum(quick):
    result, _ = quick["convex"]
    cfg = suite.SETTINGS["convex"]["quick"]
    p, _, l_star = _numpy_problem(cfg["dim"], result["seed"])
    assert result["problem"]["optimum"] == pytest.approx(l_star, rel=1e-10)
    assert len(result["runs"]) == len(suite.CONVEX_SPECS)
    loss0 = 0.5 * p.w0 @ p.Q @ p.w0 - p.b @ p.w0
    for run in result["runs"]:
        loss = run["curves"]["loss"]
        assert len(loss) == cfg["iterations"] + 1
        assert loss[0] == pytest.approx(loss0, rel=1e-12)
        if run["optimizer"]["normalization"] is None:
            assert run["path"] == "keras"
        else:
            assert run["path"] in paths.ALL


def test_convex_normalized_nesterov_closes_gap_by_orders_of_magnitude(quick):
    result, _ = quick["convex"]
    cfg = suite.SETTINGS["convex"]["quick"]
    _, _, l_star = _numpy_problem(cfg["dim"], result["seed"])
    run = _run(result, "Normalized SGD-nesterov (l2) lr=0.1")
    loss = np.array(run["curves"]["loss"], dtype=np.float64)
    assert np.isfinite(loss).all()
    gap = loss - l_star
    assert (gap > -1e-9 * abs(l_star)).all()  # nothing beats the optimum
    assert gap[-1] < 1e-2 * gap[0]
    assert run["final"]["final_gap"] == pytest.approx(gap[-1], rel=1e-9)


def test_convex_plain_sgd_divergence_is_reported(quick):
    """lr * lambda_max beyond Nesterov's stability bound 2(1+m)/(1+2m): it must diverge, and say so."""
    result, _ = quick["convex"]
    cfg = suite.SETTINGS["convex"]["quick"]
    p, _, l_star = _numpy_problem(cfg["dim"], result["seed"])
    lr, m = 0.1, 0.9
    assert lr * np.linalg.eigvalsh(p.Q).max() > 2 * (1 + m) / (1 + 2 * m)
    run = _run(result, "SGD-nesterov lr=0.1")
    assert run["final"]["diverged"] is True
    last = run["curves"]["loss"][-1]
    assert last is None or last - l_star > 10 * (run["curves"]["loss"][0] - l_star)


def test_convex_runs_are_repeatable(quick, tmp_path, monkeypatch):
    """The same command again (the fixture's run is the first) gives the same
    curves: here on two of its runs, a plain and a wrapped one, run alone
    (so neither depends on the runs before it either); all eight with
    --runslow (test_convex_all_runs_are_repeatable)."""
    first, _ = quick["convex"]
    specs = [suite.CONVEX_SPECS[5], suite.CONVEX_SPECS[1]]
    monkeypatch.setattr(suite, "CONVEX_SPECS", specs)
    assert _run_cli("convex", "--quick", "--out", str(tmp_path)) == 0
    second = strict_json(tmp_path / "convex.json")
    assert [r["optimizer"]["label"] for r in second["runs"]] == [s.label for s in specs]
    for r2 in second["runs"]:
        r1 = _run(first, r2["optimizer"]["label"])
        assert r1["optimizer"] == r2["optimizer"]
        assert r1["curves"] == r2["curves"]


@pytest.mark.slow  # by default two of the runs: test_convex_runs_are_repeatable
def test_convex_all_runs_are_repeatable(quick, tmp_path):
    """The same command again (the fixture's run is the first) gives the same curves."""
    first, _ = quick["convex"]
    assert _run_cli("convex", "--quick", "--out", str(tmp_path)) == 0
    second = strict_json(tmp_path / "convex.json")
    for r1, r2 in zip(first["runs"], second["runs"], strict=True):
        assert r1["optimizer"] == r2["optimizer"]
        assert r1["curves"] == r2["curves"]


# ------------------------------------------------------------ lr-sweep

def test_lr_sweep_quick(quick):
    result, _ = quick["lr-sweep"]
    cfg = suite.SETTINGS["lr-sweep"]["quick"]
    _, _, l_star = _numpy_problem(cfg["dim"], result["seed"])
    expected = np.logspace(-4, 0, cfg["points"])
    np.testing.assert_allclose(result["settings"]["learning_rates"], expected, rtol=1e-12)
    assert len(result["runs"]) == 2 * cfg["points"]
    for run in result["runs"]:
        assert run["optimizer"]["inner"] == "adam"
        assert run["optimizer"]["normalization"] in (None, "l2")
        gap = np.array(run["curves"]["gap"], dtype=np.float64)
        assert len(gap) == cfg["iterations"] + 1
        assert np.isfinite(gap).all()  # Adam's step is bounded by lr: no blow-up here
        assert (gap > -1e-9 * abs(l_star)).all()
    # a learning rate of 1e-4 barely moves in a few hundred steps, 1e-1 does
    by_lr = {(r["optimizer"]["learning_rate"], r["optimizer"]["normalization"]):
             r["final"]["final_gap"] for r in result["runs"]}
    for norm in (None, "l2"):
        assert by_lr[(expected[0], norm)] > 2 * by_lr[(expected[3], norm)]


# ------------------------------------------------------------ mlp, cnn

def _mlp_parameter_count(inputs, depth, width, classes):
    dense = inputs * width + width + (depth - 1) * (width * width + width)
    batch_norm = depth * 4 * width  # gamma, beta, moving mean, moving variance
    return dense + batch_norm + width * classes + classes


@pytest.mark.parametrize("name,labels", [("mlp", MLP_QUICK), ("cnn", CNN_QUICK)])
def test_classifier_quick(quick, name, labels):
    _check_classifier(quick[name][0], name, labels)


@pytest.mark.slow
def test_classifier_quick_full_suites(tmp_path_factory):
    """`--quick` mlp and cnn as shipped: every run of both suites."""
    full = _run_quick(tmp_path_factory, ("mlp", "cnn"))
    _check_classifier(full["mlp"][0], "mlp", MLP_LABELS)
    _check_classifier(full["cnn"][0], "cnn", [s.label for s in suite.CNN_SPECS])
    _check_unit_wise_and_agc(full["mlp"][0], MLP_LABELS)
    _check_probe(*full["mlp"])


def _check_classifier(result, name, labels):
    cfg = suite.SETTINGS[name]["quick"]
    assert result["dataset"]["name"] == "digits"
    assert result["dataset"]["train_examples"] == cfg["train_examples"]
    assert result["dataset"]["image_shape"] == [8, 8, 1]
    assert [r["optimizer"]["label"] for r in result["runs"]] == labels
    for run in result["runs"]:
        for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            curve = run["curves"][key]
            assert len(curve) == cfg["epochs"]
            assert all(v is not None and math.isfinite(v) for v in curve)
        assert all(0 <= v <= 1 for v in run["curves"]["test_accuracy"])
        assert all(v > 0 for v in run["curves"]["train_loss"])
        if run["optimizer"]["normalization"] is None:
            assert run["path"] == "keras"
        else:
            assert run["path"] in paths.ALL
    if name == "mlp":
        count = _mlp_parameter_count(64, cfg["depth"], cfg["width"], 10)
        assert all(r["parameters"] == count for r in result["runs"])


MLP_LABELS = [
    "SGD-nesterov lr=0.01",
    "Normalized SGD-nesterov (l2) lr=0.01",
    "Normalized SGD-nesterov (max) lr=0.01",
    "Adam lr=0.001",
    "Normalized Adam (l2) lr=0.001",
    "Normalized Adam (max) lr=0.001",
    "Normalized Adam (l2, unit) lr=0.001",
    "AGC Adam (clip 0.01) lr=0.001",
]


def test_mlp_specs_labels():
    """The six original runs keep their labels; the two new ones are added at the end."""
    assert [s.label for s in suite.MLP_SPECS] == MLP_LABELS
    assert len(set(MLP_LABELS)) == len(MLP_LABELS)


def test_mlp_unit_wise_and_agc_specs_build_the_right_wrappers():
    import keras

    from normopt import AdaptiveClippedOptimizer, NormalizedOptimizer

    by_label = {s.label: s for s in suite.MLP_SPECS}
    unit = by_label["Normalized Adam (l2, unit) lr=0.001"].build()
    assert type(unit) is NormalizedOptimizer
    assert (unit.normalization, unit.granularity, unit.fused) == ("l2", "unit", None)
    assert type(unit.inner_optimizer) is keras.optimizers.Adam
    assert float(unit.inner_optimizer.learning_rate) == pytest.approx(1e-3)

    agc = by_label["AGC Adam (clip 0.01) lr=0.001"].build()
    assert type(agc) is AdaptiveClippedOptimizer
    assert (agc.clip_factor, agc.eps, agc.normalization, agc.granularity, agc.fused) == (
        0.01, 1e-3, "l2", "unit", None)
    # the spec's settings are AdaptiveClippedOptimizer's own defaults
    default = AdaptiveClippedOptimizer(keras.optimizers.Adam(1e-3))
    assert (default.clip_factor, default.eps, default.granularity) == (0.01, 1e-3, "unit")
    assert type(agc.inner_optimizer) is keras.optimizers.Adam
    assert float(agc.inner_optimizer.learning_rate) == pytest.approx(1e-3)

    # the original per-tensor runs are unchanged
    l2 = by_label["Normalized Adam (l2) lr=0.001"].build()
    assert type(l2) is NormalizedOptimizer
    assert (l2.normalization, l2.granularity) == ("l2", "tensor")
    assert type(by_label["Adam lr=0.001"].build()) is keras.optimizers.Adam


def test_path_fused_forces_every_wrapped_run():
    """--path fused requires the op for every wrapped run, unit-wise and
    adaptive clipping included (the op implements both)."""
    forced = suite.with_fused(suite.MLP_SPECS, {"fused": True})
    fused = {s.label: s.fused for s in forced}
    assert fused["Normalized Adam (l2) lr=0.001"] is True
    assert fused["Normalized Adam (l2, unit) lr=0.001"] is True
    assert fused["AGC Adam (clip 0.01) lr=0.001"] is True
    for spec in forced:
        spec.build()  # would raise FusedPathUnavailable where the op cannot run
    assert all(s.fused is False for s in suite.with_fused(suite.MLP_SPECS, {"fused": False}))


def test_mlp_quick_unit_wise_and_agc_runs(quick):
    _check_unit_wise_and_agc(quick["mlp"][0], MLP_QUICK)
    # the per-tensor run beside them (the mlp's own in the full suite)
    per_tensor = _run(quick["cnn"][0], "Normalized Adam (l2) lr=0.001")
    assert per_tensor["optimizer"]["granularity"] == "tensor"


def _check_unit_wise_and_agc(result, labels):
    assert [r["optimizer"]["label"] for r in result["runs"]] == labels
    unit = _run(result, "Normalized Adam (l2, unit) lr=0.001")
    agc = _run(result, "AGC Adam (clip 0.01) lr=0.001")
    assert unit["optimizer"] == {
        "label": "Normalized Adam (l2, unit) lr=0.001", "inner": "adam",
        "learning_rate": 1e-3, "wrapper": "normalized", "normalization": "l2",
        "granularity": "unit", "clip_factor": None, "eps": None, "fused": None}
    assert agc["optimizer"] == {
        "label": "AGC Adam (clip 0.01) lr=0.001", "inner": "adam",
        "learning_rate": 1e-3, "wrapper": "adaptive_clip", "normalization": "l2",
        "granularity": "unit", "clip_factor": 0.01, "eps": 1e-3, "fused": None}
    # the compiled op does unit-wise norms and adaptive clipping
    assert unit["path"] == paths.FUSED and agc["path"] == paths.FUSED
    assert _run(result, "Adam lr=0.001")["optimizer"]["wrapper"] is None
    per_tensor = "Normalized Adam (l2) lr=0.001"
    if per_tensor in labels:  # the full suite (by default the cnn's run is checked)
        assert _run(result, per_tensor)["optimizer"]["granularity"] == "tensor"
    epochs = suite.SETTINGS["mlp"]["quick"]["epochs"]
    for run in (unit, agc):
        assert run["final"]["best_test_accuracy"] == max(run["curves"]["test_accuracy"])
        assert len(run["layer_grad_norms"]["norms"]) == epochs + 1


def test_mlp_layer_gradient_norms_and_heatmap(quick):
    """Per-layer probe norms: before training they equal NumPy norms of a
    GradientTape gradient of the same seeded model on the same probe batch."""
    _check_probe(*quick["mlp"])


def _check_probe(result, out):
    import keras
    import tensorflow as tf

    from normopt.experiments import models

    assert_png(out / "mlp_grad_norms.png")
    cfg = suite.SETTINGS["mlp"]["quick"]
    dataset = data.load_dataset("digits", 0).subset(cfg["train_examples"], cfg["test_examples"])
    keras.utils.set_random_seed(result["seed"])
    model = models.deep_mlp(dataset.image_shape, dataset.num_classes,
                            depth=cfg["depth"], width=cfg["width"])
    trainable = [layer for layer in model.layers if layer.trainable_variables]
    variables = [v for layer in trainable for v in layer.trainable_variables]
    with tf.GradientTape() as tape:
        logits = model(dataset.x_train[:256], training=False)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            dataset.y_train[:256], logits)
    grads = [g.numpy().astype(np.float64) for g in tape.gradient(loss, variables)]
    owners = [i for i, layer in enumerate(trainable) for _ in layer.trainable_variables]
    want = [math.sqrt(sum(np.sum(g * g) for g, o in zip(grads, owners) if o == i))
            for i in range(len(trainable))]
    for run in result["runs"]:
        probe = run["layer_grad_norms"]
        kinds = [re.sub(r"_\d+$", "", name) for name in probe["layers"]]
        assert kinds == [re.sub(r"_\d+$", "", layer.name) for layer in trainable]
        assert len(probe["norms"]) == cfg["epochs"] + 1
        np.testing.assert_allclose(probe["norms"][0], want, rtol=1e-4)
        assert all(math.isfinite(v) and v >= 0 for row in probe["norms"] for v in row)


def test_digits_split_is_the_whole_bundled_set():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = data.load_digits(seed=0)
    assert len(d.x_train) + len(d.x_test) == len(raw.images)
    assert d.x_train.shape[1:] == (8, 8, 1) and d.x_train.dtype == np.float32
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    # every image keeps its own label: match one test image back to the raw set
    hits = np.all(np.isclose(raw.images / 16.0, d.x_test[0, ..., 0]), axis=(1, 2))
    assert raw.target[hits][0] == d.y_test[0]


# ------------------------------------------------------------ failures

@pytest.mark.parametrize("name,dataset", [("mlp", "mnist"), ("cnn", "cifar10"), ("all", "mnist")])
def test_unloadable_keras_dataset_fails_clearly(monkeypatch, capsys, tmp_path, name, dataset):
    import keras

    def offline():
        raise OSError("simulated: no network and no cached file")

    monkeypatch.setattr(getattr(keras.datasets, dataset), "load_data", offline)
    out = tmp_path / "out"
    assert _run_cli(name, "--quick", "--dataset", dataset, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"could not load '{dataset}'" in err
    assert "simulated: no network" in err
    assert "--dataset digits" in err
    assert not out.exists()  # failed before any training or output


def test_dataset_unavailable_keeps_the_cause(monkeypatch):
    import keras

    cause = ConnectionError("simulated")
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: (_ for _ in ()).throw(cause))
    with pytest.raises(data.DatasetUnavailable) as info:
        data.load_dataset("mnist")
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["convex", "--epochs", "0"],
        ["convex", "--iterations", "-3"],
        ["convex", "--iterations", "ten"],
        ["convex", "--seed", "x"],
        ["convex", "--seed", "-1"],
        ["mlp", "--dataset", "imagenet"],
    ],
)
def test_bad_arguments_exit_nonzero(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["experiments", *argv])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["mlp", "--dataset", "cifar10"], ["cnn", "--dataset", "mnist"],
                                  ["convex", "--dataset", "mnist"]])
def test_dataset_that_does_not_fit_the_experiment(capsys, tmp_path, argv):
    assert _run_cli(*argv, "--quick", "--out", str(tmp_path / "o")) == 2
    assert "does not apply" in capsys.readouterr().err


def test_path_tf_forces_pure_tensorflow(tmp_path):
    # --iterations replaces the quick preset's count (400 here, not 300)
    assert _run_cli("convex", "--quick", "--path", "tf", "--iterations", "400",
                    "--out", str(tmp_path)) == 0
    result = strict_json(tmp_path / "convex.json")
    cfg = suite.SETTINGS["convex"]["quick"]
    assert cfg["iterations"] != 400 and result["settings"]["iterations"] == 400
    _, _, l_star = _numpy_problem(cfg["dim"], result["seed"])
    assert len(result["runs"]) == len(suite.CONVEX_SPECS)
    for run in result["runs"]:
        wrapped = run["optimizer"]["normalization"] is not None
        assert run["path"] == (paths.TF if wrapped else "keras")
        assert len(run["curves"]["loss"]) == 401
    loss = _run(result, "Normalized SGD-nesterov (l2) lr=0.1")["curves"]["loss"]
    assert loss[-1] - l_star < 1e-2 * (loss[0] - l_star)
