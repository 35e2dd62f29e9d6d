"""The step plan as data: paths, reasons and scale groups from given facts.

These build `step_plan.Context` by hand (no TensorFlow context, no op
library), so each reason and each grouping is checked on its own; the
wrappers' tests check that the executors follow the plan.
"""

import keras
import pytest

from normopt.ops import paths, scale_math, step_plan


def _settings(granularity="tensor", fused=None, scaling=None):
    return step_plan.Settings(
        fused=fused, normalization="l2", granularity=granularity,
        scaling=scaling or scale_math.Normalize())


def _fact(name, rank=2, dtype="float32", **kw):
    return step_plan.Gradient(name=name, dtype=dtype, variable_dtype=dtype, rank=rank, **kw)


def _context(*facts, **kw):
    base = dict(library_loaded=True, kernel_devices=frozenset({"CPU"}))
    base.update(kw)
    return step_plan.Context(gradients=tuple(facts), **base)


def test_cpu_step_with_a_fused_rule_is_fused():
    plan = step_plan.plan_step(_settings(), keras.optimizers.Adam(), _context(_fact("w")))
    assert plan.path == paths.StepPath(paths.FUSED, None)
    assert plan.updates_variables


def test_gpu_variable_reason_says_why_the_gpu_kernels_are_not_used():
    why = "it has no GPU kernels: CUDA kernels not built: no nvcc"
    context = _context(_fact("w", device="GPU"), no_gpu_kernels=why)
    plan = step_plan.plan_step(_settings(), keras.optimizers.Adam(), context)
    assert plan.name == paths.TF
    assert plan.path.reason == (
        f"variables live on GPU and the op library has kernels for CPU only ({why})")
    with pytest.raises(step_plan.FusedPathUnavailable) as err:
        step_plan.plan_step(_settings(fused=True), keras.optimizers.Adam(), context)
    assert str(err.value) == str(step_plan.refusal(plan.path.reason))


def test_fused_false_names_itself_and_needs_no_library():
    plan = step_plan.plan_step(
        _settings(fused=False), keras.optimizers.Adam(),
        step_plan.Context(gradients=(_fact("w"),)))
    assert plan.path == paths.StepPath(paths.TF, "fused=False")


def test_scale_groups_are_granularity_as_data():
    facts = (_fact("kernel", rank=3), _fact("bias", rank=1),
             _fact("excluded", excluded=True), _fact("empty", empty=True))
    context = _context(*facts)
    adam = keras.optimizers.Adam()
    tensor = step_plan.plan_step(_settings("tensor"), adam, context)
    assert tensor.groups == (step_plan.Group((0,)), step_plan.Group((1,)))
    unit = step_plan.plan_step(_settings("unit"), adam, context)
    # all axes but the last; a tensor of one axis is one unit
    assert unit.groups == (step_plan.Group((0,), (0, 1)), step_plan.Group((1,)))
    merged = step_plan.plan_step(_settings("global"), adam, context)
    assert merged.groups == (step_plan.Group((0, 1), None, merged=True),)
    assert [e.role for e in merged.entries] == [
        step_plan.SCALED, step_plan.SCALED, step_plan.EXCLUDED, step_plan.NO_GRADIENT]
    assert [e.group for e in merged.entries] == [0, 0, None, None]


def test_several_dtypes_under_a_global_norm_share_a_tf_measured_norm():
    facts = (_fact("a"), _fact("b", dtype="float64"))
    plan = step_plan.plan_step(_settings("global"), keras.optimizers.SGD(), _context(*facts))
    assert plan.name == paths.FUSED_TF_NORMS and plan.shared_norm
    assert plan.path.reason == step_plan.SEVERAL_DTYPES_REASON
    adaptive = step_plan.plan_step(
        _settings("global", scaling=scale_math.Adaptive(0.01, 1e-3)),
        keras.optimizers.SGD(), _context(*facts))
    assert adaptive.name == paths.TF
    assert "adaptive clipping with a global norm over gradients of several dtypes" in (
        adaptive.path.reason)
