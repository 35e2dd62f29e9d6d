"""Pure-TensorFlow gradient scaling: the path every compiled kernel must match.

Per norm (of a tensor, of each unit of its last axis, or of all gradients
together: `granularity`), with (pre, mult) the scale of `scale_from_norm`:

    g' = (g * pre) * mult
    normalize: mult = 1 / norm(g)
    clip:      mult = clipnorm / norm(g) if norm(g) >= clipnorm else 1
    adaptive:  clip with clipnorm = clip_factor * max(norm(w), weight_eps)
    pre = 1, unless mult would be below the smallest normal number (where
    TF's flush-to-zero makes it 0): then pre = 2^-k, k from the norm's
    exponent, and mult = target / (norm * 2^-k)   (norm_stats.h)

The product is formed in the accumulation dtype (float32 for 16-bit
gradients) and cast back, so a 16-bit gradient whose norm overflows float16
is still scaled correctly. Everything here is XLA-compatible.
"""

import tensorflow as tf

from normopt import normalizations
from normopt.ops import paths

NORMALIZE = "normalize"
CLIP = "clip"
ADAPTIVE = "adaptive"
MODES = (NORMALIZE, CLIP, ADAPTIVE)

_MIN_NORMAL = {tf.float32: 1.17549435082228750797e-38, tf.float64: 2.2250738585072013830902e-308}


def scale_from_norm(norm, mode, clipnorm):
    """The per-tensor (pre, mult); mirrors scale_from_norm in norm_stats.h."""
    one = tf.ones([], norm.dtype)
    if mode == NORMALIZE:
        target = one
        mult = one / norm
    else:
        clipnorm = normalizations.as_scalar(clipnorm, norm.dtype)
        clips = norm >= clipnorm
        target = tf.where(clips, clipnorm, one)
        mult = tf.where(clips, clipnorm / norm, one)
    tiny = (
        (mult >= 0)
        & (mult < tf.constant(_MIN_NORMAL[norm.dtype], norm.dtype))
        & (target > 0)
        & tf.math.is_finite(norm)
    )
    k = normalizations.rescue_exponent(tf.where(tiny, norm, one))
    pre = tf.where(tiny, normalizations.pow2(-k, norm.dtype), one)
    mult = tf.where(tiny, target / (norm * pre), mult)
    return pre, mult


# Tensors up to this many elements apply both products without a cond.
_SMALL = 1 << 16


def apply_scale(grad, scale):
    """(grad * pre) * mult for scale = (pre, mult), formed in the scale's
    dtype; keeps IndexedSlices sparse. Outside XLA, for a tensor above
    _SMALL elements, the extra product runs only where pre != 1 (a tf.cond),
    so the usual case is one pass with one multiply."""
    if isinstance(grad, tf.IndexedSlices):
        values, indices = normalizations.deduplicate(grad)
        return tf.IndexedSlices(
            apply_scale(values, scale), indices, grad.dense_shape
        )
    pre, mult = scale
    x = tf.cast(grad, mult.dtype)
    size = x.shape.num_elements()
    if paths.in_xla_context() or (size is not None and size <= _SMALL):
        # XLA fuses both products; a small tensor's extra product is cheaper
        # than a cond (x * 1 is x: the same bits as x * mult).
        y = (x * pre) * mult
    else:
        y = tf.cond(tf.reduce_all(tf.equal(pre, 1)), lambda: x * mult,
                    lambda: (x * pre) * mult)
    return tf.cast(y, grad.dtype)


def _usable(grad):
    return grad is not None and not (
        isinstance(grad, tf.Tensor) and grad.shape.num_elements() == 0
    )


def gradient_norms(grads, normalization, granularity="tensor", eps=None):
    """The norm each gradient is scaled by (None where it is None or empty):
    its own ("tensor"), one per unit of its last axis ("unit"), or one over
    all of them together ("global")."""
    if granularity == "global":
        kept = [g for g in grads if _usable(g)]
        if not kept:
            return [None] * len(grads)
        shared = normalizations.global_norm(kept, normalization, eps)
        return [shared if _usable(g) else None for g in grads]
    per_unit = granularity == "unit"
    return [
        normalizations.tf_norm(g, normalization, eps, per_unit) if _usable(g) else None
        for g in grads
    ]


def scale_gradient(grad, normalization, mode, clipnorm=1.0, eps=None):
    """One gradient normalized or clipped by its own norm (None passes)."""
    return scale_gradients([grad], normalization, mode, clipnorm, eps)[0]


def scale_gradients(grads, normalization, mode, clipnorm=1.0, eps=None,
                    granularity="tensor", weights=None, clip_factor=None,
                    weight_eps=None):
    """Every gradient scaled by its norm at `granularity` (None and empty
    gradients pass). Mode "adaptive" clips with a threshold per norm taken
    from `weights` at the same granularity:
        t = clip_factor * max(norm(w), weight_eps); s = t / norm(g) if norm(g) > t else 1
    (the clip rule with threshold t: at norm(g) == t both give s = 1)."""
    norms = gradient_norms(grads, normalization, granularity, eps)
    if mode == ADAPTIVE:
        weight_norms = gradient_norms(
            [None if g is None else tf.convert_to_tensor(w) for g, w in zip(grads, weights)],
            normalization, granularity, eps)
        thresholds = [
            None if wn is None else tf.cast(
                normalizations.as_scalar(clip_factor, wn.dtype)
                * tf.maximum(wn, normalizations.as_scalar(weight_eps, wn.dtype)),
                n.dtype)
            for wn, n in zip(weight_norms, norms)
        ]
        mode = CLIP
    else:
        thresholds = [clipnorm] * len(grads)
    return [
        g if n is None else apply_scale(g, scale_from_norm(n, mode, t))
        for g, n, t in zip(grads, norms, thresholds)
    ]
