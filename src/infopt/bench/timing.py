"""The one timing primitive: wall time of a call, synchronised with the device, repeated.

Every speed in infopt is timed here, so warm-up, device synchronisation and the statistics reported
(median, min, max of the repeats) are the same everywhere.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work (a CUDA call returns before its kernels finish)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    synchronize(device)
    t = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t


@dataclass
class Timing:
    """Seconds of each timed repeat."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)


def repeat(
    fn: Callable[[], Any], repeats: int, warmup: int = 0, device: torch.device | str | None = None
) -> Timing:
    """``warmup`` untimed calls, then ``repeats`` timed ones."""
    for _ in range(warmup):
        fn()
    return Timing([timed(fn, device)[1] for _ in range(repeats)])
