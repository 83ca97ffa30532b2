"""``technique=pipeline``: several techniques applied in order to the same model.

Each stage is evaluated and benchmarked with the run's own measurement (``ctx.measure``), and the
record states, for every stage, its ratios against the untouched baseline (cumulative) and against
the previous stage (what this stage alone did). Stage needs are checked before the model loads:
a stage that needs training text with no training documents, or a stage that modifies float
weights after a stage that left real low-bit kernels, is rejected when the config is composed.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING

from infopt.errors import ConfigError
from infopt.results import flatten
from infopt.techniques.base import Applied, Technique, stage_record
from infopt.techniques.pipeline_config import PipelineConfig

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import DataConfig, InfoptConfig, TechniqueConfig
    from infopt.context import RunContext

# When stages run on different kernels, the result may only claim what the weakest stage allows:
# one simulated stage (rounded float weights) means no size/speed claim for the whole pipeline.
_EXECUTION_PRECEDENCE = ("simulated", "masked_dense", "sparse_kernel", "real", "dense")


def has_training_documents(data: DataConfig) -> bool | None:
    """False when the data config leaves no training documents (knowable before loading), else None."""
    if data.max_docs is not None and data.max_docs <= data.heldout_docs + data.calibration_docs:
        return False
    return None


def combined_execution(kinds: list[str]) -> str:
    for kind in _EXECUTION_PRECEDENCE:
        if kind in kinds:
            return kind
    return "dense"


class Pipeline(Technique):
    """Applies ``technique.stages`` in order (or reversed with ``technique.reverse=true``)."""

    config: PipelineConfig

    def _stages(self) -> list[tuple[int, TechniqueConfig, Technique]]:
        from infopt.techniques.registry import build

        out = []
        for index, stage_cfg in self.config.stage_configs():
            try:
                technique = build(stage_cfg)
            except ConfigError as err:
                raise ConfigError(f"technique.stages[{index}]: {err}") from None
            except Exception as err:  # an import error in a technique module: name the stage
                raise type(err)(f"technique.stages[{index}]: {err}") from None
            out.append((index, stage_cfg, technique))
        return out

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return any(t.needs_data for _, _, t in self._stages())

    @property
    def keeps_float_weights(self) -> bool:  # type: ignore[override]
        return all(t.keeps_float_weights for _, _, t in self._stages())

    def check(self, cfg: InfoptConfig) -> None:
        stages = self._stages()
        frozen_by: str | None = None  # the stage after which weights are no longer float
        for step, (index, stage_cfg, technique) in enumerate(stages):
            where = f"technique.stages[{index}] ({stage_cfg.name}, applied as step {step + 1} of {len(stages)})"
            if stage_cfg.export != "none" or stage_cfg.save_model:
                raise ConfigError(
                    f"{where}: export/save_model are set on the pipeline (technique.export), not on a stage"
                )
            if technique.needs_data and has_training_documents(cfg.data) is False:
                raise ConfigError(
                    f"{where} needs training/calibration text but data.max_docs={cfg.data.max_docs} leaves no "
                    f"training documents after data.heldout_docs={cfg.data.heldout_docs} and "
                    f"data.calibration_docs={cfg.data.calibration_docs}; raise data.max_docs or drop the stage"
                )
            if technique.needs_float_weights and frozen_by is not None:
                raise ConfigError(
                    f"{where} modifies float weights, but {frozen_by} leaves real low-bit kernels; "
                    "put it before that stage or give that stage a simulated execution"
                )
            if not technique.keeps_float_weights and frozen_by is None:
                frozen_by = f"technique.stages[{index}] ({stage_cfg.name})"
            # The stage's own cross-group checks, seeing itself as the run's technique.
            try:
                technique.check(dataclasses.replace(cfg, technique=stage_cfg))
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        stages = self._stages()
        if any(getattr(t, "needs_original_model", False) for _, _, t in stages):
            ctx = dataclasses.replace(ctx, original=copy.deepcopy(model).eval())  # the model before stage 1
        out = Applied(model=model, stages=[])
        executions: list[str] = []
        previous, measurement = ctx.baseline, None
        for step, (index, stage_cfg, technique) in enumerate(stages):
            stage_ctx = dataclasses.replace(
                ctx, cfg=dataclasses.replace(ctx.cfg, technique=stage_cfg),
                output_dir=ctx.subdir(f"stages/{step + 1}_{stage_cfg.name}"),
            )  # fmt: skip
            t = time.perf_counter()
            applied = technique.apply(out.model, stage_ctx)
            wall_s = time.perf_counter() - t
            out.model = applied.model
            out.generate_kwargs.update(applied.generate_kwargs)
            out.tokenizer = applied.tokenizer or out.tokenizer
            executions.append(applied.execution)
            measurement = None
            if ctx.measure is not None and (self.config.measure_stages or step == len(stages) - 1):
                measurement = ctx.measure(out.model, out.generate_kwargs)
            record = stage_record(
                step + 1, stage_cfg.name, applied, wall_s, measurement, ctx.baseline, previous,
                index=index, method=stage_cfg.method_label, config=dataclasses.asdict(stage_cfg),
            )  # fmt: skip
            out.stages.append(record)
            if measurement is not None:
                previous = measurement
                logged = {"pipeline/step": step + 1, **flatten(measurement, prefix="pipeline/")}
                logged.update({f"pipeline/ratios/{k}": v for k, v in record["ratios"]["cumulative"].items()})
                ctx.logger.log_metrics(logged, step=step)
            prefix = f"stage{step + 1}"
            out.metrics.update({f"{prefix}_{stage_cfg.name}/{k}": v for k, v in applied.metrics.items()})
            out.notes.extend(f"stage {step + 1} ({stage_cfg.name}): {n}" for n in applied.notes)
            out.artifacts.update({f"{prefix}_{k}": v for k, v in applied.artifacts.items()})
            out.tables.update({f"{prefix}_{k}": v for k, v in applied.tables.items()})
        order = " -> ".join(f"{r['name']} ({r['execution']})" for r in out.stages)
        out.notes.insert(0, f"pipeline order: {order}")
        out.execution, out.measured = combined_execution(executions), measurement
        return out

