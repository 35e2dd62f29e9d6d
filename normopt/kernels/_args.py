"""Argument checks and small host-side formulas shared by the kernel modules."""

import numpy as np

from normopt.header_tables import DTYPE_CODES
from normopt.kernels import _updates

NARROW = ("float16", "bfloat16")
SUPPORTED = tuple(DTYPE_CODES)


def dtype_name(array):
    return np.dtype(array.dtype).name


def common_dtype(arrays, what="arrays"):
    """The one dtype name of a list of arrays (float16/bfloat16/float32/float64)."""
    names = {dtype_name(a) for a in arrays}
    if len(names) > 1:
        raise ValueError(
            f"all {what} must share one dtype (call once per dtype group), "
            f"got {sorted(names)}"
        )
    name = names.pop() if names else "float32"
    if name not in SUPPORTED:
        raise TypeError(f"dtype {name} has no kernel; expected one of {SUPPORTED}")
    return name


def acc_dtype(name):
    """Accumulation dtype: float64 for float64, float32 for everything narrower."""
    return np.float64 if name == "float64" else np.float32


def per_tensor(value, count, dtype):
    """None, a scalar or a sequence of `count` values, as an array[count]."""
    if value is None:
        return np.zeros(count, dtype=dtype)
    out = np.asarray(value, dtype=np.float64)
    if out.ndim == 0:
        return np.full(count, out, dtype=dtype)
    if out.shape != (count,):
        raise ValueError(f"expected a scalar or {count} per-tensor values, got shape {out.shape}")
    return out.astype(dtype)


def check_pairs(first, second, names):
    """Every tensor of `second` has the shape and dtype of the same one in `first`."""
    if len(first) != len(second):
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {len(first)} vs {len(second)}")
    for i, (a, b) in enumerate(zip(first, second)):
        if a.shape != b.shape or dtype_name(a) != dtype_name(b):
            raise ValueError(
                f"{names[1]}[{i}] is {dtype_name(b)}{tuple(b.shape)} but "
                f"{names[0]}[{i}] is {dtype_name(a)}{tuple(a.shape)}"
            )


def check_momenta(weights, momenta, momentum):
    """Momenta given: the momentum rule runs (even with momentum 0, as the op
    does when given slots). None: plain SGD, which needs momentum == 0."""
    if momenta is None:
        if momentum != 0:
            raise ValueError(
                f"momentum={momentum} needs `momenta`, one slot per weight (got None)")
        return
    check_pairs(weights, momenta, ("weights", "momenta"))


def sgd_rule(weights, momenta, momentum, nesterov):
    """(rule, slots, hyper) of an `apply_sgd` call: plain sgd without momenta,
    else sgd_momentum or sgd_nesterov on the one slot list `momenta`."""
    check_momenta(weights, momenta, momentum)
    if momenta is None:
        return "sgd", [], ()
    return ("sgd_nesterov" if nesterov else "sgd_momentum"), [momenta], (momentum,)


def check_apply(rule, weights, grads, slots, lr, step, hyper):
    """Checks the arguments of a generic `apply(rule, weights, grads, slots, ...)`
    (ValueErrors name the rule) and returns (Rule, step scalars array, dtype
    name): grads and each of the rule's slot lists (slot-major, slots[q][t])
    shaped and typed like the weights, `hyper` and `step` as the rule takes them."""
    spec = _updates.get_rule(rule)
    if slots is None:
        slots = []
    if isinstance(slots, np.ndarray) or not isinstance(slots, (list, tuple)):
        raise ValueError(f"rule {rule!r}: slots must be a list of {len(spec.slots)} "
                         f"lists {spec.slots} (slot-major), got {type(slots).__name__}")
    if len(slots) != len(spec.slots):
        raise ValueError(f"rule {rule!r} takes {len(spec.slots)} slot lists {spec.slots} "
                         f"(slot-major: slots[q][t]), got {len(slots)}")
    try:
        check_pairs(weights, grads, ("weights", "grads"))
        for name, slot in zip(spec.slots, slots):
            if isinstance(slot, np.ndarray) or not isinstance(slot, (list, tuple)):
                raise ValueError(f"slot {name!r} must be a list of arrays, one per "
                                 f"weight (slots are slot-major), got {type(slot).__name__}")
            check_pairs(weights, slot, ("weights", name))
    except ValueError as e:
        raise ValueError(f"rule {rule!r}: {e}") from None
    dtype = common_dtype(weights)
    spec, scalars = _updates.step_scalars(rule, lr, step, hyper, acc_dtype(dtype))
    return spec, scalars, dtype
