"""`normopt experiments lm`: the corpus, the model's causality, the arms, quick runs.

The corpus is checked against files written here and encoded character by
character in Python; causality by perturbing a later token and comparing
logits; the runs' first validation loss against a NumPy cross-entropy of the
same seeded model's logits; the sweep's choice against a NumPy argmin.
"""

import hashlib
import inspect
import math

import numpy as np
import pytest

from helpers import assert_png, strict_json
from normopt.cli import main
from normopt.experiments import lm, lm_data, lm_report
from normopt.ops import paths

# The quick fixture trains every arm on one seed (each run costs seconds of
# tracing); two seeds, their runs and the mean/spread over them, are checked
# on one arm alone in test_lm_without_matplotlib_keeps_table_and_json.
QUICK_SEEDS = 1
# The arm of the tests that run one arm (two seeds, the sweep): Normalized
# AdamW's fused step traces one op where AdamW's traces every variable's
# update (~1.4 s against ~3.6 s of CPU per run here); the fixture runs AdamW.
ONE_ARM = "normalized_l2"


def _run_cli(*argv):
    return main(["experiments", "lm", *argv, "--no-progress"])


def _reference_ids(text):
    return [ord(c) if 1 <= ord(c) <= 126 else 127 for c in text]


# ------------------------------------------------------------ corpus

@pytest.fixture
def fake_stdlib(tmp_path):
    """A small library: six modules, one non-ASCII, plus folders the corpus skips."""
    root = tmp_path / "lib"
    files = {f"mod{i}.py": f"def f{i}(x):\n    return x * {i}\n" * (i + 2) for i in range(5)}
    files["pkg/inner.py"] = "# caf\u00e9 \u2014 ok\nimport os\n"
    skipped = ["test/test_a.py", "pkg/tests/test_b.py", "site-packages/third.py",
               "idlelib/idle_test/t.py", "__pycache__/x.py"]
    for rel in [*files, *skipped]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files.get(rel, "SKIPPED = True\n"), encoding="utf-8")
    (root / "notes.txt").write_text("not python\n")
    return root, files


def _is_validation_reference(rel):
    return hashlib.sha256(rel.encode()).digest()[0] < 26  # 10% of 256, rounded


def test_corpus_is_the_hash_ordered_files_split_by_file(fake_stdlib):
    root, files = fake_stdlib
    assert lm_data.source_files(str(root)) == sorted(files)
    order = sorted(files, key=lambda p: hashlib.sha256(p.encode()).digest())
    train_pool = [p for p in order if not _is_validation_reference(p)]
    val_pool = [p for p in order if _is_validation_reference(p)]
    assert train_pool and val_pool  # these names hash into both splits
    sizes = [sum(len(files[p]) + 1 for p in pool) - 3 for pool in (train_pool, val_pool)]
    corpus = lm_data.build_corpus(*sizes, max_file_chars=10_000, root=str(root))
    assert corpus.train_files == train_pool and corpus.val_files == val_pool
    for tokens, pool, size in ((corpus.train, train_pool, sizes[0]),
                               (corpus.val, val_pool, sizes[1])):
        want = []
        for p in pool:
            want += _reference_ids(files[p]) + [0]
        assert tokens.dtype == np.uint8
        assert tokens.tolist() == want[:size]  # the last file is cut


def test_corpus_per_file_cap_and_unknown_characters(fake_stdlib):
    root, files = fake_stdlib
    corpus = lm_data.build_corpus(30, 0, max_file_chars=7, root=str(root))
    order = [p for p in sorted(files, key=lambda p: hashlib.sha256(p.encode()).digest())
             if not _is_validation_reference(p)]
    want = []
    for p in order:
        want += _reference_ids(files[p][:7]) + [0]
    assert corpus.train.tolist() == want[:30]
    assert corpus.train[7] == corpus.train[15] == lm_data.SEPARATOR
    assert lm_data.encode("a\u00e9\x00\t").tolist() == [97, 127, 127, 9]


def test_corpus_too_small_for_the_request_fails_clearly(fake_stdlib):
    root, _ = fake_stdlib
    with pytest.raises(ValueError, match="ask for less"):
        lm_data.build_corpus(10**6, 0, max_file_chars=100, root=str(root))


def test_stdlib_corpus_is_deterministic_disjoint_and_cached(tmp_path):
    a, cached_a = lm_data.load_corpus(str(tmp_path), 30_000, 5_000, 4_096)
    b = lm_data.build_corpus(30_000, 5_000, 4_096)
    c, cached_c = lm_data.load_corpus(str(tmp_path), 30_000, 5_000, 4_096)
    assert (cached_a, cached_c) == (False, True)
    for other in (b, c):
        assert np.array_equal(a.train, other.train) and np.array_equal(a.val, other.val)
        assert a.train_files == other.train_files and a.val_files == other.val_files
    assert (a.train.size, a.val.size) == (30_000, 5_000)
    assert a.train_files and a.val_files
    assert set(a.train_files).isdisjoint(a.val_files)
    assert all(_is_validation_reference(p) for p in a.val_files)
    assert not any(_is_validation_reference(p) for p in a.train_files)
    parts = {part for p in a.train_files + a.val_files for part in p.split("/")}
    assert parts.isdisjoint({"test", "tests", "site-packages", "idle_test"})
    # the first training file, read again here, opens the training text
    first = a.train_files[0]
    with open(f"{lm_data.stdlib_root()}/{first}", encoding="utf-8", errors="replace") as f:
        text = f.read(4_096)
    assert a.train[:len(text)].tolist() == _reference_ids(text)


def test_training_windows_are_shifted_by_one():
    tokens = np.arange(50, dtype=np.uint8)
    x, y = lm_data.windows(tokens, np.array([[0, 7], [30, 41]]), 8)
    assert x.shape == (2, 2, 8) and x.dtype == np.int32
    assert x[1, 0].tolist() == list(range(30, 38)) and y[1, 0].tolist() == list(range(31, 39))
    starts = lm_data.train_batches(tokens, 100, 4, 8, seed=3)
    assert starts.min() >= 0 and starts.max() <= 50 - 9
    assert np.array_equal(starts, lm_data.train_batches(tokens, 100, 4, 8, seed=3))


# ------------------------------------------------------------ model

def test_model_is_causal():
    """Changing token k leaves the logits of positions < k unchanged and changes later ones."""
    import keras

    keras.utils.set_random_seed(1)
    cfg = dict(lm.SETTINGS["quick"], depth=2)
    model = lm.build_model(cfg)
    rng = np.random.RandomState(0)
    x = rng.randint(1, 127, size=(3, cfg["context"])).astype("int32")
    base = np.asarray(model(x, training=False))
    for k in (0, 5, cfg["context"] - 1):
        changed = x.copy()
        changed[:, k] = (changed[:, k] + 50) % 126 + 1
        out = np.asarray(model(changed, training=False))
        np.testing.assert_allclose(out[:, :k], base[:, :k], rtol=0, atol=1e-6)
        # the change reaches position k and, through attention, every later one
        assert np.all(np.abs(out[:, k:] - base[:, k:]).max(axis=-1) > 1e-4)


# ------------------------------------------------------------ arms

def _hidden(path, shape):
    return len(shape) == 2 and path.split("/")[0].startswith("block")


def test_map_and_muon_treat_the_hidden_matrices():
    """The map arm's spectral set and Muon's orthogonalised set are exactly the
    attention and MLP kernels; embeddings, lm_head and vectors get l2 / AdamW."""
    import keras

    model = lm.build_model(lm.SETTINGS["full"])
    table = lm.variable_table(model)
    assert len(table) == len(model.trainable_variables)
    hidden = [row for row in table if _hidden(row["path"], row["shape"])]
    assert len(hidden) == 4 * lm.SETTINGS["full"]["depth"]
    for row in table:
        want = "spectral" if _hidden(row["path"], row["shape"]) else "l2"
        assert row["map_norm"] == want, row
        assert row["muon_step"] == ("muon" if want == "spectral" else "adamw"), row
    assert {r["path"] for r in table if "embedding" in r["path"]} == {
        "token_embedding/embeddings", "position_embedding/embeddings"}
    assert hasattr(keras.optimizers, "Muon")


def test_map_matching_rules():
    mapping = {r"a/.*": "spectral", r"a/b": "l1", r".*/b": "max"}
    # an exact path wins over the patterns it also matches
    assert lm.map_norms(["a/b", "c/d"], mapping, "l2") == {"a/b": "l1", "c/d": "l2"}
    with pytest.raises(ValueError, match="'x/b'.*more than one pattern") as info:
        lm.map_norms(["a/c", "x/b", "a/x/b"], {r"x/.*": "l1", r".*/b": "max"}, "l2")
    assert "x/.*" in str(info.value) and ".*/b" in str(info.value)


def _map_missing_here():
    """What the installed NormalizedOptimizer lacks for the map arm, found independently."""
    import normopt

    missing = []
    if "normalization_map" not in inspect.signature(normopt.NormalizedOptimizer).parameters:
        missing.append("normalization_map")
    if "spectral" not in normopt.normalization_names():
        missing.append("spectral")
    return missing


def test_map_arm_reason_is_true_of_the_installed_code():
    import keras

    from normopt import NormalizedOptimizer

    missing = _map_missing_here()
    reason = dict((a.key, a) for a in lm.ARMS)["normalized_map"].unavailable_reason()
    if "normalization_map" in missing:
        assert "normalization_map" in reason
        with pytest.raises(ValueError, match="normalization_map"):
            lm.build_optimizer("normalized_map", 1e-3)
    if "spectral" in missing:
        assert '"spectral"' in reason
        with pytest.raises(ValueError, match="Unknown normalization 'spectral'"):
            NormalizedOptimizer(keras.optimizers.AdamW(1e-3), "spectral")
    assert (reason is None) == (not missing)


# ------------------------------------------------------------ quick runs

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    assert _run_cli("--quick", "--seeds", str(QUICK_SEEDS), "--out", str(out)) == 0
    assert_png(out / "lm.png")
    return strict_json(out / "lm.json"), out


def _initial_val_loss_numpy(result, seed):
    """Cross-entropy of the seed's untrained model on the validation windows, in NumPy."""
    import keras

    cfg = result["settings"]
    corpus, _ = lm_data.load_corpus(result["corpus"]["cache_file"].rsplit("/", 1)[0],
                                    cfg["train_chars"], cfg["val_chars"], cfg["max_file_chars"])
    starts = np.linspace(0, corpus.val.size - cfg["context"] - 1, cfg["val_windows"])
    idx = starts.astype(np.int64)[:, None] + np.arange(cfg["context"] + 1)
    x, y = corpus.val[idx[:, :-1]].astype("int32"), corpus.val[idx[:, 1:]]
    keras.utils.set_random_seed(seed)
    logits = np.asarray(lm.build_model(cfg)(x, training=False), dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, y[..., None].astype(np.int64), -1).mean()


def test_quick_run_outputs_every_available_arm(quick):
    result, out = quick
    assert result["experiment"] == "lm" and result["seeds"] == list(range(QUICK_SEEDS))
    assert [a["key"] for a in result["arms"]] == [a.key for a in lm.ARMS]
    assert (out / result["corpus"]["cache_file"].rsplit("/", 1)[1]).exists()
    ran = [a for a in result["arms"] if a["status"] == "ran"]
    assert {a["key"] for a in ran} >= {"adamw", "normalized_l2", "muon"}
    _check_arm_runs(result, ran, QUICK_SEEDS)
    assert "(mean ± half range, 1 seed)" in lm_report.table_rows(result)[0][2]


def _check_arm_runs(result, ran, seeds):
    cfg = lm.SETTINGS["quick"]
    want_path = {"adamw": "keras", "muon": "keras", "normalized_l2": paths.FUSED,
                 "normalized_map": paths.FUSED}
    initial = {s: _initial_val_loss_numpy(result, s) for s in result["seeds"]}
    for arm in ran:
        assert arm["learning_rate"] == lm.LEARNING_RATES[arm["key"]]
        assert [r["seed"] for r in arm["runs"]] == list(range(seeds))
        for run in arm["runs"]:
            assert run["path"] == want_path[arm["key"]]  # the wrapper's last_path
            curves = run["curves"]
            assert len(curves["train_loss"]) == cfg["steps"]
            assert curves["val_steps"] == [0, 3, 6]
            assert all(math.isfinite(v) for v in curves["train_loss"] + curves["val_loss"])
            # same seed, same untrained model: the first validation loss is the NumPy one
            assert curves["val_loss"][0] == pytest.approx(initial[run["seed"]], rel=1e-5)
            assert curves["val_loss"][-1] < curves["val_loss"][0]
            assert run["tokens_per_second"] > 0
        vals = np.array([r["final"]["val_loss"] for r in arm["runs"]])
        assert arm["summary"]["val_loss_mean"] == pytest.approx(vals.mean(), rel=1e-12)
        assert arm["summary"]["val_loss_spread"] == pytest.approx(np.ptp(vals) / 2, abs=1e-12)


def test_quick_run_reports_the_map_arm_as_the_installed_code_allows(quick):
    """Today the map arm cannot run: it is listed, with the reason, not dropped or faked."""
    result, _ = quick
    arm = next(a for a in result["arms"] if a["key"] == "normalized_map")
    missing = _map_missing_here()
    if missing:
        assert arm["status"] == "unavailable" and arm["runs"] == []
        assert "summary" not in arm
        for what in missing:
            assert what in arm["reason"]
        row = next(r for r in lm_report.table_rows(result)[1] if r[0] == arm["label"])
        assert row[-1] == f"unavailable: {arm['reason']}"
    else:
        assert arm["status"] == "ran" and len(arm["runs"]) == QUICK_SEEDS
    assert result["normalization_map"]["map"] == lm.LM_NORMALIZATION_MAP


def test_quick_sweep_picks_the_lowest_validation_loss(tmp_path, monkeypatch):
    """Normalized AdamW at two rates (the other arms left out to keep the test
    short) and the map arm (at one rate, or unavailable where the installed
    code cannot build it): the chosen rate is NumPy's argmin, the map arm listed."""
    import dataclasses

    arms = {a.key: a for a in lm.ARMS}
    monkeypatch.setattr(lm, "ARMS", (dataclasses.replace(arms[ONE_ARM], grid=(1e-3, 3e-2)),
                                     dataclasses.replace(arms["normalized_map"],
                                                         grid=(4e-3,))))
    assert _run_cli("--quick", "--sweep", "--out", str(tmp_path)) == 0
    assert_png(tmp_path / "lm_sweep.png")
    result = strict_json(tmp_path / "lm_sweep.json")
    assert result["sweep_steps"] == lm.SETTINGS["quick"]["sweep_steps"]
    first, mapped = result["arms"]
    lrs = [r["learning_rate"] for r in first["runs"]]
    vals = [r["final"]["val_loss"] for r in first["runs"]]
    assert first["key"] == ONE_ARM and first["status"] == "ran" and lrs == [1e-3, 3e-2]
    assert vals[0] != vals[1]
    assert first["best_learning_rate"] == lrs[int(np.argmin(vals))]
    assert all(r["path"] == paths.FUSED for r in first["runs"])
    assert all(len(r["curves"]["train_loss"]) == result["sweep_steps"] for r in first["runs"])
    assert mapped["status"] == ("unavailable" if _map_missing_here() else "ran")
    if mapped["status"] == "ran":
        assert [r["learning_rate"] for r in mapped["runs"]] == [4e-3]
        assert mapped["best_learning_rate"] == 4e-3
        assert all(r["path"] == paths.FUSED for r in mapped["runs"])
    rows = lm_report.table_rows(result)[1]
    assert [r[3] for r in rows[:2]] == ["chosen" if lr == first["best_learning_rate"] else ""
                                         for lr in lrs]


@pytest.mark.parametrize("argv", [["convex", "--sweep"], ["mlp", "--seeds", "2"]])
def test_lm_options_do_not_apply_elsewhere(capsys, tmp_path, argv):
    assert main(["experiments", *argv, "--quick", "--out", str(tmp_path / "o")]) == 2
    assert "apply to lm only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_lm_without_matplotlib_keeps_table_and_json(monkeypatch, capsys, tmp_path):
    """As the other experiments: no plot, a one-line note, the table and JSON
    kept. Normalized AdamW alone (the other arms left out to keep the test
    short) on two seeds: each seed's runs as in the quick fixture, their mean
    and half range."""
    import sys

    from normopt.experiments import cli as experiments_cli

    arms = {a.key: a for a in lm.ARMS}
    monkeypatch.setattr(lm, "ARMS", (arms[ONE_ARM],))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _run_cli("--quick", "--seeds", "2", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written[0] == "lm.json" and len(written) == 2
    assert written[1].startswith("lm_corpus_") and written[1].endswith(".npz")
    assert "final val loss (mean ± half range, 2 seeds)" in out
    result = strict_json(tmp_path / "lm.json")
    assert result["seeds"] == [0, 1]
    (arm,) = result["arms"]
    assert arm["key"] == ONE_ARM and arm["status"] == "ran"
    _check_arm_runs(result, [arm], 2)
    vals = [r["final"]["val_loss"] for r in arm["runs"]]
    assert vals[0] != vals[1]  # two seeds, two different runs
    assert ('plot skipped: matplotlib is not installed (pip install '
            '"normopt[experiments]")' in out.splitlines())
    # lm needs no scikit-learn (its corpus is the standard library)
    assert experiments_cli.requirements(type("Args", (), {"name": "lm", "dataset": None})) == []
