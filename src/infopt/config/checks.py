"""Small validators that produce one-line errors naming key, value and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infopt.errors import ConfigError


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}"
        )


def in_range(
    key: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Check lo <= value <= hi (or strict where *_open); None means unbounded."""
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
    if value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0")


def non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value!r} must be >= 0")
