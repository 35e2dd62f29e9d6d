"""A norm per variable: `normalization_map={pattern: norm}`.

The matching rules are those of Keras's `OptimizerMap`
(keras/src/optimizers/multi_optimizer.py) on `variable.path`:

1. a key equal to the path wins;
2. else every key is a regular expression, matched with `re.fullmatch`;
   exactly one match gives its norm, more than one is a ValueError naming
   the variable and the patterns;
3. else the wrapper's `normalization`.

So "encoder/.*" names every variable under encoder/, while "encoder"
names only a variable whose path is exactly "encoder". The values are
built-in norm names (aliases accepted): a registered custom norm measures
whole tensors in Python and is taken only as the wrapper's
`normalization`.
"""

import re

from normopt import normalizations


def check_map(mapping, owner):
    """The map as a plain dict of str -> canonical built-in name (None for
    None), or a TypeError/ValueError naming what is wrong."""
    if mapping is None:
        return None
    if not isinstance(mapping, dict):
        raise TypeError(
            f"{owner}: `normalization_map` must be a dict {{pattern: norm}}, "
            f"got {type(mapping).__name__}: {mapping!r}."
        )
    out = {}
    for pattern, norm in mapping.items():
        if not isinstance(pattern, str):
            raise TypeError(
                f"{owner}: `normalization_map` keys must be strings (a "
                f"variable path or a regular expression), got {pattern!r}."
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"{owner}: `normalization_map` key {pattern!r} is not a "
                f"regular expression: {exc}."
            ) from None
        if not isinstance(norm, str) or not normalizations.is_builtin(norm):
            raise ValueError(
                f"{owner}: `normalization_map` maps {pattern!r} to {norm!r}, "
                "which is not a built-in normalization. Built-ins: "
                f"{', '.join(normalizations.BUILTIN_NORMALIZATIONS)}, "
                f"{', '.join(normalizations.ALIASES)} (a custom one is taken "
                "only as `normalization`)."
            )
        out[pattern] = norm
    return out


def norm_for(mapping, path, default):
    """The norm of the variable at `path`: the OptimizerMap rules (module
    docstring)."""
    if not mapping:
        return default
    if path in mapping:
        return mapping[path]
    matches = [pattern for pattern in mapping if re.fullmatch(pattern, path)]
    if len(matches) > 1:
        raise ValueError(
            f"The variable {path!r} matches more than one pattern of "
            f"`normalization_map`: {', '.join(map(repr, matches))}. Give it an "
            "exact entry, or make the patterns disjoint."
        )
    return mapping[matches[0]] if matches else default


def variable_path(variable):
    """A variable's path (Keras 3), else its name."""
    return getattr(variable, "path", None) or variable.name
