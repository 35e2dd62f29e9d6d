"""Names of the execution paths a wrapper step can take.

A wrapper records the path of its latest traced or eager step in
`wrapper.last_path` (a `StepPath`), so tests and `normopt info` can tell
which code actually ran:

    fused           compiled op: norms, scaling and the inner optimizer's
                    update of variables and slots, in one op per dtype
    fused_tf_norms  a custom (Python) normalization, or a global norm over
                    gradients of several dtypes: TensorFlow computes the
                    norms, the compiled op scales and updates
    fused_scale     compiled op computes norms (TensorFlow a global norm over
                    several dtypes) and scales the gradients; the inner
                    optimizer (no fused kernel for it) updates in TF
    tf              pure TensorFlow throughout (XLA-compatible): the
                    keras.ops math (`scale_math`) on the TensorFlow backend
    keras           the same keras.ops math on any other Keras backend (JAX,
                    PyTorch), where the compiled op, TensorFlow's, cannot
                    run: its reason names the backend

`pure()` is the name of the current backend's non-compiled path (`tf` on
TensorFlow, where it keeps the name it has always had, `keras` elsewhere).

A step skipped for non-finite gradients (`skip_nonfinite=True`) records the
path it would have taken; `skipped_steps` counts the skips.
"""

import collections

FUSED = "fused"
FUSED_TF_NORMS = "fused_tf_norms"
FUSED_SCALE = "fused_scale"
TF = "tf"
KERAS = "keras"
ALL = (FUSED, FUSED_TF_NORMS, FUSED_SCALE, TF, KERAS)
COMPILED = (FUSED, FUSED_TF_NORMS, FUSED_SCALE)
PURE = (TF, KERAS)

StepPath = collections.namedtuple("StepPath", ["name", "reason"])
StepPath.__doc__ = """The path one step took and, for `tf` and `keras`, why
(for a compiled path, None, or why TensorFlow measured the norms; see
normopt.ops.step_plan)."""


def pure(backend=None):
    """The non-compiled path's name on `backend` (default: Keras's current
    backend): `tf` on TensorFlow, `keras` on every other backend."""
    if backend is None:
        import keras

        backend = keras.backend.backend()
    return TF if backend == "tensorflow" else KERAS

