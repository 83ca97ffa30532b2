"""The interface every technique implements (light: no torch import, so configs compose fast).

A technique is a config dataclass (its schema), a class with ``check`` and ``apply``, and a name
in the registry (``infopt.techniques.registry``). ``apply`` takes the model under study and
returns what the run should evaluate and benchmark next.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from infopt.config.schema import TechniqueConfig

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

EXECUTION_KINDS = ("dense", "simulated", "real", "masked_dense", "sparse_kernel")


@dataclass
class Applied:
    """What a technique hands back to the run."""

    model: nn.Module
    # How the weights run: dense (unchanged kernels), simulated (rounded fp weights: quality only,
    # no size/speed claim), real (low-bit kernels), masked_dense (zeros on dense kernels),
    # sparse_kernel (semi-structured sparse kernels).
    execution: str = "dense"
    # Extra generate() kwargs the bench must decode with (static cache, assistant model, ...).
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    # Technique-specific numbers (acceptance rate, quantization wall time, sparsity, ...).
    metrics: dict[str, float] = field(default_factory=dict)
    # Plain statements the result must carry ("2:4 runs masked dense on CPU: no speedup expected").
    notes: list[str] = field(default_factory=list)
    # Files written (exported model, checkpoints), by kind.
    artifacts: dict[str, str] = field(default_factory=dict)
    # Per-stage records, for pipelines only (name, step, execution, eval, bench, ratios).
    stages: list[dict[str, Any]] = field(default_factory=list)
    # Named tables a technique measured (context-length sweeps, per-step acceptance, ...):
    # {"<name>": {"columns": [...], "rows": [[...], ...]}} -> results.json and the logger.
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The tokenizer to use from here on, if the technique changed it (rare).
    tokenizer: Any = None
    # The run's own eval + bench of exactly this model, when the technique already took it
    # (a pipeline measures its last stage): the run then does not measure the same model twice.
    measured: dict[str, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_KINDS:
            raise ValueError(f"Applied.execution={self.execution!r}; valid: {EXECUTION_KINDS}")


class Technique(ABC):
    """Subclass, implement ``apply`` (and ``check``); register in ``techniques/registry.py``."""

    def __init__(self, config: TechniqueConfig) -> None:
        self.config = config

    def check(self, cfg: InfoptConfig) -> None:  # noqa: B027 - optional hook
        """Cross-group validation that runs before the model loads. Raise ConfigError."""

    # Stage needs, read on the instance by ``Pipeline.check`` (a subclass may turn one into a
    # property of its config, e.g. keeps_float_weights = False only for real low-bit kernels).
    #: True when the technique needs calibration/training text from the data group.
    needs_data: ClassVar[bool] = False
    #: True when the result keeps float weights that later stages may modify.
    keeps_float_weights: ClassVar[bool] = True
    #: True when the technique modifies float weights (so it cannot follow real low-bit kernels).
    needs_float_weights: ClassVar[bool] = False

    @abstractmethod
    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        """Transform (or wrap) ``model``; may modify it in place and return it."""


def stage_record(
    step: int,
    name: str,
    applied: Applied,
    wall_s: float,
    result: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    *,
    index: int | None = None,
    method: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One stage as ``results.json``'s ``stages[]`` holds it (pipeline stages, and a technique's own
    sub-steps such as prune then recover). ``ratios.cumulative`` compares ``result`` with the untouched
    baseline, ``ratios.stage`` with the previous stage's measurement."""
    from infopt.results import compute_ratios

    return {
        "step": step,
        "index": step - 1 if index is None else index,
        "name": name,
        "method": method,
        "config": config,
        "execution": applied.execution,
        "wall_s": wall_s,
        "metrics": dict(applied.metrics),
        "notes": list(applied.notes),
        "result": result,
        "ratios": {
            "cumulative": compute_ratios(baseline, result) if baseline and result else {},
            "stage": compute_ratios(previous, result) if previous and result else {},
        },
    }
