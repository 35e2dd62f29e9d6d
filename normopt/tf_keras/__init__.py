"""normopt's wrappers for Keras 2 (the `tf-keras` package), with the API of
the original keras-normalized-optimizers wrapper:

    from tf_keras.optimizers import Adam, SGD
    from normopt.tf_keras import NormalizedOptimizer, ClippedOptimizer

    sgd = NormalizedOptimizer(SGD(0.01, momentum=0.9, nesterov=True), normalization="l2")
    adam = ClippedOptimizer(Adam(0.001), normalization="l2", clipnorm=0.5)

They wrap tf_keras optimizers, new-style (`tf_keras.optimizers.*`) and
legacy (`tf_keras.optimizers.legacy.*`), with the semantics, arguments and
math of `normopt.NormalizedOptimizer` & co. (Keras 3), whose norms and
scaling are written once in keras.ops (`normopt.ops.scale_math`) and in the
compiled op. Importing this module registers the wrappers with tf_keras's
serialization, so `tf_keras.models.load_model` finds them.

Keras 3 stays installed next to tf_keras and untouched: the math runs in
keras.ops on TensorFlow tensors, so Keras 3's backend must be TensorFlow.
"""


def _check_keras_backend(backend):
    """ImportError unless Keras 3's backend is TensorFlow."""
    if backend != "tensorflow":
        raise ImportError(
            "normopt.tf_keras computes its norms in keras.ops on TensorFlow "
            "tensors, so Keras 3 (installed next to tf_keras) must use the "
            f"TensorFlow backend; its backend is {backend!r}. Set "
            "KERAS_BACKEND=tensorflow (or \"backend\": \"tensorflow\" in "
            "~/.keras/keras.json) in the process that uses tf_keras."
        )


def _import_tf_keras():
    try:
        import tf_keras  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "normopt.tf_keras wraps Keras 2 optimizers and needs the tf-keras "
            "package of your TensorFlow's version (pip install "
            f"'tf-keras~=<TensorFlow's major.minor>.0'): {exc}"
        ) from exc


_import_tf_keras()

import keras  # noqa: E402

_check_keras_backend(keras.backend.backend())

from normopt.tf_keras.optimizers import (  # noqa: E402
    AdaptiveClippedOptimizer,
    ClippedOptimizer,
    NormalizedOptimizer,
)

__all__ = ["AdaptiveClippedOptimizer", "ClippedOptimizer", "NormalizedOptimizer"]
