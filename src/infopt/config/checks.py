"""Small validators that produce one-line errors naming key, value and what is allowed.

Every comparison is False for NaN, so each range check first asks for a finite number
(``finite``); ``finite_tree`` applies the same to every float of a validated config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from infopt.errors import ConfigError


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}"
        )


def finite(key: str, value: Any) -> None:
    """NaN and +-inf are no setting's legitimate value (NaN passes every comparison)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not a finite number")


def finite_tree(key: str, node: Any) -> None:
    """``finite`` on every float in a config tree (dataclasses, dicts, lists), keys named in full."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            finite_tree(f"{key}.{f.name}" if key else f.name, getattr(node, f.name))
    elif isinstance(node, dict):
        for k, v in node.items():
            finite_tree(f"{key}.{k}" if key else str(k), v)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            finite_tree(f"{key}[{i}]", v)
    else:
        finite(key, node)


def in_range(
    key: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Check lo <= value <= hi (or strict where *_open); None means unbounded (but finite)."""
    finite(key, value)
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {left}{lo_s}, {hi_s}{right}")


def positive(key: str, value: float) -> None:
    finite(key, value)
    if value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0")


def non_negative(key: str, value: float) -> None:
    finite(key, value)
    if value < 0:
        raise ConfigError(f"{key}={value!r} must be >= 0")
