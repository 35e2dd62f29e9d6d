"""The Python copies of the C++ headers' tables equal the headers.

The headers define the built-in norms (NORMOPT_NORM_KINDS, NORMOPT_NORM_ALIASES
and StatBits in csrc/normopt/norm_stats.h), the launchers' dtype codes
(NORMOPT_DTYPE_CODES in csrc/normopt/dtype_codes.h), the GPU chunk size
(kDefaultChunkElems in csrc/cuda/chunk_table.h) and the trust-ratio update
rules (NORMOPT_UPDATE_RULES, NORMOPT_TRUST_RATIO_RULES and
NORMOPT_ZERO_GRADIENT_RULES in csrc/normopt/update_rules.h). Python holds them
once, in normopt/header_tables.py (no dependencies: production code and the
Numba kernels both read it); these tests read the tables out of the header
text and compare, naming each mismatch. (The compiled side of the same
tables: the header probe, here for the rules and in test_kernels_numba.py
for the norms.)
"""

import os
import re

import pytest

import reference as R
from helpers import run_probe
from normopt import header_tables as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def header(*parts):
    with open(os.path.join(ROOT, "csrc", *parts)) as f:
        return f.read()


def macro_body(text, name):
    """The replacement text of the multi-line `#define name(...)`."""
    m = re.search(rf"^#define {name}\(\w+\)(.*?)(?<!\\)$", text, re.M | re.S)
    assert m, f"#define {name}(...) not found"
    return m.group(1).replace("\\\n", "\n")


def rows(body, pattern, what):
    """Every X(...) / A(...) row of a table macro, parsed by `pattern`; a row
    the pattern does not parse fails rather than being skipped."""
    calls = re.findall(r"\b[XA]\(([^()]*)\)", body)
    parsed = [re.fullmatch(pattern, c.strip()) for c in calls]
    bad = [c for c, m in zip(calls, parsed) if m is None]
    assert not bad, f"{what}: rows not understood: {bad}"
    assert calls, f"{what}: no rows"
    return [m.groups() for m in parsed]


def int_expr(expr):
    """Value of an integer constant expression such as `int64_t{1} << 16` or
    `1u << 3`."""
    expr = re.sub(r"\bint64_t\{(\d+)\}", r"\1", expr)
    expr = re.sub(r"\b(\d+)[uU]?[lL]*\b", r"\1", expr)
    assert re.fullmatch(r"[\d\s<()+*|]+", expr), f"unexpected constant expression {expr!r}"
    return eval(expr, {"__builtins__": {}})  # digits and operators only (checked above)


def diff(what, header_value, python_value, other="Python"):
    """One line per key that differs between two dicts."""
    lines = []
    for key in sorted(set(header_value) | set(python_value), key=str):
        h, p = header_value.get(key, "<missing>"), python_value.get(key, "<missing>")
        if h != p:
            lines.append(f"{what} {key!r}: header {h!r}, {other} {p!r}")
    return lines


def stat_bits():
    """StatBits of norm_stats.h: enumerator -> value."""
    text = header("normopt", "norm_stats.h")
    enum = re.search(r"enum StatBits : unsigned \{(.*?)\};", text, re.S)
    assert enum, "enum StatBits not found in norm_stats.h"
    return {name: int_expr(value)
            for name, value in re.findall(r"(kStat\w+)\s*=\s*([^,]+),", enum.group(1))}


def norm_table():
    """NORMOPT_NORM_KINDS: [(enumerator, code, name, stats bits)] in row order."""
    bits = stat_bits()
    body = macro_body(header("normopt", "norm_stats.h"), "NORMOPT_NORM_KINDS")
    out = []
    for enumerator, code, name, stats in rows(
            body, r'(k\w+),\s*(\d+),\s*"(\w+)",\s*([\w\s|]+)', "NORMOPT_NORM_KINDS"):
        unknown = [b.strip() for b in stats.split("|") if b.strip() not in bits]
        assert not unknown, f"norm {name!r}: unknown statistics {unknown}"
        value = 0
        for b in stats.split("|"):
            value |= bits[b.strip()]
        out.append((enumerator, int(code), name, value))
    return out


def norm_aliases():
    """NORMOPT_NORM_ALIASES as {alias: name of its row}."""
    names = {enumerator: name for enumerator, _, name, _ in norm_table()}
    body = macro_body(header("normopt", "norm_stats.h"), "NORMOPT_NORM_ALIASES")
    out = {}
    for alias, enumerator in rows(body, r'"(\w+)",\s*(k\w+)', "NORMOPT_NORM_ALIASES"):
        assert enumerator in names, f"alias {alias!r} of unknown row {enumerator}"
        out[alias] = names[enumerator]
    return out


def test_stat_bits_match_header():
    python = {name: getattr(F, name) for name in dir(F) if name.startswith("STAT_")
              and isinstance(getattr(F, name), int)}
    header_bits = {"STAT_" + re.sub(r"(?<!^)(?=[A-Z])", "_", k[len("kStat"):]).upper(): v
                   for k, v in stat_bits().items()}
    assert not diff("statistic", header_bits, python), diff("statistic", header_bits, python)
    assert sorted(F.STAT_FIELDS) == sorted(header_bits.values())


def test_norm_table_matches_header():
    table = norm_table()
    assert [code for _, code, _, _ in table] == list(range(len(table))), \
        "NORMOPT_NORM_KINDS codes are not 0, 1, ... in row order"
    header_rows = {name: (code, bits) for _, code, name, bits in table}
    python_rows = {name: (code, bits) for name, code, bits in F.NORMS}
    problems = diff("norm (code, stats bits)", header_rows, python_rows)
    assert not problems, "\n".join(problems)
    assert [name for _, _, name, _ in table] == list(F.NORM_KINDS), "norms in another order"
    problems = diff("alias", norm_aliases(), F.ALIASES)
    assert not problems, "\n".join(problems)
    # what the rest of Python reads from the table
    assert F.KIND_CODES == {name: code for _, code, name, _ in table}
    assert F.NUM_KINDS == len(table)
    for _, code, name, bits in table:
        assert F.stats_needed(code) == bits, name
    assert F.stats_needed(len(table)) == 0 and F.stats_needed(-1) == 0


def test_reference_covers_every_header_norm():
    """tests/reference.py spells out one formula per built-in: exactly the
    header's norms and aliases (a new norm needs its reference formula): the
    statistics norms in NORM_NAMES, the rows marked kStatMatrix in
    MATRIX_NORM_NAMES."""
    table = norm_table()
    header_names = [name for _, _, name, _ in table]
    known = set(R.NORM_NAMES) | set(R.MATRIX_NORM_NAMES)
    missing = sorted(set(header_names) - known)
    extra = sorted(known - set(header_names))
    matrix_bit = stat_bits()["kStatMatrix"]
    assert {name for _, _, name, bits in table if bits & matrix_bit} == set(R.MATRIX_NORM_NAMES)
    assert F.MATRIX_NORMS == R.MATRIX_NORM_NAMES
    assert F.STATISTIC_NORMS == R.NORM_NAMES
    assert not missing and not extra, (f"reference formulas missing for {missing}, "
                                       f"not in the header: {extra}")
    problems = diff("alias", norm_aliases(), R.ALIASES, "tests/reference.py")
    assert not problems, "\n".join(problems)


def test_dtype_codes_match_header():
    body = macro_body(header("normopt", "dtype_codes.h"), "NORMOPT_DTYPE_CODES")
    table = rows(body, r'(k\w+),\s*(\d+),\s*"(\w+)"', "NORMOPT_DTYPE_CODES")
    header_codes = {name: int(code) for _, code, name in table}
    assert [int(code) for _, code, _ in table] == list(range(len(table)))
    problems = diff("dtype code", header_codes, F.DTYPE_CODES)
    assert not problems, "\n".join(problems)


def test_dtype_codes_used_everywhere():
    """The Python users of the dtype codes hold the one table, not a copy."""
    from normopt.kernels import _args, cupy_kernels

    assert cupy_kernels.DTYPE_CODE is F.DTYPE_CODES
    assert _args.SUPPORTED == tuple(F.DTYPE_CODES)
    assert set(cupy_kernels.SUFFIX) == set(F.DTYPE_CODES)


def test_chunk_size_matches_header():
    text = header("cuda", "chunk_table.h")
    m = re.search(r"constexpr int64_t kDefaultChunkElems\s*=\s*([^;]+);", text)
    assert m, "kDefaultChunkElems not found in csrc/cuda/chunk_table.h"
    assert int_expr(m.group(1)) == F.DEFAULT_CHUNK_SIZE, (
        f"GPU chunk size: header {m.group(1).strip()} = {int_expr(m.group(1))}, "
        f"Python DEFAULT_CHUNK_SIZE {F.DEFAULT_CHUNK_SIZE}")
    from normopt.kernels import chunks

    assert chunks.DEFAULT_CHUNK_SIZE is F.DEFAULT_CHUNK_SIZE
    gpu = header("ops", "launch_tables_gpu.h")
    assert re.search(r"kGpuChunkElems\s*=\s*cuda::kDefaultChunkElems;", gpu), \
        "launch_tables_gpu.h must take its chunk size from chunk_table.h"


def test_trust_ratio_rules_match_header():
    """The two-phase rules: NORMOPT_TRUST_RATIO_RULES (which the compiler holds
    to the rules' kTrustRatio), as the CuPy front end reads it, and the Numba
    reference's Rule.trust_ratio."""
    from normopt.kernels import _updates, cupy_kernels

    text = header("normopt", "update_rules.h")
    table = [name for (name,) in rows(macro_body(text, "NORMOPT_UPDATE_RULES"),
                                      r"(\w+),\s*\w+", "NORMOPT_UPDATE_RULES")]
    m = re.search(r"^#define NORMOPT_TRUST_RATIO_RULES\(X\)(.*)$", text, re.M)
    assert m, "#define NORMOPT_TRUST_RATIO_RULES(X) not found"
    listed = re.findall(r"\bX\((\w+)\)", m.group(1))
    assert set(listed) <= set(table), f"not rules of the table: {set(listed) - set(table)}"
    assert cupy_kernels.trust_ratio_rules(os.path.join(ROOT, "csrc")) == tuple(listed)
    python = sorted(name for name, rule in _updates.RULES.items() if rule.trust_ratio)
    assert python == sorted(listed), f"header {sorted(listed)}, _updates {python}"


@pytest.mark.parametrize("pattern, where", [
    (r"\bcase\s+\d+\s*:", ("cuda", "entry_table.cuh")),
    (r"dtype\s*==\s*\d", ("cuda", "launchers.cu")),
    (r"\bcase\s+\d+\s*:", ("cuda", "norm_kernels.cuh")),
    (r"LauncherDtype<[\w:]+>\(\)\s*\{\s*return\s+\d", ("ops", "launch_tables_gpu.h")),
])
def test_no_literal_dtype_codes(pattern, where):
    """The C++ users of the dtype codes name them (dtype_codes.h)."""
    found = re.findall(pattern, header(*where))
    assert not found, f"{'/'.join(where)}: literal dtype codes {found}"


def test_kernels_read_the_one_table():
    """The Numba transcription and the production norm registry hold the
    header_tables objects, not copies."""
    from normopt import normalizations
    from normopt.kernels import _finalize

    for name in ("NORMS", "ALIASES", "KIND_CODES", "NORM_KINDS", "STATS_BY_CODE", "STAT_FIELDS",
                 "DTYPE_CODES", "DEFAULT_CHUNK_SIZE", "MODE_CODES"):
        assert getattr(_finalize, name) is getattr(F, name), name
    assert normalizations.BUILTIN_NORMALIZATIONS is F.NORM_KINDS
    assert normalizations.ALIASES is F.ALIASES


def listed_rules(text, macro):
    """The X(name) rows of the one-line `#define macro(X) X(a) X(b)...`."""
    m = re.search(rf"^#define {macro}\(X\)(.*)$", text, re.M)
    assert m, f"#define {macro}(X) not found"
    return re.findall(r"\bX\((\w+)\)", m.group(1))


def test_rule_table_matches_header():
    """header_tables.RULES: the header's rules in its order, each row's
    trust_ratio and zero_gradient_keeps_state as the header's lists name
    them (static_asserts hold those lists to kTrustRatio and
    kZeroGradientKeepsState)."""
    text = header("normopt", "update_rules.h")
    table = [name for (name,) in rows(macro_body(text, "NORMOPT_UPDATE_RULES"),
                                      r"(\w+),\s*\w+", "NORMOPT_UPDATE_RULES")]
    assert list(F.RULES) == table
    for flag, macro in (("trust_ratio", "NORMOPT_TRUST_RATIO_RULES"),
                        ("zero_gradient_keeps_state", "NORMOPT_ZERO_GRADIENT_RULES")):
        listed = listed_rules(text, macro)
        assert set(listed) <= set(table), f"{macro}: not rules of the table"
        python = [name for name, facts in F.RULES.items() if getattr(facts, flag)]
        assert sorted(python) == sorted(listed), f"{flag}: header {listed}, Python {python}"


def test_rule_table_matches_compiled_header():
    """The compiled rules (header probe `rules`): slot names (kSlotNames),
    hyperparameter counts (kHypers), kTrustRatio and kZeroGradientKeepsState
    of every row against header_tables.RULES."""
    compiled = {}
    for line in run_probe(["rules"]):
        name, slots, hypers, trust, keeps = line.split()
        compiled[name] = (tuple(slots.split(",")) if slots != "-" else (), int(hypers),
                          trust == "1", keeps == "1")
    python = {name: (f.slots, len(f.hyper), f.trust_ratio, f.zero_gradient_keeps_state)
              for name, f in F.RULES.items()}
    problems = diff("rule (slots, hypers, trust ratio, zero gradient keeps state)",
                    compiled, python)
    assert not problems, "\n".join(problems)


def test_zero_gradient_facts_read_the_table():
    """Whether a zero gradient keeps a rule's state is stated once (the
    header, copied in header_tables.RULES): the reference kernels' rules, the fused path's
    sparse handling and the sparse tests read it there."""
    from normopt.kernels import _updates
    from normopt.ops import keras_adapters

    for name, facts in F.RULES.items():
        want = F.INDEXED_ROWS if facts.zero_gradient_keeps_state else F.EVERY_ROW
        assert keras_adapters.INDEXED_SLICES[name] == want, name
        assert keras_adapters.sparse_gradients(name) == want, name
    assert set(keras_adapters.INDEXED_SLICES) == set(F.RULES)
    assert keras_adapters.EVERY_ROW is F.EVERY_ROW
    assert keras_adapters.INDEXED_ROWS is F.INDEXED_ROWS
    for name, rule in _updates.RULES.items():
        facts = F.RULES[name]
        assert (rule.slots, rule.hyper, rule.trust_ratio) == (
            facts.slots, facts.hyper, facts.trust_ratio), name
    assert set(_updates.RULES) == set(F.RULES)
