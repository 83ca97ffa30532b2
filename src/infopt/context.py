"""What a technique may use while it runs: config, tokenizer, data, paths, logger, measurement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.data.text import TextData
    from infopt.tracking import RunLogger


@dataclass
class RunContext:
    cfg: InfoptConfig
    tokenizer: Any
    data: TextData
    output_dir: Path
    cache_dir: Path
    device: torch.device
    logger: RunLogger
    # measure(model, generate_kwargs) -> {"eval": {...}, "bench": {...}}: the run's own eval + bench,
    # for techniques that record intermediate states (pipelines, before/after recovery).
    measure: Callable[[nn.Module, dict[str, Any]], dict[str, dict[str, float]]] | None = None
    # The baseline measurement, when there is one (for per-stage ratios).
    baseline: dict[str, dict[str, float]] | None = None
    # The model as loaded, before any pipeline stage changed it (kept only for a stage that asks for it,
    # e.g. distill with teacher=original); None outside pipelines, where the incoming model is that model.
    original: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Checkpoints that this run's training stages resumed from (shared by pipeline stages' contexts):
    # results.json says the run was resumed (run.resumed_from).
    resumed_from: list[str] = field(default_factory=list)

    @classmethod
    def standalone(cls, overrides: list[str] | tuple[str, ...] = (), output_dir: Path | str | None = None,
                   cache_dir: Path | str | None = None) -> tuple[RunContext, nn.Module]:  # fmt: skip
        """(context, model) as ``run.py`` sets them up, for benchmarks, notebooks and scripts: the
        real config composed with ``overrides`` and validated, the model, tokenizer and data loaded the
        same way, ``measure`` the run's eval + bench; no baseline and no logger."""
        from infopt.composition import compose
        from infopt.experiment import JobInfo, context, load, prepare
        from infopt.tracking import RunLogger

        setup = prepare(compose(overrides, output_dir, cache_dir), JobInfo())
        loaded = load(setup)
        return context(setup, loaded, RunLogger(setup.obj.logger, setup.output_dir), baseline=None), loaded.model

    def subdir(self, name: str) -> Path:
        """A directory inside this run's output dir (checkpoints, exports)."""
        path = self.output_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path
