"""Score the in-memory model: lm-eval tasks (local or by name) plus token perplexity.

Keys are ``<task>/<metric>`` (the caller prefixes ``eval/``); every score lm-eval gives a standard
error for keeps it as ``<metric>_stderr``. Every metric with per-document (or per-question) units
also gets a 95% percentile-bootstrap interval, ``<metric>_ci95_low`` / ``_ci95_high``
(``evaluation/uncertainty.py``), and the units travel with the measurement for paired intervals.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
from pathlib import Path

from torch import nn

from infopt.config.schema import EvalConfig
from infopt.data.blocks import contiguous_blocks
from infopt.data.text import TextData
from infopt.errors import ConfigError, ResourceError, first_line
from infopt.evaluation.local_tasks import LOCAL_TASKS, write_tasks
from infopt.evaluation.perplexity import per_document_units, token_nll
from infopt.evaluation.uncertainty import units_from_samples, with_intervals
from infopt.models.surgery import context_length

log = logging.getLogger(__name__)

BOOTSTRAP_ITERS = 1000


def check_tasks(cfg: EvalConfig) -> None:
    """Fail before any model loads if a task name is unknown to lm-eval (and not local)."""
    remote = [t for t in cfg.tasks if t not in LOCAL_TASKS]
    if not remote:
        return
    manager = _task_manager()
    known = set(manager.all_tasks)
    for task in remote:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=5)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"eval.tasks: {task!r} is not an lm-eval task nor a local one ({', '.join(LOCAL_TASKS)}){hint}"
            )
    if _offline():
        for task in remote:
            missing = [d for d in _hub_datasets(manager, task) if not _dataset_cached(d)]
            if missing:
                raise ResourceError(
                    f"eval.tasks: {task!r} needs the hub dataset {missing[0]!r}, which is not in the local cache, "
                    f"and the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); use the local tasks "
                    f"({', '.join(LOCAL_TASKS)}), or run once online to cache it"
                )


@functools.cache
def _task_manager(include: str | None = None, lm_eval_tasks: bool = True):
    """lm-eval's index of task configs, built once per process: indexing lm-eval's own few thousand
    task YAMLs takes 8-20 s on 2 cores, so runs that use only the local tasks index only those."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=lm_eval_tasks)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_datasets(manager, task: str, depth: int = 0) -> set[str]:
    """The hub datasets a task (or every task of a group) reads, as far as its index entry says
    (``dataset_path``; a task whose path comes from an ``include`` is not followed)."""
    entry = manager.task_index.get(task)
    cfg = getattr(entry, "cfg", None) or {}
    found = {cfg["dataset_path"]} if isinstance(cfg.get("dataset_path"), str) else set()
    children = cfg.get("task") if depth < 3 and "group" in cfg else None
    for child in children if isinstance(children, list) else []:
        if isinstance(child, str):
            found |= _hub_datasets(manager, child, depth + 1)
    return {d for d in found if "/" in d or not Path(d).exists()}  # local dataset scripts/dirs need no hub


def _dataset_cached(path: str) -> bool:
    """Either cache the datasets library reads offline: its prepared arrow files or the hub's file cache."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    prepared = Path(datasets_config.HF_DATASETS_CACHE) / path.replace("/", "___")
    downloaded = Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"
    return prepared.is_dir() or downloaded.is_dir()


def _quiet_hflm(**kwargs):
    """lm-eval's HFLM without its per-request progress bars (infopt shows its own phase progress)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **kwargs):
            # loglikelihood_rolling asks for a bar per batch of windows, whatever it was given
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, **kwargs)

    return QuietHFLM(**kwargs)


def run_lm_eval(
    model: nn.Module, tokenizer, cfg: EvalConfig, data: TextData, cache_dir: Path, units: dict | None = None
) -> dict[str, float]:
    """lm-eval's scores of the in-memory model; ``units`` (when given) receives each metric's
    per-document / per-question bootstrap units from the logged samples."""
    include = write_tasks(cache_dir, data.corpus.heldout, cfg.analogy_per_section)
    max_length = cfg.max_length or min(context_length(model.config), 2048)
    lm = _quiet_hflm(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=max_length)
    try:
        out = _simple_evaluate(lm, cfg, include, log_samples=units is not None)
    except ConnectionError as err:  # a hub dataset the offline check could not see (a group's included task)
        raise ResourceError(
            f"eval.tasks: {first_line(err)}; the hub is unreachable or offline: use the local tasks "
            f"({', '.join(LOCAL_TASKS)}), or run once online to cache the task's dataset"
        ) from None
    metrics: dict[str, float] = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            if key != "alias" and isinstance(value, (int, float)):
                metrics[f"{task}/{key.partition(',')[0]}"] = float(value)
    for task, samples in (out.get("samples") or {}).items():
        task_units = units_from_samples(task, samples)
        units.update({k: u for k, u in task_units.items() if k in metrics})  # type: ignore[union-attr]
        if task == "heldout":
            metrics["heldout/documents"] = float(len(samples))
    return metrics


def _simple_evaluate(lm, cfg: EvalConfig, include: Path, log_samples: bool) -> dict:
    import lm_eval
    from lm_eval import evaluator

    # lm-eval adds torch's environment report to every result (a dozen subprocesses, ~1 s per call);
    # infopt records the run's environment once, in results.json, so that step is skipped.
    add_env_info, evaluator.add_env_info = evaluator.add_env_info, lambda results: None
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            task_manager=_task_manager(str(include), any(t not in LOCAL_TASKS for t in cfg.tasks)),
            limit=cfg.limit,
            num_fewshot=cfg.num_fewshot,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=log_samples,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            verbosity="WARNING",
        )
    finally:
        evaluator.add_env_info = add_env_info


def evaluate(
    model: nn.Module, tokenizer, cfg: EvalConfig, data: TextData, cache_dir: Path
) -> tuple[dict[str, float], dict[str, dict]]:
    """(metrics with 95% bootstrap intervals, the per-document / per-question units behind them)."""
    model.eval()
    metrics: dict[str, float] = {}
    units: dict[str, dict] = {}
    if cfg.token_perplexity:
        w = cfg.token_perplexity_window
        blocks = data.heldout_blocks(w, key="eval.token_perplexity_window")
        owners = contiguous_blocks(data.heldout_documents, w)  # (N, w): the document of each token
        if cfg.limit is not None:
            blocks, owners = blocks[: cfg.limit], owners[: cfg.limit]
        total, per_token = token_nll(model, blocks, cfg.batch_size)
        key = f"heldout/token_perplexity_w{w}"
        metrics[key] = math.exp(total / per_token.numel())
        metrics["heldout/token_windows"] = float(blocks.shape[0])
        units[key] = per_document_units(per_token, owners)
    if cfg.tasks:
        metrics.update(run_lm_eval(model, tokenizer, cfg, data, cache_dir, units))
    return with_intervals(metrics, units), units
