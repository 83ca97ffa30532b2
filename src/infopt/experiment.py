"""One run, in order; each arrow of README's diagram is one call in ``run_experiment``.

validate -> load -> baseline (cached) -> technique -> export -> measure -> record -> publish
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infopt.composition.validate import validate_config
from infopt.config.schema import InfoptConfig
from infopt.console import phase
from infopt.errors import ResourceError
from infopt.interrupt import Interrupted
from infopt.io import atomic_write_json, non_finite, read_checked_json, read_json, write_checked_json
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
        group: OmegaConf.to_container(OmegaConf.structured(getattr(cfg, group)))
        for group in ("model", "data", "eval", "bench", "hardware")
    }
    return stable_hash({**container, "seed": cfg.seed, "device": device_name, "versions": package_versions()})


class Measurer:
    """The run's eval + bench, applied the same way to the baseline and every result."""

    def __init__(self, cfg: InfoptConfig, tokenizer, data, cache_dir: Path) -> None:
        self.cfg, self.tokenizer, self.data, self.cache_dir = cfg, tokenizer, data, cache_dir
        self.notes: list[str] = []

    def __call__(
        self, model, generate_kwargs: dict[str, Any] | None = None, artifact: str | None = None
    ) -> dict[str, dict[str, float]]:
        from infopt.bench.measure import measure
        from infopt.evaluation.runner import evaluate

        t = time.perf_counter()
        ev, units = evaluate(model, self.tokenizer, self.cfg.eval, self.data, self.cache_dir)
        eval_s = time.perf_counter() - t
        bench: dict[str, float] = {}
        if self.cfg.bench.enabled:
            if self.cfg.bench.backend != "transformers":
                from infopt.bench.backends import measure_backend

                # ``artifact``: the run's export (GGUF / directory) that the backend runs.
                bench, notes, extra_eval = measure_backend(
                    model, self.tokenizer, self.cfg, generate_kwargs or {}, data=self.data, artifact=artifact
                )
                ev.update(extra_eval)
            else:
                bench, notes = measure(
                    model,
                    self.cfg.bench,
                    generate_kwargs,
                    prompt_stream=self.data.heldout_stream,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            self.notes.extend(n for n in notes if n not in self.notes)
        bench["eval_wall_s"] = eval_s
        return {"eval": ev, "bench": bench, "units": units}


@dataclass
class Setup:
    """Everything a run decides before it loads a model: the validated config, paths, names, hashes."""

    obj: InfoptConfig
    config: dict[str, Any]  # the resolved config, secrets redacted (what the record stores)
    config_hash: str
    job: JobInfo
    output_dir: Path
    cache_dir: Path
    device: Any
    device_info: dict[str, Any]
    resolved: Any  # models.load.ResolvedModel
    technique: Any  # the built Technique
    corpus: Any = None  # data.corpus.Corpus already read (data=text_files), else None: read when first needed
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    t0: float = field(default_factory=time.perf_counter)
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)  # 1/5/15-min load when it began

    @property
    def run_name(self) -> str:
        return redact(self.obj.run_name or self.job.name or f"{self.obj.model.name}-{self.obj.technique.name}")


@dataclass
class Loaded:
    """The model under study and what measures it."""

    model: Any
    tokenizer: Any
    data: Any
    measure: Measurer
    load_s: float


def prepare(cfg: DictConfig, job: JobInfo) -> Setup:
    """Validate everything that can be validated, before anything heavy is imported or loaded."""
    obj = validate_config(cfg)
    from infopt.techniques.registry import build

    technique = build(obj.technique)
    if any(t not in ("heldout", "analogy") for t in obj.eval.tasks):
        from infopt.evaluation.runner import check_tasks

        check_tasks(obj.eval)
    from infopt.models.load import resolve

    resolved = resolve(obj.model)
    from infopt.data.corpus import preload_text_files

    corpus = preload_text_files(obj.data)  # the user's own files, read once, here
    import torch

    from infopt.bench.hardware import device_description

    output_dir, cache_dir = Path(obj.paths.output_dir), Path(obj.paths.cache_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    check_not_foreign(output_dir / "results.json")
    if obj.hardware.num_threads:
        torch.set_num_threads(obj.hardware.num_threads)
    device = torch.device("cuda" if obj.hardware.accelerator == "gpu" else "cpu")
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    config_hash = stable_hash({k: v for k, v in config.items() if k not in HASH_EXCLUDED})
    return Setup(obj, config, config_hash, job, output_dir, cache_dir, device, device_description(device), resolved,
                 technique, corpus)  # fmt: skip


def check_not_foreign(path: Path) -> None:
    """A results.json already in the run dir is overwritten only if it is an infopt record (or empty):
    anything else there is someone's file, refused before any work rather than lost."""
    if not path.exists() or path.stat().st_size == 0:
        return
    record = read_json(path)
    if not (isinstance(record, dict) and "schema_version" in record):
        what = "not valid JSON" if record is None else f"a JSON {type(record).__name__}, not an infopt record"
        raise ResourceError(f"{path} is {what}; move it away or choose another hydra.run.dir")


def load(setup: Setup) -> Loaded:
    """Tokenizer, model (on the run's device), data, and the run's measurement."""
    from infopt.data.text import TextData
    from infopt.models.load import load_model, load_tokenizer

    obj = setup.obj
    seed_everything(obj.seed)
    t = time.perf_counter()
    tokenizer = load_tokenizer(setup.resolved.tokenizer, setup.cache_dir, obj.model.trust_remote_code)
    model = load_model(obj.model, setup.resolved, tokenizer, setup.cache_dir, seed=obj.seed).to(setup.device)
    data = TextData(obj.data, tokenizer, setup.corpus)
    return Loaded(model, tokenizer, data, Measurer(obj, tokenizer, data, setup.cache_dir), time.perf_counter() - t)


def measure_baseline(setup: Setup, loaded: Loaded) -> tuple[dict | None, bool, str]:
    """(baseline measurement, whether it came from the cache, its cache key)."""
    obj = setup.obj
    key = baseline_key(obj, setup.device_info.get("gpu", setup.device_info["cpu"]))
    if obj.skip_baseline:
        return None, False, key
    cache_file = setup.cache_dir / "baselines" / f"{key}.json"
    cached = read_checked_json(cache_file) if obj.use_baseline_cache else None
    if cached and cached.get("key") == key and "eval" in cached.get("measurement", {}):
        log.info("baseline: cached (%s)", cache_file)
        return cached["measurement"], True, key
    baseline = loaded.measure(loaded.model)
    write_checked_json(cache_file, {"key": key, "model": obj.model.name, "measurement": baseline})
    return baseline, False, key


def export(setup: Setup, applied, tokenizer) -> dict[str, str]:
    """Save / export the result (before measuring: an engine backend measures the export)."""
    obj, artifacts = setup.obj, dict(applied.artifacts)
    if obj.technique.save_model or obj.technique.export == "hf":
        from infopt.models.save import save_hf

        artifacts["hf"] = str(save_hf(applied.model, tokenizer, setup.output_dir / "model"))
    if obj.technique.export not in ("none", "hf"):
        from infopt.export import export_model

        artifacts[obj.technique.export] = str(export_model(
            obj.technique.export, applied.model, tokenizer, setup.output_dir, applied,
            export_type=obj.technique.export_type, float_type=obj.technique.export_float_type,
        ))  # fmt: skip
    return artifacts


def measure_result(setup: Setup, loaded: Loaded, applied, baseline, artifacts: dict[str, str]) -> dict:
    """The result measured the same way as the baseline (reused when it is the very same model)."""
    obj = setup.obj
    engine = obj.bench.enabled and obj.bench.backend != "transformers"
    if obj.technique.name == "baseline" and baseline is not None and not engine:
        return baseline
    if applied.measured is not None and not engine:  # the technique measured this exact model (pipeline)
        return applied.measured
    return loaded.measure(applied.model, applied.generate_kwargs, artifact=artifacts.get(obj.technique.export))


def build_record(setup: Setup, loaded: Loaded, applied, baseline, cached: bool, key: str, result: dict,
                 artifacts: dict[str, str], technique_s: float) -> dict[str, Any]:  # fmt: skip
    from infopt.techniques.registry import spec

    obj = setup.obj
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "name": setup.run_name, "output_dir": str(setup.output_dir), "group": obj.logger.group or setup.job.group,
            "overrides": setup.job.overrides, "command": command_line(), "started": setup.started.isoformat(),
            "finished": datetime.now(timezone.utc).isoformat(), "wall_s": time.perf_counter() - setup.t0,
            "load_s": loaded.load_s, "status": "complete",
        },
        "config": setup.config,
        "config_hash": setup.config_hash,
        "baseline_key": key,
        "baseline_cached": cached,
        "environment": {**environment(setup.device_info, obj.seed), "loadavg_start": list(setup.load_start),
                        "loadavg_end": list(os.getloadavg())},
        "baseline": baseline,
        "result": result,
        "technique": {
            "name": obj.technique.name, "family": spec(obj.technique.name).family, "method": obj.technique.method_label,
            "execution": applied.execution, "wall_s": technique_s, "metrics": applied.metrics,
            "notes": applied.notes + loaded.measure.notes + list(setup.resolved.notes), "artifacts": artifacts,
            "tables": applied.tables,
        },
        "stages": applied.stages,
        "ratios": compute_ratios(baseline, result) if baseline else {},
    }  # fmt: skip
    # Paths the user chose (run dir, artifacts, notes naming files) can hold a secret, as overrides can.
    record["run"] = redact(record["run"])
    record["technique"]["notes"], record["technique"]["artifacts"] = redact([record["technique"]["notes"], artifacts])
    bad = non_finite({k: record[k] for k in ("baseline", "result", "ratios")} | {"technique.metrics": applied.metrics})
    if bad:  # written as null (strict JSON); said once here rather than left for a reader to guess
        record["technique"]["notes"].append(f"not a finite number (NaN or inf), written as null: {', '.join(bad)}")
    from infopt.studies.objective import objective_value

    # What a search (hydra/sweeper=optuna) optimises: a summary key, penalised over budget.
    record["objective"], record["objective_detail"] = objective_value(obj.objective, summary_of(record))
    return record


def command_line() -> str:
    """How this job was started (secrets redacted): the command that regenerates its record."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in ["python", "run.py", *redact(sys.argv[1:])])


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """The flat key -> number view the logger and the objective read."""
    summary = {
        **flatten(record["result"]),
        **{f"ratios/{k}": v for k, v in record["ratios"].items()},
        **{f"technique/{k}": v for k, v in record["technique"]["metrics"].items()},
    }
    if record.get("objective") is not None:
        summary["objective"] = record["objective"]
    if record.get("baseline"):
        summary.update(flatten(record["baseline"], prefix="baseline/"))
    return summary


def publish(record: dict[str, Any], logger) -> None:
    """The logger (the record's numbers and tables) and the terminal summary."""
    from infopt.summary import print_summary, rows, stage_rows

    logger.log_summary(summary_of(record))
    # The same table the terminal shows, and the pipeline's stages, so runs compare in W&B.
    logger.log_table("results", ["metric", "baseline", "result", "ratio"], [list(r) for r in rows(record)])
    if record["stages"]:
        columns, stage_table = stage_rows(record["stages"])
        logger.log_table("stages", columns, stage_table)
    for name, table in record["technique"]["tables"].items():
        logger.log_table(f"technique/{name}", list(table["columns"]), [list(r) for r in table["rows"]])
    print_summary(record)


def make_run_logger(setup: Setup):
    from infopt.tracking import make_logger

    obj = setup.obj
    tags = redact([f"model:{obj.model.name}", f"technique:{obj.technique.name}", *obj.logger.tags])
    if obj.technique.method_label:
        tags.append(f"method:{obj.technique.method_label}")
    if obj.experiment:
        tags.append(f"experiment:{obj.experiment}")
    return make_logger(obj.logger, setup.output_dir, name=setup.run_name, group=obj.logger.group or setup.job.group,
                       tags=tags, config=setup.config)  # fmt: skip


def context(setup: Setup, loaded: Loaded, logger, baseline) -> Any:
    from infopt.context import RunContext

    return RunContext(cfg=setup.obj, tokenizer=loaded.tokenizer, data=loaded.data, output_dir=setup.output_dir,
                      cache_dir=setup.cache_dir, device=setup.device, logger=logger, measure=loaded.measure,
                      baseline=baseline)  # fmt: skip


def run_experiment(cfg: DictConfig, job: JobInfo | None = None) -> dict[str, Any]:
    from infopt.studies.joblock import job_lock

    with phase("check config"):
        setup = prepare(cfg, job or JobInfo())
    # One process per job dir: the same job started alongside (a second copy of a sweep) waits here.
    with job_lock(setup.output_dir) as waited:
        if setup.obj.skip_completed:
            from infopt.studies.sweep import completed_record

            done = completed_record(setup.output_dir, setup.config_hash)
            if done is not None:  # a rerun sweep, or the process waited for: this exact config finished
                return done
        if waited:
            log.info("%s: the other process left no complete record of this config; running this job",
                     setup.output_dir)  # fmt: skip
        return run_job(setup)


def run_job(setup: Setup) -> dict[str, Any]:
    """Load, baseline, technique, export, result, record, publish: the job itself, its dir locked."""
    logger = make_run_logger(setup)
    exit_code = 1
    record_written = False
    try:
        with phase(f"load {setup.obj.model.name}"):
            loaded = load(setup)
        with phase("baseline: eval + bench"):
            baseline, cached, key = measure_baseline(setup, loaded)
        ctx = context(setup, loaded, logger, baseline)
        with phase(f"technique: {setup.obj.technique.name}") as step:
            applied = setup.technique.apply(loaded.model, ctx)
        technique_s = step.elapsed
        tokenizer = applied.tokenizer or loaded.tokenizer
        with phase("export"):
            artifacts = export(setup, applied, tokenizer)
        with phase("result: eval + bench"):
            result = measure_result(setup, loaded, applied, baseline, artifacts)
        record = build_record(setup, loaded, applied, baseline, cached, key, result, artifacts, technique_s)
        record["run"]["resumed_from"] = ctx.resumed_from  # checkpoints training resumed from (empty: straight)
        atomic_write_json(setup.output_dir / "results.json", record)
        record_written = True
        publish(record, logger)
        exit_code = 0
        return record
    except Interrupted as sig:
        sig.record_written = record_written  # the CLI says whether the record is complete
        exit_code = sig.exit_code  # W&B marks the run failed with the shell's status
        raise
    finally:
        logger.finish(exit_code)
