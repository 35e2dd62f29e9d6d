"""Op-level pieces: the compiled op library and its raw ops (raw_ops), the
step plan (step_plan), the keras.ops math (scale_math), what is
TensorFlow's alone (tf_backend), the executor on Keras's other backends
(keras_step) and which of the two runs a step (executors).

Which path a wrapper's latest step took is `wrapper.last_path`, a
`StepPath(name, reason)` with `name` one of `PATHS` (see `paths`):
`fused`, `fused_tf_norms`, `fused_scale` or `tf` on TensorFlow, `keras` on
JAX and PyTorch. Whether the compiled library is available, and why not, is
`library_status()`.
"""

from normopt.ops.paths import (
    ALL as PATHS,
    COMPILED,
    FUSED,
    FUSED_SCALE,
    FUSED_TF_NORMS,
    KERAS,
    TF,
    StepPath,
)


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    from normopt.ops import tf_backend

    return tf_backend.in_xla_context()


def library_status():
    """dict(loaded, path, reason) for the compiled op library."""
    from normopt.ops import library

    return library.status()


__all__ = [
    "COMPILED",
    "FUSED",
    "FUSED_SCALE",
    "FUSED_TF_NORMS",
    "KERAS",
    "PATHS",
    "StepPath",
    "TF",
    "in_xla_context",
    "library_status",
]
