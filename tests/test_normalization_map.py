"""normalization_map={pattern: norm}: keras.optimizers' OptimizerMap rules on
variable.path, the norms each variable gets (against tests/reference.py),
the errors, and the config through a .keras file."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference as R
from normopt import AdaptiveClippedOptimizer, ClippedOptimizer, NormalizedOptimizer
from normopt import normalization_map as M
from normopt.ops import paths

WRAPPERS = (NormalizedOptimizer, ClippedOptimizer, AdaptiveClippedOptimizer)


def test_exact_path_first_then_fullmatch():
    mapping = {"enc/.*": "l1", "enc/dense/kernel": "max", "dec": "std"}
    assert M.norm_for(mapping, "enc/dense/kernel", "l2") == "max"  # exact wins
    assert M.norm_for(mapping, "enc/dense/bias", "l2") == "l1"
    assert M.norm_for(mapping, "dec", "l2") == "std"
    # fullmatch, not search: "dec" does not name dec/dense/kernel
    assert M.norm_for(mapping, "dec/dense/kernel", "l2") == "l2"
    assert M.norm_for(mapping, "xenc/a", "l2") == "l2"
    assert M.norm_for(None, "anything", "avg_l2") == "avg_l2"


def test_keras_optimizer_map_agrees():
    """The same answers as keras.optimizers' OptimizerMap, where it is."""
    multi = pytest.importorskip("keras.src.optimizers.multi_optimizer")
    opts = {name: keras.optimizers.SGD(name=name) for name in ("l1", "max", "std", "l2")}
    mapping = {"enc/.*": "l1", "enc/dense/kernel": "max", r"dec(/.*)?": "std"}
    keras_map = multi.OptimizerMap(default_optimizer=opts["l2"])
    for pattern, norm in mapping.items():
        keras_map[pattern] = opts[norm]
    for path in ("enc/dense/kernel", "enc/x", "dec", "dec/a/b", "other", "enc"):
        assert M.norm_for(mapping, path, "l2") == keras_map[path].name, path


def test_two_patterns_raise_naming_both():
    mapping = {r"a/.*": "l1", r".*/b": "max"}
    with pytest.raises(ValueError, match="'a/b' matches more than one pattern") as info:
        M.norm_for(mapping, "a/b", "l2")
    assert "'a/.*'" in str(info.value) and "'.*/b'" in str(info.value)
    # an exact entry settles it
    assert M.norm_for({**mapping, "a/b": "std"}, "a/b", "l2") == "std"


def test_bad_maps_are_refused(custom_norm):
    with pytest.raises(TypeError, match="must be a dict"):
        NormalizedOptimizer(keras.optimizers.SGD(), normalization_map=[("a", "l1")])
    with pytest.raises(TypeError, match="keys must be strings"):
        NormalizedOptimizer(keras.optimizers.SGD(), normalization_map={1: "l1"})
    with pytest.raises(ValueError, match="not a regular expression"):
        NormalizedOptimizer(keras.optimizers.SGD(), normalization_map={"a(": "l1"})
    with pytest.raises(ValueError, match="'l3', which is not a built-in"):
        ClippedOptimizer(keras.optimizers.SGD(), normalization_map={"a": "l3"})
    with pytest.raises(ValueError, match="not a built-in"):
        NormalizedOptimizer(keras.optimizers.SGD(), normalization_map={"a": custom_norm})
    with pytest.raises(ValueError, match="granularity='global'"):
        NormalizedOptimizer(keras.optimizers.SGD(), granularity="global",
                            normalization_map={"a": "l1"})
    with pytest.raises(ValueError, match="'spectral' normalization measures a whole tensor"):
        AdaptiveClippedOptimizer(keras.optimizers.SGD(), normalization_map={"a": "spectral"})


def test_ambiguous_variable_fails_at_build():
    variables = [keras.Variable(np.ones((2, 2), "float32"), name="kernel")]
    opt = NormalizedOptimizer(keras.optimizers.SGD(), normalization_map={
        "kern.*": "l1", ".*nel": "max"})
    with pytest.raises(ValueError, match="'kernel' matches more than one pattern"):
        opt.build(variables)


def _variables(rng):
    shapes = {"a": (6, 5), "b": (7,), "c": (3, 4), "d": (2, 3, 4)}
    return [keras.Variable(rng.standard_normal(s).astype("float32"), name=n)
            for n, s in shapes.items()]


MAP = {"a": "spectral", "b": "l1", "c": "max", "[d]": "linf"}


def _norm(name, g):
    return R.spectral(g) if name == "spectral" else R.norm(g, name)


@pytest.mark.parametrize("fused,path", [(False, paths.TF), (None, paths.FUSED)])
@pytest.mark.parametrize("granularity", ["tensor", "unit"])
def test_each_variable_gets_its_norm(fused, path, granularity):
    """Two SGD steps through NormalizedOptimizer: each variable is scaled by
    its own norm (an unmatched one by the default), on both paths; the
    fused path runs them in one op call."""
    rng = np.random.default_rng(0)
    variables = _variables(rng)
    mapping = dict(MAP)
    if granularity == "unit":
        mapping["a"] = "std"
    opt = NormalizedOptimizer(keras.optimizers.SGD(0.1), "avg_l2", fused=fused,
                              granularity=granularity, normalization_map=mapping)
    want = [v.numpy().astype(np.float64) for v in variables]
    names = {v.path: M.norm_for(mapping, v.path, "avg_l2") for v in variables}
    assert names == {"a": mapping["a"], "b": "l1", "c": "max", "d": "linf"}
    for _ in range(2):
        grads = [rng.standard_normal(v.shape).astype("float32") for v in variables]
        opt.apply([tf.constant(g) for g in grads], variables)
        for i, (v, g) in enumerate(zip(variables, grads)):
            name = names[v.path]
            if granularity == "unit" and g.ndim >= 2:
                cols = g.reshape(-1, g.shape[-1])
                n = np.array([_norm(name, cols[:, u]) for u in range(g.shape[-1])])
            else:
                n = _norm(name, g)
            want[i] = want[i] - 0.1 * g / n
    assert opt.last_path.name == path, opt.last_path
    for v, w in zip(variables, want):
        np.testing.assert_allclose(v.numpy(), w, rtol=2e-3, atol=1e-5, err_msg=v.path)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_config_round_trip(cls):
    mapping = {"hidden/kernel": "spectral", r".*/bias": "l1"}
    extra = {"granularity": "tensor"} if cls is AdaptiveClippedOptimizer else {}
    opt = cls(keras.optimizers.SGD(0.01), normalization="max", normalization_map=mapping,
              **extra)
    config = opt.get_config()
    assert config["normalization_map"] == mapping
    again = cls.from_config(config)
    assert again.normalization_map == mapping and again.get_config() == config


def test_config_round_trip_through_keras_file(tmp_path):
    cls = AdaptiveClippedOptimizer
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    mapping = {"hidden/kernel": "spectral", r".*/bias": "l1"}
    opt = cls(keras.optimizers.SGD(0.01), normalization="max", normalization_map=mapping,
              fused=False, granularity="tensor")
    model.compile(opt, "mse", jit_compile=False)
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.normalization_map == mapping
    assert loaded.optimizer.normalization == "max"
    own = [v.name for v in loaded.optimizer._variables]
    assert [n for n in own if "spectral" in n] == [
        n for n in (v.name for v in opt._variables) if "spectral" in n]
    assert "hidden_kernel_spectral_grad" in own
    for a, b in zip(loaded.optimizer._variables, opt._variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_old_configs_load_without_a_map():
    opt = NormalizedOptimizer(keras.optimizers.SGD(), "l1")
    config = opt.get_config()
    assert config["normalization_map"] is None
    del config["normalization_map"]
    assert NormalizedOptimizer.from_config(config).normalization_map is None
