"""One run, in order; each arrow of README's diagram is one call here.

validate -> resolve model -> load -> baseline (cached) -> technique -> export -> measure ->
results.json -> logger -> summary
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infopt.config.schema import InfoptConfig
from infopt.config.validate import validate_config
from infopt.io import atomic_write_json, read_checked_json, write_checked_json
from infopt.results import SCHEMA_VERSION, compute_ratios, environment, flatten, redact, stable_hash

log = logging.getLogger(__name__)

# Keys of the config that do not change what a run computes (where it writes, how it logs,
# whether finished jobs are skipped): left out of ``config_hash``.
HASH_EXCLUDED = ("paths", "logger", "skip_completed")


@dataclass
class JobInfo:
    """What the launcher knows about this job (passed in; nothing reads Hydra's globals)."""

    name: str | None = None  # readable name from the overrides
    group: str | None = None  # the sweep this job belongs to
    overrides: list[str] = field(default_factory=list)
    job_num: int | None = None


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def baseline_key(cfg: InfoptConfig, device_name: str) -> str:
    """Everything that changes a baseline measurement (not the technique)."""
    from infopt.results import package_versions

    container = {
        "model": OmegaConf.to_container(OmegaConf.structured(cfg.model)),
        "data": OmegaConf.to_container(OmegaConf.structured(cfg.data)),
        "eval": OmegaConf.to_container(OmegaConf.structured(cfg.eval)),
        "bench": OmegaConf.to_container(OmegaConf.structured(cfg.bench)),
        "hardware": OmegaConf.to_container(OmegaConf.structured(cfg.hardware)),
        "seed": cfg.seed,
        "device": device_name,
        "versions": package_versions(),
    }
    return stable_hash(container)


class Measurer:
    """The run's eval + bench, applied the same way to the baseline and every result."""

    def __init__(self, cfg: InfoptConfig, tokenizer, data, cache_dir: Path) -> None:
        self.cfg, self.tokenizer, self.data, self.cache_dir = cfg, tokenizer, data, cache_dir
        self.notes: list[str] = []

    def __call__(self, model, generate_kwargs: dict[str, Any] | None = None,
                 artifact: str | None = None) -> dict[str, dict[str, float]]:
        from infopt.bench.measure import measure
        from infopt.evaluation.runner import evaluate

        t = time.perf_counter()
        ev = evaluate(model, self.tokenizer, self.cfg.eval, self.data, self.cache_dir)
        eval_s = time.perf_counter() - t
        bench: dict[str, float] = {}
        if self.cfg.bench.enabled:
            if self.cfg.bench.backend != "transformers":
                from infopt.bench.backends import measure_backend

                # ``artifact``: the run's export (GGUF / directory) that the backend runs.
                bench, notes, extra_eval = measure_backend(model, self.tokenizer, self.cfg, generate_kwargs or {},
                                                           data=self.data, artifact=artifact)
                ev.update(extra_eval)
            else:
                bench, notes = measure(
                    model, self.cfg.bench, generate_kwargs, prompt_stream=self.data.heldout_stream,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            self.notes.extend(n for n in notes if n not in self.notes)
        bench["eval_wall_s"] = eval_s
        return {"eval": ev, "bench": bench}


def run_experiment(cfg: DictConfig, job: JobInfo | None = None) -> dict[str, Any]:
    job = job or JobInfo()
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()

    # 1. Validate everything we can before anything heavy is imported or loaded.
    obj = validate_config(cfg)
    from infopt.techniques.registry import build, spec

    technique = build(obj.technique)
    if any(t not in ("heldout", "analogy") for t in obj.eval.tasks):
        from infopt.evaluation.runner import check_tasks

        check_tasks(obj.eval)
    from infopt.models.load import resolve

    resolved = resolve(obj.model)

    import torch

    from infopt.bench.hardware import device_description
    from infopt.context import RunContext
    from infopt.data.text import TextData
    from infopt.models.load import load_model, load_tokenizer
    from infopt.tracking import make_logger

    output_dir = Path(obj.paths.output_dir)
    cache_dir = Path(obj.paths.cache_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if obj.hardware.num_threads:
        torch.set_num_threads(obj.hardware.num_threads)
    device = torch.device("cuda" if obj.hardware.accelerator == "gpu" else "cpu")
    seed_everything(obj.seed)
    device_info = device_description(device)

    config_container = redact(OmegaConf.to_container(cfg, resolve=True))
    config_hash = stable_hash({k: v for k, v in config_container.items() if k not in HASH_EXCLUDED})
    if obj.skip_completed:
        from infopt.studies.sweep import completed_record

        done = completed_record(output_dir, config_hash)
        if done is not None:  # a rerun sweep: this job already finished with this exact config
            return done
    run_name = redact(obj.run_name or job.name or f"{obj.model.name}-{obj.technique.name}")
    tags = redact([f"model:{obj.model.name}", f"technique:{obj.technique.name}", *obj.logger.tags])
    method = obj.technique.method_label
    if method:
        tags.append(f"method:{method}")
    if obj.experiment:
        tags.append(f"experiment:{obj.experiment}")
    logger = make_logger(obj.logger, output_dir, name=run_name, group=obj.logger.group or job.group, tags=tags, config=config_container)
    exit_code = 1
    try:
        # 2. Load.
        t = time.perf_counter()
        tokenizer = load_tokenizer(resolved.tokenizer, cache_dir, obj.model.trust_remote_code)
        model = load_model(obj.model, resolved, tokenizer, cache_dir, seed=obj.seed).to(device)
        load_s = time.perf_counter() - t
        data = TextData(obj.data, tokenizer)
        measurer = Measurer(obj, tokenizer, data, cache_dir)

        # 3. Baseline, cached under a key of everything that changes it.
        baseline = None
        baseline_cached = False
        key = baseline_key(obj, device_info.get("gpu", device_info["cpu"]))
        cache_file = cache_dir / "baselines" / f"{key}.json"
        if not obj.skip_baseline:
            cached = read_checked_json(cache_file) if obj.use_baseline_cache else None
            if cached and cached.get("key") == key and "eval" in cached.get("measurement", {}):
                baseline, baseline_cached = cached["measurement"], True
                log.info("baseline: cached (%s)", cache_file)
            else:
                log.info("baseline: measuring")
                baseline = measurer(model)
                write_checked_json(cache_file, {"key": key, "model": obj.model.name, "measurement": baseline})

        # 4. Technique.
        ctx = RunContext(cfg=obj, tokenizer=tokenizer, data=data, output_dir=output_dir, cache_dir=cache_dir,
                         device=device, logger=logger, measure=measurer, baseline=baseline)
        t = time.perf_counter()
        applied = technique.apply(model, ctx)
        technique_s = time.perf_counter() - t
        tokenizer = applied.tokenizer or tokenizer

        # 5. Save / export (before measuring: bench.backend=llamacpp/vllm measures the exported model).
        artifacts = dict(applied.artifacts)
        if obj.technique.save_model or obj.technique.export == "hf":
            from infopt.models.save import save_hf

            artifacts["hf"] = str(save_hf(applied.model, tokenizer, output_dir / "model"))
        if obj.technique.export not in ("none", "hf"):
            from infopt.export import export_model

            artifacts[obj.technique.export] = str(export_model(
                obj.technique.export, applied.model, tokenizer, output_dir, applied,
                export_type=obj.technique.export_type, float_type=obj.technique.export_float_type,
            ))
        engine = obj.bench.enabled and obj.bench.backend != "transformers"

        # 6. Measure the result the same way (the baseline technique is its own result, unless an
        # engine backend must measure its export).
        if obj.technique.name == "baseline" and baseline is not None and not engine:
            result = baseline
        elif applied.measured is not None and not engine:  # the technique measured this exact model (pipeline)
            result = applied.measured
        else:
            result = measurer(applied.model, applied.generate_kwargs, artifact=artifacts.get(obj.technique.export))

        # 7. Record.
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": {
                "name": run_name,
                "output_dir": str(output_dir),
                "group": obj.logger.group or job.group,
                "overrides": job.overrides,
                "started": started.isoformat(),
                "finished": datetime.now(timezone.utc).isoformat(),
                "wall_s": time.perf_counter() - t_start,
                "load_s": load_s,
                "status": "complete",
            },
            "config": config_container,
            "config_hash": config_hash,
            "baseline_key": key,
            "baseline_cached": baseline_cached,
            "environment": environment(device_info, obj.seed),
            "baseline": baseline,
            "result": result,
            "technique": {
                "name": obj.technique.name,
                "family": spec(obj.technique.name).family,
                "method": method,
                "execution": applied.execution,
                "wall_s": technique_s,
                "metrics": applied.metrics,
                "notes": applied.notes + measurer.notes + list(resolved.notes),
                "artifacts": artifacts,
                "tables": applied.tables,
            },
            "stages": applied.stages,
            "ratios": compute_ratios(baseline, result) if baseline else {},
        }
        summary = {**flatten(result), **{f"ratios/{k}": v for k, v in record["ratios"].items()},
                   **{f"technique/{k}": v for k, v in applied.metrics.items()}}
        # What a search (hydra/sweeper=optuna) optimises: a summary key, penalised over budget.
        from infopt.studies.objective import objective_value

        record["objective"], record["objective_detail"] = objective_value(obj.objective, summary)
        atomic_write_json(output_dir / "results.json", record)

        if record["objective"] is not None:
            summary["objective"] = record["objective"]
        if baseline:
            summary.update(flatten(baseline, prefix="baseline/"))
        logger.log_summary(summary)
        from infopt.summary import print_summary, rows

        # The same table the terminal shows, and the pipeline's stages, so runs compare in W&B.
        logger.log_table("results", ["metric", "baseline", "result", "ratio"], [list(r) for r in rows(record)])
        if applied.stages:
            from infopt.summary import stage_rows

            columns, stage_table = stage_rows(applied.stages)
            logger.log_table("stages", columns, stage_table)
        for name, table in applied.tables.items():
            logger.log_table(f"technique/{name}", list(table["columns"]), [list(r) for r in table["rows"]])

        print_summary(record)
        exit_code = 0
        return record
    finally:
        logger.finish(exit_code)
