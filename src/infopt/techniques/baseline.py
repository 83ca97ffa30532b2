"""The untouched model: the reference every other result is a ratio to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infopt.config.schema import TechniqueConfig
from infopt.techniques.base import Applied, Technique

if TYPE_CHECKING:
    from torch import nn

    from infopt.context import RunContext


@dataclass
class BaselineConfig(TechniqueConfig):
    name: str = "baseline"


class Baseline(Technique):
    """Returns the model unchanged (same dense kernels)."""


    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        return Applied(model=model, execution="dense")
