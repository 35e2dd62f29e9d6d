"""Bad input gets a clear error at construction."""

import pytest

import keras
import normopt
from normopt.ops import library


def test_unknown_normalization_lists_available():
    with pytest.raises(ValueError) as err:
        normopt.NormalizedOptimizer(keras.optimizers.SGD(), "l3")
    msg = str(err.value)
    assert "'l3'" in msg
    for name in ("l1", "l2", "avg_l1_l2", "min_max", "std", "linf"):
        assert name in msg


def test_normalization_must_be_a_string():
    with pytest.raises(TypeError, match="normalization"):
        normopt.NormalizedOptimizer(keras.optimizers.SGD(), normalization=lambda g: g)


@pytest.mark.parametrize("clipnorm", [0, 0.0, -1.0, float("nan"), float("inf"),
                                      "1.0", None, True, [1.0]])
def test_bad_clipnorm(clipnorm):
    with pytest.raises(ValueError, match="clipnorm"):
        normopt.ClippedOptimizer(keras.optimizers.SGD(), clipnorm=clipnorm)


def test_clipnorm_as_a_concrete_scalar_tensor_or_numpy_scalar():
    import numpy as np
    import tensorflow as tf

    for value in (tf.constant(0.5), tf.constant(0.5, tf.float64), np.float32(0.5),
                  np.array(0.5)):
        opt = normopt.ClippedOptimizer(keras.optimizers.SGD(), clipnorm=value)
        assert opt.clipnorm == 0.5 and type(opt.clipnorm) is float
        assert opt.get_config()["clipnorm"] == 0.5
    clip_factor = tf.constant(0.25)
    opt = normopt.AdaptiveClippedOptimizer("sgd", clip_factor=clip_factor)
    assert opt.clip_factor == 0.25 and type(opt.clip_factor) is float


def test_clipnorm_that_is_no_concrete_scalar_asks_for_a_python_number():
    import tensorflow as tf

    for value in (tf.constant([0.5]), tf.Variable(0.5), keras.Variable(0.5)):
        with pytest.raises(ValueError, match="`clipnorm` must be a Python number"):
            normopt.ClippedOptimizer(keras.optimizers.SGD(), clipnorm=value)
    with pytest.raises(ValueError, match="finite number > 0, got -1.0"):
        normopt.ClippedOptimizer(keras.optimizers.SGD(), clipnorm=tf.constant(-1.0))
    found = []
    inner = keras.optimizers.SGD()  # its variables: outside the tf.function

    @tf.function
    def construct(value):
        try:
            normopt.ClippedOptimizer(inner, clipnorm=value)
        except ValueError as err:
            found.append(str(err))

    construct(tf.constant(0.5))
    assert len(found) == 1 and "Python number" in found[0] and "symbolic" in found[0]


def test_exclude_from_normalization_refuses_a_string():
    """A string would be taken as its characters: 'bias' as b, i, a, s."""
    opt = normopt.NormalizedOptimizer("sgd")
    with pytest.raises(TypeError, match=r"list of strings.*got the string 'bias'.*\['bias'\]"):
        opt.exclude_from_normalization(var_names="bias")
    opt.exclude_from_normalization(var_names=["bias"])
    import numpy as np

    kernel = keras.Variable(np.ones(2), name="dense_kernel")
    bias = keras.Variable(np.ones(2), name="dense_bias")
    assert [opt._is_excluded(v) for v in (kernel, bias)] == [False, True]


@pytest.mark.parametrize("optimizer", [None, 3, object(), "not_an_optimizer",
                                       keras.layers.Dense(2)])
def test_non_optimizer(optimizer):
    with pytest.raises((TypeError, ValueError), match="optimizer"):
        normopt.NormalizedOptimizer(optimizer)


def test_identifier_accepted():
    opt = normopt.ClippedOptimizer("adam", clipnorm=1.0)
    assert isinstance(opt.inner_optimizer, keras.optimizers.Adam)


def test_wrapper_of_wrapper_rejected():
    inner = normopt.NormalizedOptimizer(keras.optimizers.SGD())
    with pytest.raises(TypeError, match="already a normopt wrapper"):
        normopt.ClippedOptimizer(inner)


@pytest.mark.parametrize("fused", ["yes", 1, 0])
def test_bad_fused(fused):
    with pytest.raises(TypeError, match="fused"):
        normopt.NormalizedOptimizer(keras.optimizers.SGD(), fused=fused)


def test_fused_true_without_library_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(library, "status", lambda: {
        "loaded": False, "path": None, "reason": "not built (test)"})
    with pytest.raises(normopt.FusedPathUnavailable, match="not built \\(test\\)"):
        normopt.NormalizedOptimizer(keras.optimizers.Adam(), fused=True)


@pytest.mark.parametrize("option", [dict(use_ema=True), dict(clipnorm=1.0),
                                    dict(gradient_accumulation_steps=2)])
def test_fused_true_with_unsupported_inner_option(option):
    if not library.status()["loaded"]:
        pytest.skip("op library not built: " + str(library.status()["reason"]))
    with pytest.raises(normopt.FusedPathUnavailable, match=list(option)[0]):
        normopt.NormalizedOptimizer(keras.optimizers.Adam(**option), fused=True)


def test_variables_on_a_device_without_kernels_take_the_tf_path():
    """A GPU variable (here a stand-in) must never reach the CPU-only op."""
    from normopt.ops import fused_step

    if not library.status()["loaded"]:
        pytest.fail("op library not built: " + str(library.status()["reason"]))
    import tensorflow as tf

    class GpuVariable:
        name, dtype, device = "w", "float32", "/job:localhost/replica:0/task:0/device:GPU:0"
        constraint = None

    inner = keras.optimizers.Adam()
    grads, variables = [tf.zeros([2])], [GpuVariable()]
    path = fused_step.choose_path(None, "l2", inner, grads, variables)
    assert path.name == "tf" and "GPU" in path.reason, path
    with pytest.raises(normopt.FusedPathUnavailable, match="GPU"):
        fused_step.choose_path(True, "l2", inner, grads, variables)
