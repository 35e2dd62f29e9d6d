"""The spectral norm in keras.ops: Lanczos on G^T G from a persistent vector.

For a gradient g of two or more axes, seen as the matrix G (all axes but the
last as rows, the last as columns: the view of granularity "unit"),

    spectral(g) = sigma_1(G) + eps

the largest singular value; a tensor of at most one axis is measured by l2.

Method (the same in csrc/ops/spectral_norm.h, the fused op's):

1. G is scaled by p = 2^-e, e the exponent of max|G| (frexp), so that every
   element of G' = p G is below 1 in magnitude: sigma_1(G')^2 neither
   overflows nor underflows; sigma_1(G) = sigma_1(G') / p, exactly.
2. Lanczos on A = G'^T G' (n x n, n the columns), with full
   reorthogonalization, from the start vector

       q_1 = normalize(v + START_MIX * r)

   v: the variable's persistent estimate of the top right singular vector
   (zero before the first step), r: a fixed pseudo-random vector
   (`start_vector`), which keeps a start that is exactly a lower singular
   vector of the new G from trapping the iteration. Step k: w = A q_k (one
   pass over G: the matrix-vector products G q_k and G^T (G q_k)),
   alpha_k = q_k . w, w orthogonalized against q_1..q_k (twice), beta_k =
   |w|, q_{k+1} = w / beta_k. The estimate after k steps is sqrt(theta_k),
   theta_k the largest eigenvalue of the k x k tridiagonal T_k (alpha on the
   diagonal, beta beside it); it grows monotonically towards sigma_1'^2.
3. Stop after step k when k >= 2 and the estimate changed by at most
   TOLERANCE relative to step k-1, or beta_k <= BREAKDOWN * theta_k (the
   Krylov space is invariant: T_k holds sigma_1^2 exactly; a matrix of rank
   r stops by step r + 1, so 1 x n and n x 1 matrices take one or two
   steps), or k reaches min(n, MAX_ITERATIONS).
4. The new persistent vector is the Ritz vector V_k s (s the eigenvector of
   theta_k), normalized; it is kept as it was where it would not be finite
   or is zero.

Why Lanczos rather than plain power iteration: from a cold start, on a
Gaussian 4096 x 4096 matrix (whose top singular values are close: the
hardest case of the tests) power iteration needs about 150 passes to come
within 1e-3 and Lanczos about 40 to come within 3e-5; from the previous
step's vector on a slowly changing gradient both need two or three. The
thin-matrix case needs no route of its own (point 3).
"""

import keras
import numpy as np
from keras import ops

from normopt.ops import scale_math

NAME = "spectral"
TOLERANCE = 1e-5
MAX_ITERATIONS = 64
BREAKDOWN = 1e-7
START_MIX = 1e-3


def has_matrix(shape):
    """Whether a tensor of `shape` is measured as a matrix (>= 2 axes);
    otherwise spectral is its l2 norm."""
    return len(shape) >= 2


def vector_size(shape):
    """The length of the persistent vector of a tensor of `shape`: its
    last axis (the matrix view's columns)."""
    return int(shape[-1])


def start_vector(n):
    """The fixed start r of length n (float64 NumPy): r_i = h_i / 2^32 - 1/2,
    h_i = (2654435761 i + 2135587861) mod 2^32; spectral_norm.h's
    `start_element`."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(2135587861)) % np.uint64(1 << 32)
    return h.astype(np.float64) / float(1 << 32) - 0.5


def _exponent(x):
    """frexp's exponent of a finite x >= 0 (an int32 tensor), clamped so
    that 2^-e is a normal number; for zero or a subnormal, the smallest
    (x is then scaled as far as it can be)."""
    itype, mant, bias, _, _ = scale_math._layout(x.dtype)
    bits = ops.right_shift(ops.view(x, itype), ops.convert_to_tensor(mant, itype))
    e = ops.cast(ops.bitwise_and(bits, ops.convert_to_tensor(2 * bias + 1, itype)), "int32")
    return ops.clip(e - (bias - 1), 2 - bias, bias - 1)


def matrix_view(x):
    """x as the (rows, last axis) matrix."""
    return ops.reshape(x, [-1, x.shape[-1]])


def _tridiagonal(alpha, beta, k):
    """The K x K matrix whose top-left k x k block is T_k (alpha on the
    diagonal, beta_0..beta_{k-2} beside it) and which is zero elsewhere."""
    size = alpha.shape[0]
    used = ops.cast(ops.arange(size) < k - 1, beta.dtype)
    b = beta * used
    return (ops.diag(alpha) + ops.diag(b[: size - 1], 1) + ops.diag(b[: size - 1], -1))


def spectral_norm(x, vector, eps=None):
    """(spectral(x) + eps, new persistent vector, Lanczos steps) for a
    tensor of >= 2 axes `x` and its persistent vector (length x.shape[-1]);
    the norm and vector in the accumulation dtype. See the module
    docstring."""
    acc = scale_math.accumulation_dtype(x.dtype)
    eps = scale_math.as_scalar(keras.config.epsilon() if eps is None else eps, acc)
    g = matrix_view(ops.cast(x, acc))
    n = vector_size(x.shape)
    max_abs = ops.max(ops.concatenate([ops.reshape(ops.abs(g), [-1]), ops.zeros([1], acc)], 0))
    e = _exponent(ops.where(ops.isfinite(max_abs), max_abs, ops.zeros([], acc)))
    g = g * scale_math.pow2(-e, acc)

    steps = min(n, MAX_ITERATIONS)
    r = ops.convert_to_tensor(start_vector(n), acc)
    r = r / ops.sqrt(ops.sum(r * r))
    v = ops.cast(vector, acc)
    v = ops.where(ops.all(ops.isfinite(v)), v, ops.zeros_like(v))
    q = v + START_MIX * r
    q = q / ops.sqrt(ops.sum(q * q))
    basis = ops.concatenate([q[None, :], ops.zeros([steps, n], acc)], 0)
    zeros = ops.zeros([steps], acc)

    def body(k, basis, alpha, beta, ritz, last, done):
        q = ops.take(basis, k, axis=0)
        w = scale_math.matmul(scale_math.matmul(g, q), g)
        a = ops.sum(q * w)
        for _ in range(2):
            w = w - scale_math.matmul(scale_math.matmul(basis, w), basis)
        b = ops.sqrt(ops.sum(w * w))
        hot = ops.cast(ops.arange(steps) == k, acc)
        alpha = alpha + hot * a
        beta = beta + hot * b
        values, vectors = ops.eigh(_tridiagonal(alpha, beta, k + 1))
        theta = scale_math.maximum(values[-1], 0)
        estimate = ops.sqrt(theta)
        k1 = k + 1
        changed = ops.abs(estimate - last) > TOLERANCE * estimate
        stop = ops.logical_or(
            ops.logical_or(k1 >= steps, b <= BREAKDOWN * theta),
            ops.logical_and(k1 >= 2, ops.logical_not(changed)))
        nxt = ops.where(b > 0, w / ops.where(b > 0, b, ops.ones_like(b)), ops.zeros_like(w))
        # both start indices k1's dtype: JAX with x64 makes a Python 0 int64
        row = ops.minimum(k1, steps)
        basis = ops.slice_update(basis, [row, ops.zeros_like(row)], nxt[None, :])
        return k1, basis, alpha, beta, vectors[:, -1], estimate, stop

    def cond(k, basis, alpha, beta, ritz, last, done):
        return ops.logical_not(done)

    state = (ops.convert_to_tensor(0, "int32"), basis, zeros, zeros, zeros,
             ops.zeros([], acc), ops.convert_to_tensor(False))
    k, basis, _, _, ritz, estimate, _ = ops.while_loop(cond, body, state, maximum_iterations=steps)
    y = scale_math.matmul(ritz, basis[:steps])
    size = ops.sqrt(ops.sum(y * y))
    keep = ops.logical_or(ops.logical_not(ops.isfinite(size)), size <= 0)
    new_vector = ops.where(keep, q, y / ops.where(keep, ops.ones_like(size), size))
    norm = estimate * scale_math.pow2(e, acc) + eps
    return norm, new_vector, k
