"""The element rules of the fused updates, for the Numba kernels.

Plain Python that `numba_cpu` compiles with `@njit` and `numba_cuda` with
`@cuda.jit(device=True)`, so both run one statement of each rule (as
`_finalize` does for the norms). Arguments are in the accumulation type and
the caller stores the returned values, rounding them once to the element
type; the rules are those of csrc/ops/update_rules.h and
csrc/cuda/update_kernels.cuh, with g' = g * scale[t]:

    decay (decoupled)  w = w - w * wd * lr
    SGD                w = w - lr * g'
    momentum           m = mu * m - lr * g';  w = w + m
    nesterov           m = mu * m - lr * g';  w = w + (mu * m - lr * g')
    Adam               m = m + (g' - m) * (1 - beta_1)
                       v = v + (g'^2 - v) * (1 - beta_2)
                       amsgrad: vhat = max(vhat, v), used in place of v
                       w = w - alpha * m / (sqrt(v) + adam_epsilon)

The step scalars (alpha, 1 - beta_1, 1 - beta_2) come from
`_args.adam_scalars`, as normopt/update_scalars.h forms them.
"""

import math


def sgd_element(w, m, gs, wd, lr, mu, use_momentum, nesterov):
    """New (w, m) of one element; m is returned as given without momentum."""
    if wd != 0:
        w = w - w * wd * lr
    if not use_momentum:
        return w - lr * gs, m
    m = mu * m - lr * gs
    if nesterov:
        return w + (mu * m - lr * gs), m
    return w + m, m


def adam_element(w, m, v, vhat, gs, wd, lr, alpha, one_minus_b1, one_minus_b2,
                 adam_eps, amsgrad):
    """New (w, m, v, vhat) of one element; vhat is returned as given
    without amsgrad."""
    if wd != 0:
        w = w - w * wd * lr
    m = m + (gs - m) * one_minus_b1
    v = v + (gs * gs - v) * one_minus_b2
    denom = v
    if amsgrad:
        vhat = vhat if vhat > v else v
        denom = vhat
    return w - alpha * m / (math.sqrt(denom) + adam_eps), m, v, vhat
