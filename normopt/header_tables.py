"""The tables the C++ headers define, held once for Python.

The headers in csrc/normopt/ and csrc/cuda/ are the one definition of the
built-in norms and of the fused update rules; this module is their Python
copy, with no dependency beyond the standard library, so that production
code (normopt.normalizations, normopt.ops) and the reference kernels
(normopt.kernels) read the same values. tests/test_header_tables.py reads
each table out of the header text and checks that these values equal it,
naming each mismatch.

    NORMS, ALIASES      NORMOPT_NORM_KINDS, NORMOPT_NORM_ALIASES
                        (csrc/normopt/norm_stats.h): (name, NormKind code,
                        statistics bits) in code order; alias -> name;
                        MATRIX_NORMS the rows marked STAT_MATRIX
    STAT_*              StatBits (norm_stats.h)
    DTYPE_CODES         NORMOPT_DTYPE_CODES (csrc/normopt/dtype_codes.h)
    DEFAULT_CHUNK_SIZE  kDefaultChunkElems (csrc/cuda/chunk_table.h)
    RULES               NORMOPT_UPDATE_RULES (csrc/normopt/update_rules.h):
                        one RuleFacts row per rule, whose trust_ratio is
                        NORMOPT_TRUST_RATIO_RULES (kTrustRatio) and whose
                        zero_gradient_keeps_state is
                        NORMOPT_ZERO_GRADIENT_RULES (kZeroGradientKeepsState)

A rule that keeps w and its slots for a zero gradient takes a sparse
gradient's rows alone (INDEXED_ROWS: the absent rows would not move); every
other rule runs on every row, zeros where the gradient has none (EVERY_ROW).
Keras's own update of a sparse gradient agrees (tests/test_keras_adapters.py).
"""

import collections

# StatBits.
STAT_SUM_ABS = 1
STAT_SUM_SQ = 2
STAT_MAX_ABS = 4
STAT_MIN_ABS = 8
STAT_MOMENTS = 16
# Not a statistic: a norm of the matrix view, measured by a matrix pass of
# its own (csrc/normopt/spectral.h); the row's other bits give its value for
# a tensor of at most one axis. Statistics-only consumers (the Numba and
# CuPy kernels, the GPU kernels) refuse such a norm (`MATRIX_NORMS`).
STAT_MATRIX = 32

# The statistics (NormStats fields) each bit stands for.
STAT_FIELDS = {
    STAT_SUM_ABS: ("sum_abs",),
    STAT_SUM_SQ: ("sum_sq",),
    STAT_MAX_ABS: ("max_abs",),
    STAT_MIN_ABS: ("min_abs",),
    STAT_MOMENTS: ("mean", "m2"),
    STAT_MATRIX: (),
}

# NORMOPT_NORM_KINDS: (name, NormKind code, statistics bits), in code order.
NORMS = (
    ("l1", 0, STAT_SUM_ABS),
    ("l2", 1, STAT_SUM_SQ),
    ("l1_l2", 2, STAT_SUM_ABS | STAT_SUM_SQ),
    ("avg_l1", 3, STAT_SUM_ABS),
    ("avg_l2", 4, STAT_SUM_SQ),
    ("avg_l1_l2", 5, STAT_SUM_ABS | STAT_SUM_SQ),
    ("max", 6, STAT_MAX_ABS),
    ("min_max", 7, STAT_MAX_ABS | STAT_MIN_ABS),
    ("std", 8, STAT_MOMENTS),
    ("spectral", 9, STAT_SUM_SQ | STAT_MATRIX),
)
# NORMOPT_NORM_ALIASES.
ALIASES = {"linf": "max"}

KIND_CODES = {name: code for name, code, _ in NORMS}
NORM_KINDS = tuple(KIND_CODES)
NUM_KINDS = len(NORMS)
# The norms of the matrix view (STAT_MATRIX) and those made of statistics.
MATRIX_NORMS = tuple(name for name, _, bits in NORMS if bits & STAT_MATRIX)
STATISTIC_NORMS = tuple(name for name, _, bits in NORMS if not bits & STAT_MATRIX)
# stats_needed by code (a tuple: Numba compiles the lookup as a constant).
STATS_BY_CODE = tuple(bits for _, _, bits in NORMS)
# The scale modes of tensor_scale (kNormalize, kClip).
MODE_CODES = {"normalize": 0, "clip": 1}

# NORMOPT_DTYPE_CODES: the launchers' element dtype codes.
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}

# kDefaultChunkElems: elements per full chunk of a GPU launch, the TF GPU
# op's and the default of the CuPy and Numba paths.
DEFAULT_CHUNK_SIZE = 65536


def accepted_names():
    """Every accepted norm name, in the header's order (`accepted_norm_names`:
    the rows in code order, each alias right after its row)."""
    out = []
    for name in NORM_KINDS:
        out.append(name)
        out.extend(alias for alias, target in ALIASES.items() if target == name)
    return tuple(out)


def kind_code(kind):
    """The NormKind code of a norm name (alias `linf` accepted)."""
    name = ALIASES.get(kind, kind)
    if name not in KIND_CODES:
        raise ValueError(
            f"unknown norm kind {kind!r}; expected one of {', '.join(accepted_names())}"
        )
    return KIND_CODES[name]


def statistic_kind_code(kind):
    """`kind_code` of a norm computed from statistics alone; a ValueError for
    a matrix norm (STAT_MATRIX), which a statistics kernel cannot measure."""
    code = kind_code(kind)
    if STATS_BY_CODE[code] & STAT_MATRIX:
        raise ValueError(
            f"norm kind {kind!r} is measured on the matrix view of a tensor, "
            "not from statistics: this kernel takes only "
            f"{', '.join(STATISTIC_NORMS)}"
        )
    return code


def mode_code(mode):
    """The code of scale mode `mode` ("normalize" or "clip")."""
    if mode not in MODE_CODES:
        raise ValueError(f"unknown mode {mode!r}; expected 'normalize' or 'clip'")
    return MODE_CODES[mode]


def stats_needed(kind):
    """Bit mask of the statistics norm `kind` (a code) reads: its row's bits
    (0 for a code outside the table, as the header's)."""
    if 0 <= kind < NUM_KINDS:
        return STATS_BY_CODE[kind]
    return 0


def stats_fields(name):
    """The NormStats fields norm `name` (alias accepted) reads, in field
    order (e.g. ("mean", "m2") for std)."""
    bits = STATS_BY_CODE[kind_code(name)]
    return tuple(f for bit, fields in STAT_FIELDS.items() if bits & bit for f in fields)


# ---- update rules ------------------------------------------------------------

# How a rule takes a sparse gradient (rows and their indices).
EVERY_ROW = "every_row"
INDEXED_ROWS = "indexed_rows"

RuleFacts = collections.namedtuple(
    "RuleFacts", "name slots hyper trust_ratio zero_gradient_keeps_state",
    defaults=(False, False))
RuleFacts.__doc__ = (
    "name: the op's `rule`; slots: slot names in order (kSlotNames); hyper: "
    "hyperparameter names after lr and t, in order (kHypers of them); "
    "trust_ratio: a two-phase rule (kTrustRatio); zero_gradient_keeps_state: "
    "w and every slot stay exactly as they are for a zero gradient "
    "(kZeroGradientKeepsState).")
RuleFacts.sparse = property(
    lambda self: INDEXED_ROWS if self.zero_gradient_keeps_state else EVERY_ROW,
    doc="INDEXED_ROWS or EVERY_ROW: the rows the rule updates for a sparse gradient.")

_ADAM_HYPER = ("beta_1", "beta_2", "epsilon")
_RMSPROP_HYPER = ("rho", "epsilon")
_FTRL = (("accumulator", "linear"), ("lr_power", "l1", "l2", "l2_shrinkage", "beta"))

# NORMOPT_UPDATE_RULES, in the header's order.
RULES = {r.name: r for r in (
    RuleFacts("sgd", (), (), zero_gradient_keeps_state=True),
    RuleFacts("sgd_momentum", ("momentum",), ("momentum",)),
    RuleFacts("sgd_nesterov", ("momentum",), ("momentum",)),
    RuleFacts("adam", ("m", "v"), _ADAM_HYPER),
    RuleFacts("adam_amsgrad", ("m", "v", "vhat"), _ADAM_HYPER),
    RuleFacts("rmsprop", ("velocity",), _RMSPROP_HYPER),
    RuleFacts("rmsprop_momentum", ("velocity", "momentum"), _RMSPROP_HYPER + ("momentum",)),
    RuleFacts("rmsprop_centered", ("velocity", "average_gradient"), _RMSPROP_HYPER),
    RuleFacts("rmsprop_centered_momentum", ("velocity", "average_gradient", "momentum"),
              _RMSPROP_HYPER + ("momentum",)),
    RuleFacts("adagrad", ("accumulator",), ("epsilon",), zero_gradient_keeps_state=True),
    RuleFacts("adamax", ("m", "u"), _ADAM_HYPER),
    RuleFacts("nadam", ("m", "v"), _ADAM_HYPER + ("u_product",)),
    RuleFacts("adadelta", ("accumulated_grad", "accumulated_delta_var"), _RMSPROP_HYPER),
    RuleFacts("ftrl", *_FTRL),
    RuleFacts("ftrl_sqrt", *_FTRL),  # lr_power -0.5, as a sqrt
    RuleFacts("lion", ("m",), ("beta_1", "beta_2")),
    RuleFacts("lamb", ("m", "v"), _ADAM_HYPER, trust_ratio=True),
    RuleFacts("schedule_free_adamw", ("momentum", "velocity"),
              _ADAM_HYPER + ("warmup_steps",)),
)}
RULE_NAMES = tuple(RULES)
