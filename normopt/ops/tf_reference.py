"""Pure-TensorFlow gradient scaling: the path every compiled kernel must match.

Per tensor, with s the scale of `scale_from_norm`:

    normalize: g' = g * s,  s = 1 / norm(g)
    clip:      g' = g * s,  s = clipnorm / norm(g) if norm(g) >= clipnorm else 1

The product is formed in the accumulation dtype (float32 for 16-bit
gradients) and cast back, so a 16-bit gradient whose norm overflows float16
is still scaled correctly. Everything here is XLA-compatible.
"""

import tensorflow as tf

from normopt import normalizations

NORMALIZE = "normalize"
CLIP = "clip"
MODES = (NORMALIZE, CLIP)


def scale_from_norm(norm, mode, clipnorm):
    """The per-tensor multiplier; mirrors scale_from_norm in norm_stats.h."""
    one = tf.ones([], norm.dtype)
    if mode == NORMALIZE:
        return one / norm
    clipnorm = normalizations.as_scalar(clipnorm, norm.dtype)
    return tf.where(norm >= clipnorm, clipnorm / norm, one)


def apply_scale(grad, scale):
    """grad * scale, formed in the scale's dtype; keeps IndexedSlices sparse."""
    if isinstance(grad, tf.IndexedSlices):
        values, indices = normalizations.deduplicate(grad)
        return tf.IndexedSlices(
            apply_scale(values, scale), indices, grad.dense_shape
        )
    return tf.cast(tf.cast(grad, scale.dtype) * scale, grad.dtype)


def scale_gradient(grad, normalization, mode, clipnorm=1.0, eps=None):
    """One gradient normalized or clipped by its own norm (None passes)."""
    if grad is None:
        return None
    if isinstance(grad, tf.Tensor) and grad.shape.num_elements() == 0:
        return grad
    norm = normalizations.tf_norm(grad, normalization, eps)
    return apply_scale(grad, scale_from_norm(norm, mode, clipnorm))


def scale_gradients(grads, normalization, mode, clipnorm=1.0, eps=None):
    """The list form of `scale_gradient`."""
    return [
        scale_gradient(g, normalization, mode, clipnorm, eps) for g in grads
    ]
