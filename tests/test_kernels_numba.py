"""normopt.kernels: `_finalize` against the header and NumPy, Numba CPU kernels.

The `check_*` functions take a kernel module and are shared with
test_kernels_cudasim.py and test_kernels_cupy.py, so every module is held to
the same cases: all norms, both modes, SGD/momentum/nesterov and
Adam/amsgrad/AdamW, every dtype, empty/0-D/1/odd shapes, chunk boundaries
and long lists with empties mixed in. Expected values come from
tests/reference.py (NumPy float64, written from the formulas).

`check_rule(K, rule, shapes, dtype, ...)` holds any module with the generic
`apply(rule, weights, grads, slots, ...)` to every update rule
(reference.rule_step), `check_rule_against` two modules to each other, and
`check_rule_matches_tf_op` a module to the TF op's generic apply
(normopt.ops.fused.apply).
"""

import itertools
import os

import numpy as np
import pytest

import reference as R
from conftest import covering
from helpers import TOL, run_probe, sparse_gradients
from normopt import header_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 8  # tiny chunks so small tensors cross chunk boundaries

KINDS = R.NORM_NAMES + ("linf",)
DTYPES = ("float32", "float64", "float16", "bfloat16")
SHAPE_LISTS = {
    "mixed": [(), (1,), (0,), (7, 13), (3, 4, 5), (0, 3), (2,)],
    # sizes just below, at and above multiples of CHUNK
    "chunk_edges": [(CHUNK - 1,), (CHUNK,), (CHUNK + 1,), (0,), (2 * CHUNK - 1,),
                    (2 * CHUNK,), (2 * CHUNK + 1,), (5 * CHUNK,)],
}


def many_shapes(count, max_size, seed=1):
    """`count` 1-D shapes of random sizes, a third of them empty."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, size=count)
    sizes[rng.random(count) < 1 / 3] = 0
    return [(int(s),) for s in sizes]


def np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def make_arrays(shapes, dtype, seed=0, away_from_zero=False):
    """Random arrays; 16-bit ones (or `away_from_zero`) get |x| in [0.5, 2],
    so Adam's v = (1-b2) g'^2 does not underflow float16 in the slots."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        if away_from_zero or dtype in ("float16", "bfloat16"):
            x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 1)
        out.append(np.asarray(x).astype(np_dtype(dtype)))
    return out


def dtype_name(array):
    return np.dtype(array.dtype).name


def assert_close(got, want, dtype, what=""):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               err_msg=what, **TOL[dtype])


# ---- shared checks (kernel module K) ------------------------------------

def check_norms(K, shapes, dtype, kinds=KINDS, **kw):
    arrays = make_arrays(shapes, dtype)
    for kind in kinds:
        got = K.norms(arrays, kind, 1e-7, **kw)
        assert np.asarray(got).shape == (len(arrays),)
        assert_close(got, [R.norm(a, kind) for a in arrays], dtype, kind)


def check_scale(K, shapes, dtype, mode, kind="l2", **kw):
    arrays = make_arrays(shapes, dtype)
    clipnorm = float(np.median([R.norm(a, kind) for a in arrays])) if arrays else 1.0
    want = [R.transform(a, kind, mode, clipnorm) for a in arrays]
    want_scales = [R.transform(np.ones(1), kind, mode, clipnorm,
                               norm_fn=lambda _, a=a: R.norm(a, kind))[0] for a in arrays]
    assert_close(K.scales(arrays, kind, mode, clipnorm, 1e-7, **kw), want_scales, dtype)
    got = K.scale(arrays, kind, mode, clipnorm, 1e-7, **kw)
    for a, g, w in zip(arrays, got, want):
        assert g.shape == a.shape and np.dtype(g.dtype) == np.dtype(a.dtype)
        assert_close(g, w, dtype, mode)


SGD_VARIANTS = {"sgd": (0.0, False), "momentum": (0.875, False), "nesterov": (0.875, True)}
ADAM_VARIANTS = {"adam": (False, None), "amsgrad": (True, None), "adamw": (False, 0.00390625)}


def check_sgd(K, shapes, dtype, variant, kind="l2", mode="normalize", steps=2, **kw):
    mu, nesterov = SGD_VARIANTS[variant]
    lr, decay = 0.125, 0.0625
    weights = make_arrays(shapes, dtype, seed=1)
    momenta = [np.zeros_like(w) for w in weights]
    ref = R.SGD(lr, momentum=mu, nesterov=nesterov, weight_decay=decay)
    ref_w = [np.asarray(w, np.float64) for w in weights]
    for step in range(steps):
        grads = make_arrays(shapes, dtype, seed=10 + step)
        clipnorm = 1.5
        for i, g in enumerate(grads):
            g64 = R.transform(g, kind, mode, clipnorm)
            ref_w[i] = ref.step(i, ref_w[i], g64)
        got_norms = K.apply_sgd(weights, grads, momenta if mu else None, lr=lr,
                                momentum=mu, nesterov=nesterov, decay=decay,
                                kind=kind, mode=mode, clipnorm=clipnorm, eps=1e-7, **kw)
        assert_close(got_norms, [R.norm(g, kind) for g in grads], dtype, "norms")
        for i, w in enumerate(weights):
            assert_close(w, ref_w[i], dtype, f"{variant} step {step} w[{i}]")
            if mu:
                assert_close(momenta[i], ref.m.get(i, np.zeros(w.shape)), dtype, "momentum")


def check_adam(K, shapes, dtype, variant, kind="l2", mode="normalize", steps=2, **kw):
    amsgrad, wd = ADAM_VARIANTS[variant]
    lr, b1, b2, aeps = 0.0625, 0.875, 0.998046875, 1e-7
    if dtype in ("float16", "bfloat16"):
        kind = "max"  # g' in [0.25, 1]: v stays representable in 16 bits
    weights = make_arrays(shapes, dtype, seed=2)
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    vhat = [np.zeros_like(w) for w in weights] if amsgrad else None
    decay = [wd if i % 2 == 0 else 0.0 for i in range(len(shapes))] if wd else None
    ref = R.Adam(lr, b1, b2, aeps, amsgrad=amsgrad)
    ref_w = [np.asarray(w, np.float64) for w in weights]
    for step in range(1, steps + 1):
        grads = make_arrays(shapes, dtype, seed=20 + step)
        for i, g in enumerate(grads):
            if decay:
                ref_w[i] = ref_w[i] - ref_w[i] * decay[i] * lr
            ref_w[i] = ref.step(i, ref_w[i], R.transform(g, kind, mode, 1.5))
        K.apply_adam(weights, grads, m, v, vhat, lr=lr, step=step, beta_1=b1, beta_2=b2,
                     adam_epsilon=aeps, decay=decay, kind=kind, mode=mode,
                     clipnorm=1.5, eps=1e-7, **kw)
        for i, w in enumerate(weights):
            assert_close(w, ref_w[i], dtype, f"{variant} step {step} w[{i}]")
            assert_close(m[i], ref.m.get(i, np.zeros(w.shape)), dtype, "m")
            assert_close(v[i], ref.v.get(i, np.zeros(w.shape)), dtype, "v")
            if amsgrad:
                assert_close(vhat[i], ref.vhat.get(i, np.zeros(w.shape)), dtype, "vhat")


def nan_arrays(dtype, big):
    """NaN in a later chunk's vector part, in a tail, first; an inf; a clean one."""
    x = np.ones(big)
    x[big - big // 3] = np.nan
    tail = np.arange(1.0, 12.0)
    tail[-1] = np.nan
    first = np.array([np.nan, 1.0, -2.0])
    arrays = [x, tail, first, np.array([1.0, -np.inf, 2.0]), np.array([3.0, -4.0])]
    return [a.astype(np_dtype(dtype)) for a in arrays]


def check_nan_propagates(K, dtype, big=70, **kw):
    """A NaN element gives a NaN norm for every kind (tf.reduce_max / NumPy
    semantics), whichever chunk, lane or thread it falls in; inf likewise."""
    arrays = nan_arrays(dtype, big)
    for kind in KINDS:
        got = np.asarray(K.norms(arrays, kind, 1e-7, **kw), np.float64)
        with np.errstate(invalid="ignore"):
            want = np.array([R.norm(a, kind) for a in arrays])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), kind)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), kind)
        assert_close(got[-1], want[-1], dtype, kind)


def check_momenta_with_zero_momentum(K, dtype, **kw):
    """Momenta given with momentum 0: m = 0 * m - lr * g' and w += m, as the
    TF op does when given slots; momentum != 0 without momenta is an error."""
    shapes = [(5,), (0,), (3, 2)]
    weights = make_arrays(shapes, dtype, seed=3)
    w0 = [np.array(w, np.float64) for w in weights]
    momenta = make_arrays(shapes, dtype, seed=4)
    grads = make_arrays(shapes, dtype, seed=5)
    lr = 0.125
    K.apply_sgd(weights, grads, momenta, lr=lr, momentum=0.0, kind="l2", **kw)
    for i, g in enumerate(grads):
        m_ref = -lr * R.transform(g, "l2")
        assert_close(momenta[i], m_ref, dtype, f"m[{i}]")
        assert_close(weights[i], w0[i] + m_ref, dtype, f"w[{i}]")
    with pytest.raises(ValueError, match="needs `momenta`"):
        K.apply_sgd(weights, grads, None, lr=lr, momentum=0.5, **kw)


# Relative tolerance of a kernel against the TF op on one step's increment,
# from the same state (plus 2 ulp of the stored value, and relative to the
# size of the terms where an increment is a difference, as in momentum):
# both compute in the same accumulation type, so only summation order
# differs. Small Adam weights would show a float64-formed alpha: 1 - 0.999^t
# in float32 is off by ~1e-5 of its value.
MATCH_RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 4e-3, "bfloat16": 2e-2}


def _tf_vars(arrays, dtype):
    import tensorflow as tf

    # bfloat16 goes through float32 (exact); the others pass as they are
    return [tf.Variable(tf.constant(np.asarray(a, np.float32) if dtype == "bfloat16" else a,
                                    dtype=dtype)) for a in arrays]


def _match_and_sync(ours, theirs, before, dtype, what, terms=None):
    """Asserts the increments agree, then copies the TF values into `ours`,
    so the next step starts from the same state on both sides."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        a64 = np.asarray(a, np.float64)
        b64 = np.asarray(b.numpy(), np.float64)
        w0 = before[i]
        ulp = np.spacing(np.abs(b64).astype(np_dtype(dtype))).astype(np.float64)
        size = np.abs(b64 - w0) + (terms[i] if terms is not None else 0.0)
        bad = np.abs(a64 - b64) > MATCH_RTOL[dtype] * size + 2 * ulp
        assert not bad.any(), (f"{what}[{i}] {dtype}: kernel {a64[bad][:5].tolist()} vs TF op {b64[bad][:5].tolist()} "
                               f"from {np.broadcast_to(w0, a64.shape)[bad][:5].tolist()}")
        a[...] = np.asarray(b.numpy()).astype(a.dtype)


def check_matches_tf_op(K, dtype, shapes, steps=3, **kw):
    """Norms, SGD (plain, momentum, nesterov; with decay) and Adam (plus
    amsgrad) of kernel module K against the compiled TF CPU op: each step
    from the same state on both sides."""
    import tensorflow as tf

    from normopt.ops import fused, library

    status = library.status()
    assert status["loaded"], f"op library not loaded: {status['reason']}"
    acc = np.float64 if dtype == "float64" else np.float32
    grads_np = [make_arrays(shapes, dtype, seed=30 + s) for s in range(steps)]
    grads_tf = [[tf.constant(np.asarray(a, np.float32) if dtype == "bfloat16" else a,
                             dtype=dtype) for a in g] for g in grads_np]
    for kind in KINDS:
        assert_close(K.norms(grads_np[0], kind, 1e-7, **kw),
                     fused.norms(grads_tf[0], kind, 1e-7).numpy(), dtype, kind)
    decay, lr = [0.0625 if i % 2 else 0.0 for i in range(len(shapes))], 0.125
    for mu, nesterov in ((0.0, False), (0.875, False), (0.875, True)):
        w = make_arrays(shapes, dtype, seed=6)
        m = [np.zeros_like(a) for a in w] if mu else None
        tw, tm = _tf_vars(w, dtype), (_tf_vars(m, dtype) if mu else [])
        for s in range(steps):
            before = [np.array(a, np.float64) for a in w]
            m_before = [np.array(a, np.float64) for a in (m or w)]
            terms = [2 * lr * np.abs(R.transform(g, "l2")) + np.abs(mb) + np.abs(wb) * lr
                     for g, mb, wb in zip(grads_np[s], m_before, before)]
            K.apply_sgd(w, grads_np[s], m, lr=lr, momentum=mu, nesterov=nesterov,
                        decay=decay, kind="l2", **kw)
            fused.apply_sgd(tw, tm, grads_tf[s], lr=lr, momentum=mu, nesterov=nesterov,
                            decay=tf.constant(decay, acc), kind="l2", mode="normalize",
                            clipnorm=1.0, epsilon=1e-7)
            what = f"sgd mu={mu} nesterov={nesterov} step {s}"
            _match_and_sync(w, tw, before, dtype, what + " w", terms)
            if mu:
                _match_and_sync(m, tm, m_before, dtype, what + " m", terms)
    for amsgrad in (False, True):
        w = [np.asarray(a * np.array(0.0625, a.dtype)) for a in make_arrays(shapes, dtype, seed=7)]
        slots = [[np.zeros_like(a) for a in w] for _ in range(3 if amsgrad else 2)]
        tw, tslots = _tf_vars(w, dtype), [_tf_vars(x, dtype) for x in slots]
        for s in range(steps):
            before = [np.array(a, np.float64) for a in w]
            slots_before = [[np.array(a, np.float64) for a in x] for x in slots]
            K.apply_adam(w, grads_np[s], slots[0], slots[1], slots[2] if amsgrad else None,
                         lr=0.1, step=s + 1, decay=decay, kind="max", **kw)
            fused.apply_adam(tw, tslots[0], tslots[1], tslots[2] if amsgrad else [],
                             grads_tf[s], lr=0.1, beta_1=0.9, beta_2=0.999,
                             adam_epsilon=1e-7, step=s + 1, decay=tf.constant(decay, acc),
                             kind="max", mode="normalize", clipnorm=1.0, epsilon=1e-7)
            what = f"adam amsgrad={amsgrad} step {s + 1}"
            # the increment is a decay term plus an Adam term: both sizes count
            decay_terms = [b * d * 0.1 for b, d in zip(before, decay)]
            terms = [np.abs(d) + np.abs(np.asarray(t.numpy(), np.float64) - b + d)
                     for d, t, b in zip(decay_terms, tw, before)]
            _match_and_sync(w, tw, before, dtype, what + " w", terms)
            for name, ours, theirs, prev in zip(("m", "v", "vhat"), slots, tslots,
                                                slots_before):
                _match_and_sync(ours, theirs, prev, dtype, f"{what} {name}",
                                [np.abs(p) for p in prev])


def check_bitwise_repeatable(K, shapes, **kw):
    arrays = make_arrays(shapes, "float32")
    for kind in ("l2", "std"):
        first = np.asarray(K.norms(arrays, kind, 1e-7, **kw))
        np.testing.assert_array_equal(first, np.asarray(K.norms(arrays, kind, 1e-7, **kw)))


# ---- generic apply(rule, ...): every update rule ---------------------------
#
# check_rule runs any implementation with `apply(rule, weights, grads, slots,
# *, lr, step, hyper, decay, kind, mode, clipnorm, eps, **kw)` (slot-major
# slots[q][t]) against reference.rule_step: each step from the state the
# implementation stored (so 16-bit slots do not make the two drift apart),
# every weight and slot checked after every step.

from normopt.kernels import _updates  # noqa: E402 (no TensorFlow)

RULES = tuple(R.RULE_SLOTS)
MODES = ("normalize", "clip")
# Relative error allowed against the float64 reference, in units of the
# terms an element's update sums (the kernels compute in the accumulation
# type, float32 for 16/32-bit data), plus 1 ulp of the stored dtype (each
# stored value is rounded once).
RULE_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}
RULE_LR, RULE_WD = 0.0625, 0.0625


def rule_hyper(rule, step):
    """The test hyperparameters of `rule` at step t (nadam: u_product of t)."""
    hyper = R.RULE_HYPER[rule]
    if rule == "nadam":
        return hyper + (R.nadam_u_product(hyper[0], step),)
    return hyper


def initial_slots(rule, shapes, dtype, warm, seed):
    """The rule's slot lists (slot-major). Cold: Keras's initial values (zeros;
    adagrad's accumulator 0.1). Warm: a random state the rule can reach
    (second moments >= 0, velocity above average_gradient^2)."""
    rng = np.random.default_rng(seed)
    slots = []
    for name in R.RULE_SLOTS[rule]:
        arrays = []
        for shape in shapes:
            if not warm:
                x = np.full(shape, 0.1 if name == "accumulator" else 0.0)
            elif name in R.NONNEGATIVE_SLOTS:
                x = rng.uniform(1e-3, 0.05, shape)
            elif name == "average_gradient":
                x = rng.uniform(-0.02, 0.02, shape)
            else:
                x = rng.standard_normal(shape) * 0.05
            arrays.append(np.asarray(x).astype(np_dtype(dtype)))
        slots.append(arrays)
    return slots


def assert_step_close(got, want, terms, dtype, what, rtol=None):
    """|got - want| <= rtol * terms + 1 ulp(want in dtype), elementwise (a
    NaN anywhere fails)."""
    rtol = RULE_RTOL[dtype] if rtol is None else rtol
    got64 = np.asarray(got, np.float64)
    want64 = np.asarray(want, np.float64)
    assert got64.shape == want64.shape, (what, got64.shape, want64.shape)
    ulp = np.spacing(np.abs(want64).astype(np_dtype(dtype))).astype(np.float64)
    bound = rtol * terms + ulp
    bad = ~(np.abs(got64 - want64) <= bound)
    assert not bad.any(), (
        f"{what} {dtype}: got {got64[bad][:5].tolist()}, want {want64[bad][:5].tolist()} "
        f"(bound {np.broadcast_to(bound, got64.shape)[bad][:5].tolist()}, "
        f"{int(bad.sum())} of {bad.size} off)")


def _rule_decay(decay, count):
    if decay is True:
        return [RULE_WD if i % 2 == 0 else 0.0 for i in range(count)]
    return decay or None


# Rules whose state a zero gradient keeps (header_tables.RULES, checked
# against kZeroGradientKeepsState in csrc/normopt/update_rules.h): a sparse
# gradient's absent rows keep their slots exactly.
KEEPS_STATE_RULES = tuple(name for name, facts in header_tables.RULES.items()
                          if facts.zero_gradient_keeps_state)


def check_rule(K, rule, shapes, dtype, *, kind="l2", mode="normalize", decay=True, steps=3,
               warm=True, first_step=1, lr=RULE_LR, clipnorm=1.5, seed=0, sparse=None, **kw):
    """`steps` steps of K.apply(rule, ...) from step t = first_step, each
    against reference.rule_step from the state K stored; norms against
    reference.norm. decay: True (RULE_WD on every other tensor), None/False
    or what `apply` takes. sparse: {i: row indices} gives gradient i as
    those rows only (`sparse_gradients`), checked against the dense one.
    kw goes to K.apply (chunk_size, threads, ...)."""
    decay = _rule_decay(decay, len(shapes))
    wds = [0.0] * len(shapes) if decay is None else list(np.broadcast_to(decay, len(shapes)))
    weights = make_arrays(shapes, dtype, seed=seed + 1)
    slots = initial_slots(rule, shapes, dtype, warm, seed + 2)
    for step in range(first_step, first_step + steps):
        grads = make_arrays(shapes, dtype, seed=seed + 100 + step)
        given = grads
        if sparse:
            grads, given = sparse_gradients(grads, sparse)
        hyper = rule_hyper(rule, step)
        w0 = [np.array(w, np.float64) for w in weights]
        s0 = [[np.array(x, np.float64) for x in q] for q in slots]
        norms = K.apply(rule, weights, given, slots, lr=lr, step=step, hyper=hyper,
                        decay=decay, kind=kind, mode=mode, clipnorm=clipnorm, eps=1e-7, **kw)
        what = f"{rule} {kind} {mode} step {step}"
        assert np.asarray(norms).shape == (len(shapes),)
        assert_close(norms, [R.norm(g, kind) for g in grads], dtype, what + " norms")
        for i, g in enumerate(grads):
            gs = R.transform(g, kind, mode, clipnorm)
            want_w, want_s = R.rule_step(rule, w0[i], [q[i] for q in s0], gs, lr, step,
                                         hyper, wds[i])
            w_terms, s_terms = R.rule_terms(rule, w0[i], [q[i] for q in s0], gs, lr, step,
                                            hyper)
            assert weights[i].shape == shapes[i] and dtype_name(weights[i]) == dtype
            assert_step_close(weights[i], want_w,
                              2 * np.abs(w0[i]) + np.abs(want_w - w0[i]) + lr * np.abs(gs)
                              + w_terms, dtype, f"{what} w[{i}]")
            for name, q, before, want, extra in zip(R.RULE_SLOTS[rule], slots, s0, want_s,
                                                    s_terms):
                assert q[i].shape == shapes[i] and dtype_name(q[i]) == dtype
                assert_step_close(q[i], want,
                                  np.abs(before[i]) + np.abs(want - before[i]) + extra,
                                  dtype, f"{what} {name}[{i}]")
                if sparse and i in sparse and rule in KEEPS_STATE_RULES:
                    absent = np.setdiff1d(np.arange(shapes[i][0]), sparse[i])
                    np.testing.assert_array_equal(
                        np.asarray(q[i], np.float64)[absent], before[i][absent],
                        err_msg=f"{what} {name}[{i}]: absent rows must keep their slot")


def check_rule_against(K, other, rule, shapes, dtype, *, kind="l2", mode="normalize",
                       decay=True, steps=2, warm=True, lr=RULE_LR, clipnorm=1.5, seed=0,
                       kw=None, other_kw=None):
    """K.apply and other.apply, from the same state each step (other's
    results are copied into K's arrays after the comparison), agree within
    RULE_RTOL: both compute in the accumulation type, only the norms'
    summation order differs."""
    decay = _rule_decay(decay, len(shapes))
    weights = make_arrays(shapes, dtype, seed=seed + 1)
    slots = initial_slots(rule, shapes, dtype, warm, seed + 2)
    o_weights = [w.copy() for w in weights]
    o_slots = [[x.copy() for x in q] for q in slots]
    for step in range(1, steps + 1):
        grads = make_arrays(shapes, dtype, seed=seed + 100 + step)
        args = dict(lr=lr, step=step, hyper=rule_hyper(rule, step), decay=decay, kind=kind,
                    mode=mode, clipnorm=clipnorm, eps=1e-7)
        w0 = [np.array(w, np.float64) for w in weights]
        s0 = [[np.array(x, np.float64) for x in q] for q in slots]
        ours = K.apply(rule, weights, grads, slots, **args, **(kw or {}))
        theirs = other.apply(rule, o_weights, grads, o_slots, **args, **(other_kw or {}))
        what = f"{rule} {mode} step {step}"
        assert_close(ours, theirs, dtype, what + " norms")
        for i, g in enumerate(grads):
            gs = np.abs(R.transform(g, kind, mode, clipnorm))
            assert_step_close(weights[i], o_weights[i],
                              2 * np.abs(w0[i]) + np.abs(o_weights[i] - w0[i]) + lr * gs,
                              dtype, f"{what} w[{i}]")
            weights[i][...] = o_weights[i]
            for name, q, oq, before in zip(R.RULE_SLOTS[rule], slots, o_slots, s0):
                assert_step_close(q[i], oq[i], np.abs(before[i]) + np.abs(oq[i] - before[i]),
                                  dtype, f"{what} {name}[{i}]")
                q[i][...] = oq[i]


def check_rule_matches_tf_op(K, rule, dtype, shapes, steps=3, *, kind="l2", mode="normalize",
                             warm=True, lr=RULE_LR, clipnorm=1.5, **kw):
    """K.apply(rule, ...) against the compiled TF op's generic apply,
    normopt.ops.fused.apply(rule, variables, slots, grads, *, lr, step,
    hyper, decay, kind, mode, clipnorm, epsilon) (slots: slot-major lists of
    tf.Variables), step by step from the same state (MATCH_RTOL, as
    check_matches_tf_op), decay on every other tensor."""
    import tensorflow as tf

    from normopt.ops import fused, library

    status = library.status()
    assert status["loaded"], f"op library not loaded: {status['reason']}"
    acc = np.float64 if dtype == "float64" else np.float32
    decay = _rule_decay(True, len(shapes))
    w = make_arrays(shapes, dtype, seed=8)
    slots = initial_slots(rule, shapes, dtype, warm, 9)
    tw, tslots = _tf_vars(w, dtype), [_tf_vars(q, dtype) for q in slots]
    for step in range(1, steps + 1):
        grads = make_arrays(shapes, dtype, seed=40 + step)
        grads_tf = [tf.constant(np.asarray(a, np.float32) if dtype == "bfloat16" else a,
                                dtype=dtype) for a in grads]
        hyper = rule_hyper(rule, step)
        before = [np.array(a, np.float64) for a in w]
        slots_before = [[np.array(a, np.float64) for a in q] for q in slots]
        K.apply(rule, w, grads, slots, lr=lr, step=step, hyper=hyper, decay=decay, kind=kind,
                mode=mode, clipnorm=clipnorm, eps=1e-7, **kw)
        fused.apply(rule, tw, tslots, grads_tf, lr=lr, step=step, hyper=hyper,
                    decay=tf.constant(decay, acc), kind=kind, mode=mode, clipnorm=clipnorm,
                    epsilon=1e-7)
        what = f"{rule} step {step}"
        gs = [R.transform(g, kind, mode, clipnorm) for g in grads]
        extra = [R.rule_terms(rule, b, [q[i] for q in slots_before], g, lr, step, hyper)
                 for i, (b, g) in enumerate(zip(before, gs))]
        terms = [2 * np.abs(b) + lr * np.abs(g) + e[0] for b, g, e in zip(before, gs, extra)]
        _match_and_sync(w, tw, before, dtype, what + " w", terms)
        for q, (name, ours, theirs, prev) in enumerate(
                zip(R.RULE_SLOTS[rule], slots, tslots, slots_before)):
            _match_and_sync(ours, theirs, prev, dtype, f"{what} {name}",
                            [np.abs(p) + e[1][q] for p, e in zip(prev, extra)])


def check_apply_rejects(K, **kw):
    """Bad rule names, slot counts and shapes, hyper lengths and steps are
    ValueErrors naming the rule."""
    w = [np.ones(3, np.float32), np.ones((2, 2), np.float32)]
    g = [np.ones(3, np.float32), np.ones((2, 2), np.float32)]
    mv = [[np.zeros(3, np.float32), np.zeros((2, 2), np.float32)] for _ in range(2)]
    hyper = (0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="unknown update rule 'adamw'"):
        K.apply("adamw", w, g, mv, lr=0.1, hyper=hyper, **kw)
    with pytest.raises(ValueError, match="rule 'adam_amsgrad' takes 3 slot lists"):
        K.apply("adam_amsgrad", w, g, mv, lr=0.1, hyper=hyper, **kw)
    with pytest.raises(ValueError, match="rule 'sgd' takes 0 slot lists"):
        K.apply("sgd", w, g, mv[:1], lr=0.1, **kw)
    with pytest.raises(ValueError, match="rule 'lion' takes 1 slot lists"):
        K.apply("lion", w, g, mv[0], lr=0.1, hyper=(0.9, 0.99), **kw)  # not slot-major
    with pytest.raises(ValueError, match="rule 'lion': slot 'm' must be a list of arrays"):
        K.apply("lion", w[:1], g[:1], [mv[0][0]], lr=0.1, hyper=(0.9, 0.99), **kw)
    with pytest.raises(ValueError, match=r"rule 'adam': v\[1\] is float32\(2, 3\)"):
        K.apply("adam", w, g, [mv[0], [mv[1][0], np.zeros((2, 3), np.float32)]], lr=0.1,
                hyper=hyper, **kw)
    with pytest.raises(ValueError, match=r"rule 'adam': m\[0\] is float64"):
        K.apply("adam", w, g, [[np.zeros(3), mv[0][1]], mv[1]], lr=0.1, hyper=hyper, **kw)
    with pytest.raises(ValueError, match="rule 'adam': weights and m differ in length"):
        K.apply("adam", w, g, [mv[0][:1], mv[1]], lr=0.1, hyper=hyper, **kw)
    with pytest.raises(ValueError, match="rule 'adagrad': weights and grads differ"):
        K.apply("adagrad", w, g[:1], mv[:1], lr=0.1, hyper=(1e-7,), **kw)
    with pytest.raises(ValueError, match=r"rule 'nadam' takes 4 hyperparameters"):
        K.apply("nadam", w, g, mv, lr=0.1, hyper=hyper, **kw)
    with pytest.raises(ValueError, match=r"rule 'sgd_momentum' takes 1 hyperparameters"):
        K.apply("sgd_momentum", w, g, mv[:1], lr=0.1, **kw)
    for step in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rule 'adam': step must be an integer >= 1"):
            K.apply("adam", w, g, mv, lr=0.1, step=step, hyper=hyper, **kw)
    # nothing was written by the rejected calls
    assert all((a == 1).all() for a in w) and all((x == 0).all() for q in mv for x in q)


def rule_cases(dtypes=DTYPES):
    """(rule, dtype, mode, decay) params: every rule with every dtype by
    default, modes and decay alternating over those; the rest of the product
    is marked slow (--runslow)."""
    keep = {}
    for i, (rule, dtype) in enumerate(itertools.product(RULES, dtypes)):
        keep[(rule, dtype)] = (MODES[i % 2], bool((i // 2) % 2))
    return [pytest.param(rule, dtype, mode, decay,
                         marks=() if keep[(rule, dtype)] == (mode, decay) else (pytest.mark.slow,))
            for rule, dtype, mode, decay in itertools.product(RULES, dtypes, MODES, (False, True))]


# ---- _finalize against the NumPy reference and the header -----------------

def numpy_stats(x):
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    a = np.abs(x)
    return (x.size, a.sum(), (x * x).sum(), a.max(), a.min(), x.mean(),
            ((x - x.mean()) ** 2).sum())


@pytest.mark.parametrize("size", [0, 1, 2, 17])
def test_finalize_matches_reference(size):
    from normopt.kernels import _finalize as F

    x = np.random.default_rng(size).standard_normal(size)
    s = numpy_stats(x)
    for kind in KINDS:
        got = F.finalize_norm(F.kind_code(kind), s[0], s[1], s[2], s[3], s[4], s[6], 1e-7)
        np.testing.assert_allclose(got, R.norm(x, kind), rtol=1e-12, err_msg=kind)


def test_merge_in_chunks_equals_whole():
    from normopt.kernels import _finalize as F

    x = np.random.default_rng(3).standard_normal(50) + 3.0
    merged = numpy_stats(x[:0])
    for lo in range(0, 50, 7):
        merged = F.merge_stats(*merged, *numpy_stats(x[lo:lo + 7]))
    np.testing.assert_allclose(np.array(merged, np.float64), np.array(numpy_stats(x)), rtol=1e-12)


def test_finalize_matches_header():
    from normopt.kernels import _finalize as F

    rng = np.random.default_rng(4)
    cases = [numpy_stats(rng.standard_normal(n) * 3) for n in (0, 1, 5, 64)]
    queries, expected = [], []
    for s in cases:
        for kind in R.NORM_NAMES:
            code = F.kind_code(kind)
            for mode, clipnorm in (("normalize", 1.0), ("clip", 0.5), ("clip", 1e9)):
                mcode = F.mode_code(mode)
                queries.append(f"finalize {code} {mcode} {clipnorm!r} 1e-07 "
                               + " ".join(repr(float(v)) if i else str(v) for i, v in enumerate(s)))
                norm = F.finalize_norm(code, s[0], s[1], s[2], s[3], s[4], s[6], 1e-7)
                expected.append((norm, F.scale_from_norm(mcode, norm, clipnorm),
                                 F.stats_needed(code)))
    for line, (norm, scale, bits) in zip(run_probe(queries), expected):
        got_norm, got_scale, got_bits = line.split()
        np.testing.assert_allclose([float(got_norm), float(got_scale)], [norm, scale], rtol=1e-15)
        assert int(got_bits) == bits


def test_norm_names_match_header():
    """The functions the header generates from its norm table, compiled:
    kNumNormKinds, accepted_norm_names (the error text's list), and
    parse_norm_kind + stats_needed of every accepted name, against _finalize;
    unknown names are refused."""
    from normopt.kernels import _finalize as F

    names = F.accepted_names()
    unknown = ("l3", "precomputed", "LINF", "max ")
    lines = run_probe(["names"] + [f"parse {n}" for n in names + unknown[:3]])
    count, accepted = lines[0].split()
    assert int(count) == F.NUM_KINDS == len(F.NORMS)
    assert accepted.split(",") == list(names)
    for name, line in zip(names, lines[1:]):
        code = F.kind_code(name)
        assert line.split() == [str(code), str(F.stats_needed(code))], name
    assert lines[1 + len(names):] == ["unknown"] * 3
    for name in unknown:
        with pytest.raises(ValueError, match="unknown norm kind"):
            F.kind_code(name)


def test_merge_and_chunk_table_match_header():
    from normopt.kernels import _finalize as F
    from normopt.kernels.chunks import chunk_table

    rng = np.random.default_rng(5)
    pairs = [(numpy_stats(rng.standard_normal(a) + 1), numpy_stats(rng.standard_normal(b)))
             for a, b in ((0, 3), (4, 0), (5, 9), (1, 1))]
    # a NaN max/min on either side stays NaN (max_keep_nan / min_keep_nan)
    with np.errstate(invalid="ignore"):
        pairs += [(numpy_stats([1.0, np.nan]), numpy_stats([2.0, 3.0])),
                  (numpy_stats([2.0, 3.0]), numpy_stats([np.nan])),
                  (numpy_stats([np.inf, 1.0]), numpy_stats([-2.0]))]
    fmt = lambda s: " ".join(repr(float(v)) if i else str(v) for i, v in enumerate(s))  # noqa: E731
    sizes = [5, 0, 8, 9, 0, 1, 24]
    lines = run_probe([f"merge {fmt(a)} {fmt(b)}" for a, b in pairs]
                      + [f"chunks 8 {len(sizes)} " + " ".join(map(str, sizes))])
    for line, (a, b) in zip(lines, pairs):
        with np.errstate(invalid="ignore"):  # inf - inf in the inf case's mean
            want = np.array(F.merge_stats(*a, *b), np.float64)
        np.testing.assert_allclose([float(v) for v in line.split()], want, rtol=1e-15,
                                   equal_nan=True)
    for line, (a, b) in zip(lines[4:6], pairs[4:6]):
        assert all(np.isnan(float(v)) for v in line.split()[3:5]), line
    table = chunk_table(sizes, 8)
    first, tensor, start = ([int(v) for v in line.split()] for line in lines[-3:])
    assert first == table.first.tolist()
    assert tensor == table.tensor.tolist()
    assert start == table.start.tolist()


SPARSE_TABLE_CASE = (  # (dense shape, listed rows or None for a dense gradient)
    ((10, 3), [7, 2, 9, 0]),
    ((4, 3), None),
    ((0, 5), []),
    ((6, 5), []),
    ((10, 4), list(range(9, -1, -1))),
    ((7, 3), [6]),
    ((3,), [1]),
)


def test_sparse_chunk_table_layout_and_header():
    """chunks.sparse_chunk_table: the chunks of every tensor cover it once, in
    order, within the dense chunks; a chunk with a gradient offset lies in
    one listed row and holds its elements (the dense gradient rebuilt from
    the table equals the scattered rows); zeros counts the absent rows'
    elements; and chunk_table.h's build_sparse_chunk_table builds the same."""
    from normopt.kernels.chunks import chunk_table, sorted_rows, sparse_chunk_table

    rng = np.random.default_rng(3)
    sizes = [int(np.prod(shape)) for shape, _ in SPARSE_TABLE_CASE]
    sparse = {t: (int(np.prod(shape[1:])), rows)
              for t, (shape, rows) in enumerate(SPARSE_TABLE_CASE) if rows is not None}
    table = sparse_chunk_table(sizes, CHUNK, sparse)
    dense_table = chunk_table(sizes, CHUNK)
    probe_args = []
    for t, (shape, rows) in enumerate(SPARSE_TABLE_CASE):
        chunks = range(table.first[t], table.first[t + 1])
        assert all(table.tensor[c] == t for c in chunks)
        starts = [int(table.start[c]) for c in chunks]
        counts = [int(table.grad[2 * c + 1]) for c in chunks]
        assert starts == list(np.cumsum([0] + counts[:-1])) if counts else starts == []
        assert sum(counts) == sizes[t]
        assert all(0 < n <= CHUNK and s // CHUNK == (s + n - 1) // CHUNK
                   for s, n in zip(starts, counts))
        if rows is None:
            assert starts == [int(dense_table.start[c]) for c in range(
                dense_table.first[t], dense_table.first[t + 1])]
            assert [int(table.grad[2 * c]) for c in chunks] == starts
            assert table.zeros[t] == 0
            probe_args.append("0 0")
            continue
        width = int(np.prod(shape[1:]))
        values = rng.standard_normal((len(rows), width))
        want = np.zeros((shape[0], width))
        want[rows] = values
        rebuilt = np.full(sizes[t], np.nan)
        for c, s, n in zip(chunks, starts, counts):
            offset = int(table.grad[2 * c])
            if offset < 0:
                assert s // width not in rows and (s + n - 1) // width not in rows
                rebuilt[s:s + n] = 0.0
            else:
                assert s // width == (s + n - 1) // width, "a chunk spans two rows"
                rebuilt[s:s + n] = values.reshape(-1)[offset:offset + n]
        np.testing.assert_array_equal(rebuilt, want.reshape(-1))
        assert table.zeros[t] == (shape[0] - len(rows)) * width
        present, value_row = sorted_rows(rows, shape[0])
        probe_args.append(" ".join(map(str, [width, len(rows), *present, *value_row])))
    lines = run_probe([f"sparse_chunks {CHUNK} {len(sizes)} " + " ".join(map(str, sizes))
                       + " " + " ".join(probe_args)])
    first, tensor, start, grad, zeros = ([int(v) for v in line.split()] for line in lines)
    assert first == table.first.tolist()
    assert tensor == table.tensor.tolist()
    assert start == table.start.tolist()
    assert grad == table.grad.tolist()
    assert zeros == table.zeros.tolist()
    with pytest.raises(ValueError, match="twice"):
        sparse_chunk_table([12], CHUNK, {0: (3, [1, 2, 1])})
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sparse_chunk_table([12], CHUNK, {0: (3, [4])})


def test_chunk_table_layout():
    from normopt.kernels.chunks import chunk_table

    sizes = [0, 1, 8, 9, 0, 17]
    table = chunk_table(sizes, 8)
    # every element of every tensor is covered exactly once, chunks in order
    for t, n in enumerate(sizes):
        chunks = range(table.first[t], table.first[t + 1])
        assert all(table.tensor[c] == t for c in chunks)
        assert [table.start[c] for c in chunks] == list(range(0, n, 8))
    with pytest.raises(ValueError):
        chunk_table([1], 0)


# ---- Numba CPU kernels ----------------------------------------------------

@pytest.fixture(scope="module")
def K():
    from normopt.kernels import numba_cpu

    return numba_cpu


@pytest.mark.parametrize("shapes,dtype", covering(sorted(SHAPE_LISTS), DTYPES))
def test_cpu_norms(K, shapes, dtype):
    check_norms(K, SHAPE_LISTS[shapes], dtype, chunk_size=CHUNK)


def test_cpu_norms_many_tensors_default_chunk(K):
    check_norms(K, many_shapes(500, 40), "float32")
    check_norms(K, [(70000,), (0,), (65536,), (65537,)], "float32", kinds=("l2", "std", "min_max"))


@pytest.mark.parametrize("dtype,mode", covering(DTYPES, ["normalize", "clip"]))
def test_cpu_scale(K, dtype, mode):
    check_scale(K, SHAPE_LISTS["mixed"], dtype, mode, chunk_size=CHUNK)


@pytest.mark.parametrize("variant,dtype", covering(sorted(SGD_VARIANTS), DTYPES))
def test_cpu_sgd(K, variant, dtype):
    check_sgd(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=CHUNK)


@pytest.mark.parametrize("variant,dtype", covering(sorted(ADAM_VARIANTS), DTYPES[::-1]))
def test_cpu_adam(K, variant, dtype):
    check_adam(K, SHAPE_LISTS["chunk_edges"] + [()], dtype, variant, chunk_size=CHUNK)


def test_cpu_clip_and_other_norms_in_updates(K):
    check_sgd(K, SHAPE_LISTS["mixed"], "float64", "momentum", kind="std", mode="clip",
              chunk_size=CHUNK)
    check_adam(K, SHAPE_LISTS["mixed"], "float64", "adam", kind="l1_l2", mode="clip",
               chunk_size=CHUNK)


def test_cpu_bitwise_repeatable(K):
    check_bitwise_repeatable(K, many_shapes(100, 300), chunk_size=64)


def test_cpu_bad_input(K):
    with pytest.raises(ValueError, match="unknown norm kind"):
        K.norms([np.ones(3, np.float32)], "l3")
    with pytest.raises(ValueError, match="one dtype"):
        K.norms([np.ones(3, np.float32), np.ones(3)], "l2")
    with pytest.raises(ValueError, match="differ in length"):
        K.apply_sgd([np.ones(3)], [], lr=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_nan_propagates(K, dtype):
    check_nan_propagates(K, dtype, chunk_size=CHUNK)
    check_nan_propagates(K, dtype, big=70000)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cpu_momenta_with_zero_momentum(K, dtype):
    check_momenta_with_zero_momentum(K, dtype, chunk_size=CHUNK)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_updates_match_tf_op(K, dtype):
    check_matches_tf_op(K, dtype, SHAPE_LISTS["chunk_edges"] + [(), (300,)], chunk_size=CHUNK)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_cpu_norms_match_tf_op(K, dtype):
    """Numba CPU norms against the compiled TF op (and both against NumPy)."""
    import tensorflow as tf

    from normopt.ops import fused, library

    status = library.status()
    assert status["loaded"], f"op library not loaded: {status['reason']}"
    shapes = SHAPE_LISTS["mixed"] + many_shapes(30, 200)
    arrays = make_arrays(shapes, dtype)
    # bfloat16 goes through float32 (exact); the others pass as they are
    tensors = [tf.constant(np.asarray(a, np.float32) if dtype == "bfloat16" else a, dtype=dtype)
               for a in arrays]
    for kind in KINDS:
        ours = K.norms(arrays, kind, 1e-7)
        theirs = fused.norms(tensors, kind, 1e-7).numpy()
        assert_close(ours, theirs, dtype, f"{kind}: numba_cpu vs TF op")
        assert_close(theirs, [R.norm(a, kind) for a in arrays], dtype, f"{kind}: TF op")


# ---- Numba CPU: generic apply, every rule --------------------------------

RULE_SHAPES = SHAPE_LISTS["chunk_edges"] + [()]


@pytest.mark.parametrize("rule,dtype,mode,decay", rule_cases())
def test_cpu_rule(K, rule, dtype, mode, decay):
    check_rule(K, rule, RULE_SHAPES, dtype, mode=mode, decay=decay, chunk_size=CHUNK)


@pytest.mark.parametrize("rule,dtype", covering(list(RULES), DTYPES))
def test_cpu_rule_matches_tf_op(K, rule, dtype):
    """Numba CPU against the compiled op, step by step, every rule."""
    check_rule_matches_tf_op(K, rule, dtype, RULE_SHAPES, chunk_size=CHUNK)


@pytest.mark.parametrize("rule", RULES)
def test_cpu_rule_cold_start_other_norms(K, rule):
    """From Keras's initial slots, later steps (t = 5..7), std / l1_l2 norms,
    one decay for all tensors, default chunks, mixed shapes."""
    check_rule(K, rule, SHAPE_LISTS["mixed"], "float32", kind="std", mode="clip",
               warm=False, first_step=5, decay=0.03125, clipnorm=0.25)
    check_rule(K, rule, SHAPE_LISTS["mixed"] + [(300,)], "float64", kind="l1_l2",
               warm=False, decay=None, chunk_size=CHUNK)


def test_cpu_rule_many_tensors(K):
    for rule in ("adam_amsgrad", "rmsprop_centered_momentum", "nadam"):
        check_rule(K, rule, many_shapes(120, 40), "float32", steps=2, chunk_size=16)


# The two-phase rules (update_rules.h's trust-ratio rules), and tensors over
# several of the TF CPU op's chunks (16K elements) and of the GPU's (64K).
TRUST_RULES = tuple(r for r in RULES if _updates.RULES[r].trust_ratio)
TRUST_SHAPES = [(70000,), (16385,), (0,), (3, 5)]


@pytest.mark.parametrize("rule", TRUST_RULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_trust_ratio_rule_across_chunks(K, rule, dtype):
    """A tensor's sums gathered over several chunks: Numba CPU against the
    reference, then against the TF op, step by step (the max norm there: it
    rounds nowhere, so the two differ in the order of the trust sums only)."""
    check_rule(K, rule, TRUST_SHAPES, dtype, steps=2)
    check_rule_matches_tf_op(K, rule, dtype, TRUST_SHAPES, steps=2, kind="max")


def test_cpu_apply_rejects_bad_arguments(K):
    check_apply_rejects(K, chunk_size=CHUNK)


@pytest.mark.parametrize("code", [-1, len(set(r.code for r in _updates.RULES.values())), 99])
def test_rule_dispatchers_refuse_an_unknown_code(code):
    """The element dispatchers run the rule of a known code only: any other
    code is a ValueError (it once ran Ftrl), in plain Python as under
    @njit (numba_cpu's compiled dispatcher)."""
    from normopt.kernels import numba_cpu

    sc = (0.1,) * _updates.NUM_SCALARS
    element = _updates.rule_element(lambda f: f)
    with pytest.raises(ValueError, match="unknown update rule code"):
        element(code, 1.0, 0.5, 0.5, 0.5, 1.0, sc)
    for trust in _updates.trust_elements(lambda f: f):
        args = {"moments": (0.5, 0.5, 0.5, 1.0), "direction": (0.5, 0.5, 0.5),
                "ratio": (1.0, 1.0), "step": (1.0, 0.5, 0.5, 0.5, 1.0)}[trust.__name__]
        with pytest.raises(ValueError, match="unknown update rule code"):
            trust(code, *args, sc)
    with pytest.raises(ValueError, match="unknown update rule code"):
        numba_cpu._rule_element(code, 1.0, 0.5, 0.5, 0.5, 1.0, sc)


def test_cpu_wrappers_are_apply(K):
    """apply_sgd / apply_adam give apply's bits (rules sgd*, adam*)."""
    shapes = RULE_SHAPES
    for rule, call in (
        ("sgd", lambda w, g, s: K.apply_sgd(w, g, None, lr=0.125, decay=0.0625)),
        ("sgd_momentum", lambda w, g, s: K.apply_sgd(w, g, s[0], lr=0.125, momentum=0.875,
                                                     decay=0.0625)),
        ("sgd_nesterov", lambda w, g, s: K.apply_sgd(w, g, s[0], lr=0.125, momentum=0.875,
                                                     nesterov=True, decay=0.0625)),
        ("adam", lambda w, g, s: K.apply_adam(w, g, s[0], s[1], lr=0.125, step=3, beta_1=0.8,
                                              beta_2=0.99, adam_epsilon=1e-6, decay=0.0625)),
        ("adam_amsgrad", lambda w, g, s: K.apply_adam(w, g, *s, lr=0.125, step=3, beta_1=0.8,
                                                      beta_2=0.99, adam_epsilon=1e-6,
                                                      decay=0.0625)),
    ):
        hyper = {"sgd": (), "sgd_momentum": (0.875,), "sgd_nesterov": (0.875,)}.get(
            rule, (0.8, 0.99, 1e-6))
        grads = make_arrays(shapes, "float32", seed=50)
        a_w, b_w = make_arrays(shapes, "float32", seed=51), make_arrays(shapes, "float32", seed=51)
        a_s = initial_slots(rule, shapes, "float32", True, 52)
        b_s = initial_slots(rule, shapes, "float32", True, 52)
        call(a_w, grads, a_s)
        K.apply(rule, b_w, grads, b_s, lr=0.125, step=3 if rule.startswith("adam") else 1,
                hyper=hyper, decay=0.0625)
        for x, y in zip(a_w + sum(a_s, []), b_w + sum(b_s, [])):
            np.testing.assert_array_equal(x, y, rule)
        assert any((x != y).any() for x, y in zip(a_w, make_arrays(shapes, "float32", seed=51)))


def test_cpu_lion_sign_of_zero(K):
    """sign(0) = 0: a zero gradient on a zero momentum leaves w (decay aside)."""
    w = [np.array([1.0, -2.0, 0.5], np.float32), np.array([3.0, 4.0], np.float32)]
    m = [np.zeros(3, np.float32), np.array([0.5, -0.5], np.float32)]
    g = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
    K.apply("lion", w, g, [m], lr=0.25, hyper=(0.875, 0.99), decay=[0.0, 0.0])
    np.testing.assert_array_equal(w[0], [1.0, -2.0, 0.5])
    np.testing.assert_array_equal(w[1], [3.0 - 0.25, 4.0 + 0.25])
    np.testing.assert_array_equal(m[1], np.float32([0.5, -0.5]) * np.float32(0.99))


ELEMENT_RULES = sorted(name for name in dir(_updates) if name.endswith("_element")
                       and name not in ("decay_element", "rule_element"))


@pytest.mark.parametrize("family", ELEMENT_RULES)
def test_rules_compute_in_float32(family):
    """Every element rule, compiled on float32 arguments, has no float64
    value anywhere (a Python float literal would promote it)."""
    import inspect
    import io

    import numba

    from normopt.kernels import _updates as U

    fn = getattr(U, family)

    params = list(inspect.signature(fn).parameters)
    flags = {"use_momentum", "nesterov", "amsgrad", "centered"}
    args = [True if p in flags else np.float32(0.5 + 0.125 * i) for i, p in enumerate(params)]
    jitted = numba.njit(fn)
    jitted(*args)
    buf = io.StringIO()
    jitted.inspect_types(file=buf)
    text = buf.getvalue()
    assert "float32" in text and "float64" not in text, [
        line for line in text.splitlines() if "float64" in line][:5]
    decay = numba.njit(U.decay_element)
    decay(np.float32(1), np.float32(0.1), np.float32(0.1))
    buf = io.StringIO()
    decay.inspect_types(file=buf)
    assert "float64" not in buf.getvalue()


@pytest.mark.parametrize("acc", [np.float32, np.float64])
def test_step_scalars_follow_the_table(acc):
    """Each rule's step scalars, bit for bit, from the table: 1 - beta formed
    from the Python float (double) then cast for adam, rmsprop and adamax's
    beta_1, in the accumulation type A for nadam and lion, powers in A.
    Keras's default betas (not exact in float32) tell the two apart."""
    from normopt.kernels import _updates as U

    A = acc
    lr, t, b1, b2, eps, rho, mu = 0.01, 7, 0.9, 0.999, 1e-7, 0.9, 0.8
    one = A(1)
    up = R.nadam_u_product(b1, t)
    u_t = A(b1) * (one - A(0.5) * A(np.float32(0.96)) ** A(t))
    u_t1 = A(b1) * (one - A(0.5) * A(np.float32(0.96)) ** A(t + 1))
    want = {
        "sgd": [A(lr)],
        "sgd_momentum": [A(lr), A(mu)],
        "sgd_nesterov": [A(lr), A(mu)],
        "adam": [A(lr), A(lr) * np.sqrt(one - A(b2) ** A(t)) / (one - A(b1) ** A(t)),
                 A(1 - b1), A(1 - b2), A(eps)],
        "rmsprop": [A(lr), A(rho), A(1 - rho), A(eps), A(0)],
        "rmsprop_momentum": [A(lr), A(rho), A(1 - rho), A(eps), A(mu)],
        "adagrad": [A(lr), A(eps)],
        "adamax": [A(lr), A(1 - b1), A(b2), one - A(b1) ** A(t), A(eps)],
        "nadam": [A(lr), one - A(b1), one - A(b2), u_t1, one - A(up) * u_t1, one - u_t,
                  one - A(up), one - A(b2) ** A(t), A(eps)],
        "lion": [A(lr), A(b1), one - A(b1), A(b2), one - A(b2)],
    }
    want["adam_amsgrad"] = want["adam"]
    want["rmsprop_centered"] = want["rmsprop"]
    want["rmsprop_centered_momentum"] = want["rmsprop_momentum"]
    hyper = {"sgd": (), "sgd_momentum": (mu,), "sgd_nesterov": (mu,), "adagrad": (eps,),
             "nadam": (b1, b2, eps, up), "lion": (b1, b2)}
    # The rules whose scalars are easy to form wrongly (1 - beta in double or
    # in A); every rule's results are checked against reference.rule_step.
    assert set(want) <= set(U.RULES) == set(RULES)
    for rule, values in want.items():
        h = hyper.get(rule, (rho, eps, mu) if "momentum" in rule else (rho, eps)
                      if rule.startswith("rmsprop") else (b1, b2, eps))
        spec, scalars = U.step_scalars(rule, lr, t, h, A)
        assert len(scalars) == U.NUM_SCALARS and all(type(x) is A for x in scalars)
        sc = np.array(scalars, A)
        assert spec.name == rule and len(spec.hyper) == len(h)
        assert spec.slots == R.RULE_SLOTS[rule]
        np.testing.assert_array_equal(sc[:len(values)], np.array(values, A), rule)
        assert not sc[len(values):].any(), rule
    if A is np.float32:  # the test tells "in double" from "in A" apart
        assert np.float32(1 - b1) != one - np.float32(b1)
        assert np.float32(1 - b2) != one - np.float32(b2)


def test_cpu_norm_finish_compiles_without_type_safety_warnings(K, monkeypatch):
    """The per-tensor finish of the norms (what `normopt bench` runs) compiles
    without Numba's "unsafe cast from uint64 to int64" warning: it is compiled
    afresh here (Numba's on-disk cache would skip the compile, and its
    warnings with it) with every Numba type-safety warning an error."""
    import warnings

    import numba
    from numba.core.errors import NumbaTypeSafetyWarning

    monkeypatch.setattr(K, "_finish", numba.njit(parallel=True)(K._finish.py_func))
    arrays = make_arrays([(3 * CHUNK + 1,), (0,), (5,)], "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaTypeSafetyWarning)
        got = K.norms(arrays, "l2", 1e-7, chunk_size=CHUNK)
    assert_close(got, [R.norm(a, "l2") for a in arrays], "float32", "l2")
