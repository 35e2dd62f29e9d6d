"""What the backend-neutral tests share (see tests/conftest.py): the
backend of this process, the name of its keras.ops path, and tensors in and
out of it without TensorFlow."""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
TENSORFLOW = BACKEND == "tensorflow"
# The keras.ops path's name in `last_path` (normopt.ops.paths): `tf` on
# TensorFlow, `keras` on every other backend.
PURE = "tf" if TENSORFLOW else "keras"

# Runs on every backend; the conftest deselects unmarked tests elsewhere.
neutral = pytest.mark.backend_neutral


def skip_module_on_tensorflow():
    """Called at the top of a file of what is specific to the other backends
    (conftest.OTHER_BACKEND_FILES): skips the whole module in the TensorFlow
    process, which collects such a file only when it is named on the command
    line."""
    __tracebackhide__ = True  # the skip reported at the test file's line
    if TENSORFLOW:
        pytest.skip("JAX and PyTorch backend tests: run with KERAS_BACKEND=jax or torch",
                    allow_module_level=True)


def skip_module_unless(backend, reason):
    """Called at the top of a file for one backend only: skips the whole
    module in any other backend's process."""
    __tracebackhide__ = True
    if BACKEND != backend:
        pytest.skip(reason, allow_module_level=True)


def tensor(x, dtype=None):
    """A backend tensor of `x` (in `dtype`, else x's own)."""
    x = np.asarray(x)
    return keras.ops.convert_to_tensor(x, dtype or x.dtype.name)


def numpy(x):
    """A backend tensor or variable as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def f64(x):
    """A backend tensor, variable or array as float64 NumPy."""
    if not isinstance(x, np.ndarray) and keras.backend.standardize_dtype(x.dtype) == "bfloat16":
        # exact; TensorFlow cannot hand a 0-D bfloat16 tensor to NumPy
        x = keras.ops.cast(x, "float32")
    return numpy(x).astype(np.float64)


def param(*values, neutral_=True, **kwargs):
    """pytest.param, marked backend_neutral unless neutral_=False."""
    marks = list(kwargs.pop("marks", ()))
    if neutral_:
        marks.append(neutral)
    return pytest.param(*values, marks=marks, **kwargs)


def compiled(fn):
    """`fn` compiled as this backend compiles a function of tensors:
    tf.function(jit_compile=True) on TensorFlow, jax.jit on JAX; on PyTorch
    it runs eagerly (Keras compiles a torch step only with jit_compile=True,
    which model.fit tests cover)."""
    if TENSORFLOW:
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def compiled_apply(opt, grads, variables):
    """A function running opt.apply(grads, variables) as a compiled training
    step does on this backend: under tf.function(jit_compile=True) on
    TensorFlow; on JAX `opt.stateless_apply` under jax.jit (Keras's JAX
    training loop), its results assigned back to the variables afterwards;
    eagerly on PyTorch."""
    if BACKEND != "jax":
        return compiled(lambda: opt.apply(grads, variables))
    import jax

    if not opt.built:
        opt.build(variables)
    step = jax.jit(opt.stateless_apply)

    def run():
        new_vars, new_opt = step([v.value for v in opt.variables], list(grads),
                                 [v.value for v in variables])
        for v, x in zip(variables, new_vars):
            v.assign(x)
        for v, x in zip(opt.variables, new_opt):
            v.assign(x)

    return run


def _keeps_float64():
    if BACKEND != "jax":
        return True
    import jax

    return bool(jax.config.read("jax_enable_x64"))


# JAX computes in float64 only with jax_enable_x64, off by default (and in
# the JAX test process, as for most of JAX's users): there float64 is
# float32. WIDE is the widest float a test can ask of this backend; a test
# whose point is float64 itself is backend_neutral only where FLOAT64.
FLOAT64 = _keeps_float64()
WIDE = "float64" if FLOAT64 else "float32"


def neutral_if_float64(test):
    """Marks `test` backend_neutral where this backend keeps float64."""
    return neutral(test) if FLOAT64 else test


def numpy_dtype(dtype):
    """The NumPy dtype of a Keras dtype name (bfloat16 from ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def gradients(loss, variables):
    """(loss(), [d loss / d v for v in variables]) by this backend's autodiff:
    a GradientTape, jax.grad over the variables' values (a StatelessScope
    maps each variable to its traced value), torch.autograd."""
    if TENSORFLOW:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss()
        return value, tape.gradient(value, variables)
    if BACKEND == "jax":
        import jax

        def of_values(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss()

        value, grads = jax.value_and_grad(of_values)([v.value for v in variables])
        return value, list(grads)
    import torch

    value = loss()
    grads = torch.autograd.grad(value, [v.value for v in variables])
    return value, list(grads)


def norm_of(grad, name, eps=None, per_unit=False):
    """norm(grad) by name as the wrappers measure a dense gradient on this
    backend: its executor's `Tensors.norm` (tf_backend on TensorFlow,
    keras_step elsewhere)."""
    if TENSORFLOW:
        from normopt.ops import tf_backend

        return tf_backend.norm_of(grad, name, eps, per_unit)
    from normopt.ops import keras_step

    return keras_step.backend_tensors().norm(grad, name, eps, per_unit)


def scale_gradient(grad, normalization, mode, clipnorm=1.0, eps=None):
    """One gradient normalized or clipped by its own norm, as the keras.ops
    path scales it: tf_backend.scale_gradient on TensorFlow; elsewhere
    `norm_of`, then scale_math's scale and apply_scale."""
    if TENSORFLOW:
        from normopt.ops import tf_backend

        return tf_backend.scale_gradient(grad, normalization, mode, clipnorm, eps)
    from normopt.ops import keras_step, scale_math

    scaling = scale_math.Normalize() if mode == scale_math.NORMALIZE else scale_math.Clip(clipnorm)
    tensors = keras_step.backend_tensors()
    return tensors.apply_scale(grad, scaling.scale(norm_of(grad, normalization, eps)),
                               branch_large=True)


def cases(*axes):
    """pytest.params over the product of `axes` (lists of values). On
    TensorFlow every combination runs; on the other backends, where each new
    shape, dtype or norm costs compiles, a covering subset (conftest.covering:
    every value of every axis at least once), the rest with --runslow."""
    from conftest import covering

    return [pytest.param(*p.values, marks=p.marks if not TENSORFLOW else ())
            for p in covering(*axes)]


def saved_variables(opt):
    """The optimizer variables a saved file holds, in its order: a wrapper's
    `variables` without the recorded gradient norms (listed off TensorFlow,
    last, so that a stateless step returns them; saved nowhere)."""
    return [v for v in opt.variables if v.name != "gradient_norms"]


def apply(opt, grads, variables):
    """One step as Keras trains outside model.fit on this backend:
    opt.apply eagerly; on JAX stateless_apply under jax.jit
    (`compiled_apply`), since Keras's own LossScaleOptimizer cannot apply
    statefully there (its cond leaks tracers, whatever the inner optimizer)."""
    if BACKEND == "jax":
        compiled_apply(opt, grads, variables)()
    else:
        opt.apply(grads, variables)

