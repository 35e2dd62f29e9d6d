"""Names of the execution paths a wrapper step can take, and XLA detection.

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
    tf              pure TensorFlow throughout (XLA-compatible)

A step skipped for non-finite gradients (`skip_nonfinite=True`) records the
path it would have taken; `skipped_steps` counts the skips.
"""

import collections

from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

FUSED = "fused"
FUSED_TF_NORMS = "fused_tf_norms"
FUSED_SCALE = "fused_scale"
TF = "tf"
ALL = (FUSED, FUSED_TF_NORMS, FUSED_SCALE, TF)
COMPILED = (FUSED, FUSED_TF_NORMS, FUSED_SCALE)

StepPath = collections.namedtuple("StepPath", ["name", "reason"])
StepPath.__doc__ = """The path one step took and, for `tf`, why (for a
compiled path, None, or why TensorFlow measured the norms)."""


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    return control_flow_util.GraphOrParentsInXlaContext(
        tf_ops.get_default_graph()
    )
