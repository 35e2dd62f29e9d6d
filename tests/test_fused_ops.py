"""The raw compiled ops (normopt.ops.raw_ops) against the NumPy float64 reference.

Every test here is about the compiled op and FAILS (does not skip) when the op
library is not loaded, with the loader's reason: CI builds it.

Tolerances: the norms of 16-bit gradients are accumulated in float32, so they
are held to the float32 tolerance against the float64 norm of the same
(rounded) inputs. Scaled gradients and updated variables are stored in the
gradient's dtype and are held to TOL[dtype] from helpers.py against the
reference rounded to that dtype (as stored) after each step.
"""

import numpy as np
import pytest
import tensorflow as tf

import reference as R
from helpers import BETA_1, BETA_2, MOMENTUM, TOL, WEIGHT_DECAY
from normopt.ops import library
from normopt.ops import raw_ops as fused

EPS = 1e-7
NORMS = list(R.NORM_NAMES) + ["linf"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# 0-D, empty, one element, odd 2-D, and one > 1M elements (many chunks).
SHAPES = [(), (0,), (1,), (7, 13), (1_048_583,)]
SMALL_SHAPES = [(), (0,), (1,), (7, 13), (3, 40_001)]


@pytest.fixture(autouse=True)
def require_library():
    status = library.status()
    if not status["loaded"]:
        pytest.fail(f"the op library is not loaded: {status['reason']}")


def acc_name(dtype):
    return "float64" if dtype == "float64" else "float32"


def rounded(arrays, dtype):
    """The arrays rounded to `dtype` (as TF holds them) and back to float64."""
    ts = [tf.constant(a, dtype=dtype) for a in arrays]
    return ts, [t.numpy().astype(np.float64) for t in ts]


def in_dtype(array, dtype):
    """A float64 reference result as stored in `dtype` (then float64)."""
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    with np.errstate(over="ignore"):  # overflow to inf, as the op does
        return np.asarray(array, np.float64).astype(np_dtype).astype(np.float64)


def store_state(ref, ref_w, i, dtype):
    """Rounds the reference's variable and slots to `dtype` after a step, as
    the variables hold them: Adam's v of a 16-bit variable lives in the
    subnormal range, so a float64-state reference drifts by more than TOL."""
    ref_w[i] = in_dtype(ref_w[i], dtype)
    for slots in (getattr(ref, name, {}) for name in ("m", "v", "vhat")):
        for key in slots:
            slots[key] = in_dtype(slots[key], dtype)


def random_arrays(shapes, seed, spread=True):
    rng = np.random.RandomState(seed)
    out = []
    for s in shapes:
        scale = 10.0 ** rng.uniform(-1.5, 1) if spread else 1.0
        # A non-zero mean makes std differ from the other norms.
        out.append(rng.standard_normal(s) * scale + 0.25 * scale)
    return out


# ---------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_norms(norm, dtype):
    grads, g64 = rounded(random_arrays(SHAPES, seed=len(norm)), dtype)
    got = fused.norms(grads, norm, EPS)
    assert got.dtype == acc_name(dtype)
    assert got.shape == (len(SHAPES),)
    expected = [R.norm(g, norm, EPS) for g in g64]
    np.testing.assert_allclose(got.numpy(), expected, **TOL[acc_name(dtype)])


@pytest.mark.parametrize("count", [1, 2, 9])
def test_norms_list_lengths(count):
    shapes = [(5 + 3 * i,) for i in range(count)]
    grads, g64 = rounded(random_arrays(shapes, seed=count), "float32")
    for norm in ("l2", "std"):
        got = fused.norms(grads, norm, EPS).numpy()
        np.testing.assert_allclose(
            got, [R.norm(g, norm, EPS) for g in g64], **TOL["float32"])


def test_norm_of_empty_and_zero_tensors_is_eps():
    grads = [tf.zeros([0]), tf.zeros([0, 4]), tf.zeros([3])]
    for norm in NORMS:
        np.testing.assert_array_equal(
            fused.norms(grads, norm, EPS).numpy(), np.float32([EPS] * 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_norms_propagate_nan(dtype):
    """A NaN anywhere (here in a later chunk) gives a NaN norm, as in NumPy
    and tf.reduce_max; an inf gives an infinite or NaN norm likewise."""
    big = np.ones(50_000)
    big[40_000] = np.nan
    with_inf = np.array([1.0, -np.inf, 2.0])
    grads, g64 = rounded([big, with_inf, np.ones(3)], dtype)
    for norm in NORMS:
        got = fused.norms(grads, norm, EPS).numpy()
        with np.errstate(invalid="ignore"):
            expected = [R.norm(g, norm, EPS) for g in g64]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), norm)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected), norm)
        np.testing.assert_allclose(got[2], expected[2], **TOL["float32"])


# ---------------------------------------------------------------- scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["normalize", "clip"])
@pytest.mark.parametrize("norm", ["l1", "l2", "avg_l1_l2", "max", "min_max", "std"])
def test_scale(norm, mode, dtype):
    clipnorm = 1.5
    grads, g64 = rounded(random_arrays(SMALL_SHAPES, seed=3), dtype)
    out = fused.scale(grads, norm, mode, clipnorm, EPS)
    assert len(out) == len(grads)
    for o, g in zip(out, g64):
        assert o.dtype == dtype and o.shape == g.shape
        # Rounded to the output dtype: g / eps overflows float16 for std
        # of one element (inf, as on every path).
        expected = in_dtype(R.transform(g, norm, mode, clipnorm, EPS), dtype)
        np.testing.assert_allclose(o.numpy().astype(np.float64), expected,
                                   **TOL[dtype])


def test_scale_clip_leaves_small_gradients_unchanged():
    small = np.float32([0.125, -0.25])  # l2 norm 0.28 < clipnorm
    large = np.float32([30.0, -40.0])   # l2 norm 50 >= clipnorm
    out = fused.scale([tf.constant(small), tf.constant(large)], "l2", "clip",
                      1.0, EPS)
    np.testing.assert_array_equal(out[0].numpy(), small)
    np.testing.assert_allclose(out[1].numpy(), large / (50 + EPS), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["normalize", "clip"])
def test_scale_precomputed_norms(mode, dtype):
    clipnorm = 2.0
    shapes = [(4,), (), (0,), (6, 5)]
    grads, g64 = rounded(random_arrays(shapes, seed=5), dtype)
    given = np.array([0.5, 3.0, 7.0, 2.0])  # clip: 0.5 below, 3.0 above, 2.0 at
    out = fused.scale(grads, "precomputed", mode, clipnorm, EPS,
                      norms=tf.constant(given, dtype=acc_name(dtype)))
    for o, g, n in zip(out, g64, given):
        expected = R.normalize(g, n) if mode == "normalize" else R.clip(g, n, clipnorm)
        np.testing.assert_allclose(o.numpy().astype(np.float64), expected,
                                   **TOL[dtype])


# ---------------------------------------------------------------- grad_norms
# The ops' second output: sqrt(sum g^2) of every gradient as given, whatever
# norm scales it, from the same reads. Shapes span one chunk (the statistics
# are gathered in the update pass) and several (gathered before it).
NORM_SHAPES = [(), (0,), (1,), (7, 13), (3, 11_000), (40_001,)]


def l2_reference(arrays):
    return [float(np.sqrt(np.sum(np.square(a)))) for a in arrays]


def l2_tolerance(dtype):
    return {"rtol": 1e-12} if dtype == "float64" else {"rtol": 2e-6}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["l2", "l1", "max", "std", "precomputed"])
def test_scale_outputs_grad_norms(kind, dtype):
    grads, g64 = rounded(random_arrays(NORM_SHAPES, seed=11), dtype)
    given = tf.constant(np.linspace(1, 2, len(grads)), dtype=acc_name(dtype))
    _, got = fused.scale_and_norms(grads, kind, "clip", 1.0, EPS,
                                   norms=given if kind == "precomputed" else None)
    assert got.dtype == acc_name(dtype) and got.shape == (len(grads),)
    np.testing.assert_allclose(got.numpy(), l2_reference(g64), **l2_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["l2", "avg_l1", "min_max", "precomputed"])
def test_apply_outputs_grad_norms(kind, dtype):
    grads, g64 = rounded(random_arrays(NORM_SHAPES, seed=12), dtype)
    variables = [tf.Variable(tf.zeros(g.shape, dtype)) for g in grads]
    given = tf.constant(np.linspace(1, 2, len(grads)), dtype=acc_name(dtype))
    got = fused.apply("sgd", variables, [], grads, lr=0.5, step=1.0, hyper=[],
                      decay=tf.zeros([len(grads)]), kind=kind, mode="normalize",
                      clipnorm=1.0, epsilon=EPS,
                      norms=given if kind == "precomputed" else None)
    assert got.dtype == acc_name(dtype) and got.shape == (len(grads),)
    np.testing.assert_allclose(got.numpy(), l2_reference(g64), **l2_tolerance(dtype))


@pytest.mark.parametrize("shape,value", [((40,), 3e37), ((3, 20_000), 1e36)])
def test_grad_norms_are_rescued_where_the_sum_of_squares_overflows(shape, value):
    """float32 sum g^2 is inf (one chunk, and several); the L2 norm itself is
    finite."""
    g = np.full(shape, value, np.float32)
    want = value * np.sqrt(g.size)
    _, got = fused.scale_and_norms([tf.constant(g)], "l1", "normalize", 1.0, EPS)
    np.testing.assert_allclose(got.numpy(), [want], rtol=1e-6)


# ---------------------------------------------------------------- apply

STEPS = 3
# One variable excluded from weight decay, as Keras excludes some (bias...).
APPLY_SHAPES = [(), (0,), (1,), (7, 13), (3, 11_000)]
DECAY = [WEIGHT_DECAY, WEIGHT_DECAY, 0.0, WEIGHT_DECAY, WEIGHT_DECAY]


def lr_at(step):
    """A schedule: a different learning rate every step."""
    return 0.0625 * (1.0 - 0.125 * step)


def make_variables(shapes, dtype, seed=11):
    _, init64 = rounded(random_arrays(shapes, seed, spread=False), dtype)
    return [tf.Variable(w.astype(np.float64), dtype=dtype) for w in init64], init64


def slots_like(variables):
    return [tf.Variable(tf.zeros_like(v)) for v in variables]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["normalize", "clip"])
@pytest.mark.parametrize("variant", ["sgd", "momentum", "nesterov"])
def test_apply_sgd(variant, mode, dtype):
    # std of one element is 0 (norm eps): normalize would overflow float16,
    # so std is checked in clip mode here (and with normalize in test_scale).
    norm, clipnorm = ("std", 1.0) if mode == "clip" else ("avg_l1", 1.0)
    momentum = 0.0 if variant == "sgd" else MOMENTUM
    variables, ref_w = make_variables(APPLY_SHAPES, dtype)
    momenta = slots_like(variables) if momentum else []
    refs = [R.SGD(None, momentum=momentum, nesterov=variant == "nesterov",
                  weight_decay=d) for d in DECAY]
    for step in range(STEPS):
        grads, g64 = rounded(random_arrays(APPLY_SHAPES, seed=step), dtype)
        lr = lr_at(step)
        fused.apply_sgd(
            variables, momenta, grads, lr=tf.constant(lr, tf.float64),
            momentum=momentum, nesterov=variant == "nesterov",
            decay=tf.constant(DECAY, acc_name(dtype)), kind=norm, mode=mode,
            clipnorm=clipnorm, epsilon=EPS)
        for i, g in enumerate(g64):
            g_ref = R.transform(g, norm, mode, clipnorm, EPS)
            ref_w[i] = refs[i].step(0, ref_w[i], g_ref, lr=lr)
            store_state(refs[i], ref_w, i, dtype)
    for v, r in zip(variables, ref_w):
        np.testing.assert_allclose(v.numpy().astype(np.float64), r, **TOL[dtype])
    if momentum:
        for m, ref in zip(momenta, refs):
            np.testing.assert_allclose(
                m.numpy().astype(np.float64),
                ref.m.get(0, np.zeros(m.shape)), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["normalize", "clip"])
@pytest.mark.parametrize("variant", ["adam", "amsgrad", "adamw"])
def test_apply_adam(variant, mode, dtype):
    norm, clipnorm = ("l1_l2", 2.0) if mode == "clip" else ("l2", 1.0)
    decay = DECAY if variant == "adamw" else [0.0] * len(APPLY_SHAPES)
    amsgrad = variant == "amsgrad"
    variables, ref_w = make_variables(APPLY_SHAPES, dtype)
    ms, vs = slots_like(variables), slots_like(variables)
    vhats = slots_like(variables) if amsgrad else []
    refs = [R.Adam(None, BETA_1, BETA_2, epsilon=1e-7, amsgrad=amsgrad,
                   weight_decay=d) for d in decay]
    for step in range(STEPS):
        grads, g64 = rounded(random_arrays(APPLY_SHAPES, seed=step), dtype)
        lr = lr_at(step)
        fused.apply_adam(
            variables, ms, vs, vhats, grads, lr=tf.constant(lr, tf.float64),
            beta_1=BETA_1, beta_2=BETA_2, adam_epsilon=1e-7,
            step=tf.constant(step + 1, tf.float64),
            decay=tf.constant(decay, acc_name(dtype)), kind=norm, mode=mode,
            clipnorm=clipnorm, epsilon=EPS)
        for i, g in enumerate(g64):
            g_ref = R.transform(g, norm, mode, clipnorm, EPS)
            ref_w[i] = refs[i].step(0, ref_w[i], g_ref, lr=lr)
            store_state(refs[i], ref_w, i, dtype)
    for v, r in zip(variables, ref_w):
        np.testing.assert_allclose(v.numpy().astype(np.float64), r, **TOL[dtype])
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(ms[i].numpy().astype(np.float64),
                                   ref.m.get(0, 0.0) + np.zeros(ms[i].shape),
                                   **TOL[dtype])
        np.testing.assert_allclose(vs[i].numpy().astype(np.float64),
                                   ref.v.get(0, 0.0) + np.zeros(vs[i].shape),
                                   **TOL[dtype])


def test_apply_adam_precomputed_norms_inside_tf_function():
    """kind='precomputed' (custom norms) traced once, lr/step as inputs."""
    shapes = [(5,), (2, 3)]
    variables, ref_w = make_variables(shapes, "float32")
    ms, vs = slots_like(variables), slots_like(variables)
    ref = R.Adam(None, BETA_1, BETA_2)
    traces = []

    @tf.function
    def step_fn(grads, norms, lr, t):
        traces.append(1)
        fused.apply_adam(variables, ms, vs, [], grads, lr=lr, beta_1=BETA_1,
                         beta_2=BETA_2, adam_epsilon=1e-7, step=t,
                         decay=tf.zeros([2]), kind="precomputed",
                         mode="normalize", clipnorm=1.0, epsilon=EPS,
                         norms=norms)

    for step in range(STEPS):
        grads, g64 = rounded(random_arrays(shapes, seed=step), "float32")
        given = np.array([1.0 + step, 0.5])
        lr = lr_at(step)
        step_fn(grads, tf.constant(given, tf.float32), tf.constant(lr, tf.float64),
                tf.constant(step + 1.0, tf.float64))
        for i, g in enumerate(g64):
            ref_w[i] = ref.step(i, ref_w[i], R.normalize(g, given[i]), lr=lr)
    assert len(traces) == 1
    for v, r in zip(variables, ref_w):
        np.testing.assert_allclose(v.numpy(), r, **TOL["float32"])


# ---------------------------------------------------------------- bad input

BAD = tf.errors.InvalidArgumentError


def f32(*shape):
    return tf.ones(shape, tf.float32)


def sgd_args(**over):
    v = [tf.Variable(f32(3)), tf.Variable(f32(2, 2))]
    args = dict(variables=v, momenta=[], grads=[f32(3), f32(2, 2)],
                lr=tf.constant(0.1, tf.float64), momentum=0.0, nesterov=False,
                decay=tf.zeros([2]), kind="l2", mode="normalize", clipnorm=1.0,
                epsilon=EPS)
    args.update(over)
    return args


def adam_args(**over):
    v = [tf.Variable(f32(3)), tf.Variable(f32(2, 2))]
    slots = lambda: [tf.Variable(tf.zeros_like(x)) for x in v]  # noqa: E731
    args = dict(variables=v, ms=slots(), vs=slots(), vhats=[],
                grads=[f32(3), f32(2, 2)], lr=tf.constant(0.1, tf.float64),
                beta_1=0.9, beta_2=0.999, adam_epsilon=1e-7,
                step=tf.constant(1.0, tf.float64), decay=tf.zeros([2]),
                kind="l2", mode="normalize", clipnorm=1.0, epsilon=EPS)
    args.update(over)
    return args


def call_sgd(**over):
    a = sgd_args(**over)
    fused.apply_sgd(a.pop("variables"), a.pop("momenta"), a.pop("grads"), **a)


def call_adam(**over):
    a = adam_args(**over)
    fused.apply_adam(a.pop("variables"), a.pop("ms"), a.pop("vs"),
                     a.pop("vhats"), a.pop("grads"), **a)


@pytest.mark.parametrize("case, match", [
    (lambda: fused.norms([f32(3)], "l3", EPS), "unknown norm kind 'l3'"),
    (lambda: fused.norms([f32(3)], "precomputed", EPS), "unknown norm kind"),
    (lambda: fused.library.load().normopt_norms(
        grads=[f32(3)], epsilon=tf.constant(EPS, tf.float64), kind="l2",
        Tacc=tf.float64), "Tacc must be float"),
    (lambda: fused.library.load().normopt_norms(
        grads=[f32(3)], epsilon=tf.constant([EPS], tf.float64), kind="l2",
        Tacc=tf.float32), "'epsilon' must be a scalar"),
])
def test_norms_bad_input(case, match):
    with pytest.raises(BAD, match=match):
        case()


def test_unknown_norm_error_lists_the_header_names():
    """The op's error text lists every accepted name from the header's table
    (normopt.kernels._finalize mirrors it; test_header_tables.py), each alias
    after its norm, plus "precomputed" where an op takes given norms."""
    import re

    from normopt.kernels import _finalize as F

    names = ", ".join(F.accepted_names())
    want = f"normopt: unknown norm kind 'l3'; expected one of {names}"
    with pytest.raises(BAD) as err:
        fused.norms([f32(3)], "l3", EPS)
    assert re.search(re.escape(want) + r"(?! or)", str(err.value)), str(err.value)
    with pytest.raises(BAD) as err:
        fused.scale([f32(3)], kind="l3", mode="normalize", clipnorm=1.0, epsilon=EPS)
    assert want + " or precomputed" in str(err.value), str(err.value)


@pytest.mark.parametrize("over, match", [
    (dict(kind="nope"), "unknown norm kind"),
    (dict(mode="squash"), "unknown scale mode"),
    (dict(mode="clip", clipnorm=-1.0), "clipnorm must be finite and >= 0"),
    (dict(mode="clip", clipnorm=float("inf")), "clipnorm must be finite"),
    (dict(mode="clip", clipnorm=float("nan")), "clipnorm must be finite"),
    (dict(kind="precomputed", norms=tf.ones([3])), r"'norms' must have shape \[2\]"),
    (dict(granularity="layer"), "unknown granularity 'layer'; expected tensor, unit or global"),
    (dict(excluded=[2]), "'excluded' holds 2, not the index of one of the 2 gradients"),
    (dict(kind="precomputed", norms=tf.ones([2]), granularity="unit"),
     "precomputed norms are per tensor"),
    (dict(mode="adaptive"), "unknown scale mode 'adaptive'"),
])
def test_scale_bad_input(over, match):
    args = dict(grads=[f32(3), f32(2)], kind="l2", mode="normalize",
                clipnorm=1.0, epsilon=EPS)
    args.update(over)
    with pytest.raises(BAD, match=match):
        fused.scale(**args)


@pytest.mark.parametrize("over, match", [
    (dict(variables=[tf.Variable(f32(3))]), "'var' must hold 2 variables"),
    (dict(grads=[f32(3), f32(4)]), r"var\[1\] has shape \[2,2\] but its gradient has shape \[4\]"),
    (dict(variables=[tf.Variable(tf.ones([3], tf.float64)), tf.Variable(f32(2, 2))]),
     r"var\[0\] has dtype double but the gradients are float"),
    (dict(momentum=0.9, momenta=[tf.Variable(f32(3))]),
     r"rule 'sgd_momentum' takes 1 slots per variable \(momentum\): 'slots' must hold 2 "
     "variables, got 1"),
    (dict(momentum=0.9, momenta=[tf.Variable(f32(3)), tf.Variable(f32(3))]),
     r"momentum\[1\] has shape \[3\]"),
    (dict(decay=tf.zeros([3])), r"'decay' must have shape \[2\]"),
    (dict(kind="precomputed", norms=tf.ones([1])), r"'norms' must have shape \[2\]"),
    (dict(kind="l7"), "unknown norm kind"),
    (dict(mode="clip", clipnorm=-0.5), "clipnorm must be finite and >= 0"),
    (dict(lr=tf.constant([0.1], tf.float64)), "'lr' must be a scalar"),
])
def test_apply_sgd_bad_input(over, match):
    with pytest.raises(BAD, match=match):
        call_sgd(**over)


def test_apply_sgd_momentum_without_slots():
    with pytest.raises(ValueError, match="momentum=0.9 needs one momentum slot"):
        call_sgd(momentum=0.9)


@pytest.mark.parametrize("over, match", [
    (dict(rule="adamw"), "unknown update rule 'adamw'; expected one of sgd, sgd_momentum, "
                         "sgd_nesterov, adam, adam_amsgrad, rmsprop"),
    (dict(hyper=[0.9, 0.999]), r"rule 'adam' takes 3 hyperparameters in 'hyper', got shape \[2\]"),
    (dict(mode="adaptive", clipnorm=0.0), r"the clip factor .* must be finite and > 0, got 0"),
    (dict(mode="adaptive", weight_eps=-1.0), "weight_eps must be >= 0"),
    (dict(mode="adaptive", kind="precomputed", norms=tf.ones([2])),
     "precomputed norms are per tensor"),
    (dict(excluded=[-1]), "'excluded' holds -1"),
])
def test_apply_bad_rule_input(over, match):
    a = adam_args()
    args = dict(rule="adam", variables=a["variables"], slots=[a["ms"], a["vs"]],
                grads=a["grads"], lr=a["lr"], step=a["step"], hyper=[0.9, 0.999, 1e-7],
                decay=a["decay"], kind="l2", mode="normalize", clipnorm=1.0, epsilon=EPS)
    args.update(over)
    with pytest.raises(BAD, match=match):
        fused.apply(args.pop("rule"), args.pop("variables"), args.pop("slots"),
                    args.pop("grads"), **args)


@pytest.mark.parametrize("over, match", [
    (dict(ms=[tf.Variable(f32(3))]), r"rule 'adam' takes 2 slots per variable \(m,v\): "
     "'slots' must hold 4 variables, got 3"),
    (dict(vs=[]), "'slots' must hold 4 variables, got 2"),
    (dict(vhats=[tf.Variable(f32(3))]), "rule 'adam_amsgrad' .* must hold 6 variables, got 5"),
    (dict(grads=[f32(3), f32(2, 3)]), r"var\[1\] has shape"),
    (dict(ms=[tf.Variable(f32(3)), tf.Variable(f32(4))]), r"m\[1\] has shape \[4\]"),
    (dict(vs=[tf.Variable(tf.ones([3], tf.float16)), tf.Variable(f32(2, 2))]),
     r"v\[0\] has dtype half"),
    (dict(step=tf.constant(0.0, tf.float64)), "step .* must be >= 1"),
    (dict(decay=tf.zeros([1])), r"'decay' must have shape \[2\]"),
    (dict(kind="precomputed", norms=tf.ones([5])), r"'norms' must have shape \[2\]"),
    (dict(kind="l7"), "unknown norm kind"),
    (dict(mode="clip", clipnorm=float("-inf")), "clipnorm must be finite"),
])
def test_apply_adam_bad_input(over, match):
    with pytest.raises(BAD, match=match):
        call_adam(**over)


def test_bad_input_leaves_variables_unchanged():
    variables = [tf.Variable(f32(3)), tf.Variable(f32(2, 2))]
    with pytest.raises(BAD):
        call_adam(variables=variables, decay=tf.zeros([1]))
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), np.ones(v.shape, np.float32))


# ---------------------------------------------------------------- loading


def test_disabled_by_environment(monkeypatch):
    import keras
    import normopt

    monkeypatch.setenv(library.DISABLE_ENV, "1")
    status = library.status()
    assert status["loaded"] is False and library.load() is None
    assert library.DISABLE_ENV in status["reason"]
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1))
    v = keras.Variable(np.ones(3, np.float32))
    opt.apply([tf.constant([3.0, 4.0, 0.0])], [v])
    assert opt.last_path.name == "tf"
    assert library.DISABLE_ENV in opt.last_path.reason
    np.testing.assert_allclose(v.numpy(), [1 - 0.1 * 0.6, 1 - 0.1 * 0.8, 1.0],
                               rtol=1e-6)
    monkeypatch.delenv(library.DISABLE_ENV)
    assert library.status()["loaded"] is True


def test_missing_library_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(library, "_HERE", str(tmp_path))
    monkeypatch.setattr(library, "_cache", {})
    assert library.load() is None
    status = library.status()
    assert status == {"loaded": False, "path": None, "reason": status["reason"]}
    assert "not built" in status["reason"] and str(tmp_path) in status["reason"]
    with pytest.raises(RuntimeError, match="not loaded"):
        fused.norms([f32(3)], "l2", EPS)


def test_broken_library_file_is_reported_not_raised(monkeypatch, tmp_path):
    (tmp_path / "_normopt_ops.so").write_bytes(b"not an ELF file")
    monkeypatch.setattr(library, "_HERE", str(tmp_path))
    monkeypatch.setattr(library, "_cache", {})
    assert library.load() is None
    status = library.status()
    assert status["loaded"] is False
    assert status["path"] == str(tmp_path / "_normopt_ops.so")
    assert "failed" in status["reason"]
