"""Score the in-memory model: lm-eval tasks (local or by name) plus token perplexity.

Keys are ``<task>/<metric>`` (the caller prefixes ``eval/``); every score lm-eval gives a standard
error for keeps it as ``<metric>_stderr``. For corpus-level perplexities, where lm-eval gives
none, the stderr of the log-perplexity comes from a bootstrap over documents.
"""

from __future__ import annotations

import difflib
import logging
import math
import random
from pathlib import Path
from typing import Any

from torch import nn

from infopt.config.schema import EvalConfig
from infopt.data.text import TextData
from infopt.errors import ConfigError
from infopt.evaluation.local_tasks import LOCAL_TASKS, write_tasks
from infopt.evaluation.perplexity import token_perplexity
from infopt.models.surgery import context_length

log = logging.getLogger(__name__)

BOOTSTRAP_ITERS = 1000


def check_tasks(cfg: EvalConfig) -> None:
    """Fail before any model loads if a task name is unknown to lm-eval (and not local)."""
    remote = [t for t in cfg.tasks if t not in LOCAL_TASKS]
    if not remote:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    for task in remote:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=5)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise ConfigError(
                f"eval.tasks: {task!r} is not an lm-eval task nor a local one ({', '.join(LOCAL_TASKS)}){hint}"
            )


def _bootstrap_log_ppl_stderr(samples: list[dict[str, Any]], seed: int = 0) -> float | None:
    """Stderr of log(word perplexity) = sum(-ll)/sum(words) by resampling documents."""
    pairs = []
    for s in samples:
        value = s.get("filtered_resps") or s.get("resps")
        ll = value[0][0] if isinstance(value[0], (list, tuple)) else value[0]
        if isinstance(ll, (list, tuple)):
            ll = ll[0]
        words = len(str(s["doc"]["text"]).split())  # lm-eval counts words by whitespace split too
        pairs.append((float(ll), words))
    if len(pairs) < 2:
        return None
    rng = random.Random(seed)
    stats = []
    for _ in range(BOOTSTRAP_ITERS):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        stats.append(-sum(p[0] for p in pick) / max(1, sum(p[1] for p in pick)))
    mean = sum(stats) / len(stats)
    return math.sqrt(sum((x - mean) ** 2 for x in stats) / (len(stats) - 1))


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
    model: nn.Module, tokenizer, cfg: EvalConfig, data: TextData, cache_dir: Path
) -> dict[str, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    include = write_tasks(cache_dir, data.corpus.heldout, cfg.analogy_per_section)
    max_length = cfg.max_length or min(context_length(model.config), 2048)
    lm = _quiet_hflm(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=max_length)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(cfg.tasks),
        task_manager=TaskManager(include_path=str(include)),
        limit=cfg.limit,
        num_fewshot=cfg.num_fewshot,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples="heldout" in cfg.tasks,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        verbosity="WARNING",
    )
    metrics: dict[str, float] = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            name, _, _filter = key.partition(",")
            if name.endswith("_stderr"):
                metrics[f"{task}/{name}"] = float(value)
            else:
                metrics[f"{task}/{name}"] = float(value)
    if "heldout" in out.get("samples", {}):
        se = _bootstrap_log_ppl_stderr(out["samples"]["heldout"])
        if se is not None:
            metrics["heldout/log_word_perplexity_stderr"] = se
        metrics["heldout/documents"] = float(len(out["samples"]["heldout"]))
    return metrics


def evaluate(
    model: nn.Module, tokenizer, cfg: EvalConfig, data: TextData, cache_dir: Path
) -> dict[str, float]:
    model.eval()
    metrics: dict[str, float] = {}
    if cfg.token_perplexity:
        blocks = data.heldout_blocks(cfg.token_perplexity_window)
        if cfg.limit is not None:
            blocks = blocks[: cfg.limit]
        metrics[f"heldout/token_perplexity_w{cfg.token_perplexity_window}"] = token_perplexity(
            model, blocks, cfg.batch_size
        )
        metrics["heldout/token_windows"] = float(blocks.shape[0])
    if cfg.tasks:
        metrics.update(run_lm_eval(model, tokenizer, cfg, data, cache_dir))
    return metrics
