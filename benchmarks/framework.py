"""`make bench`: the framework's own turnaround, measured on this machine (a client of the public API).

Prints a Markdown table and writes the same numbers to ``outputs/bench/<time>.json`` (numbers reach
the docs only as committed records rendered by ``python -m infopt.report --docs``). Each figure is a median over ``--repeats`` runs measured in this
one process, so ratios compare like with like.

    python benchmarks/framework.py [--repeats 3] [--skip-runs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's infopt


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    from infopt.bench.timing import repeat

    timing = repeat(fn, repeats)
    return timing.median, timing.samples


def bench_model_load(cache_dir: Path, repeats: int) -> dict[str, float]:
    from infopt.config.schema import ModelConfig
    from infopt.models.load import load_model, load_tokenizer, resolve

    cfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(cfg)
    tok = load_tokenizer(resolved.tokenizer, cache_dir)
    load_model(cfg, resolved, tok, cache_dir)  # converts once if needed (not timed)
    med, _ = _median_time(lambda: load_model(cfg, resolved, tok, cache_dir), repeats)
    return {"model_load_from_cache_s": med}


def bench_lm_eval_batching(cache_dir: Path, repeats: int) -> dict[str, float]:
    from infopt.config.schema import DataConfig, EvalConfig, ModelConfig
    from infopt.data.text import TextData
    from infopt.evaluation.runner import run_lm_eval
    from infopt.models.load import load_model, load_tokenizer, resolve

    cfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(cfg)
    tok = load_tokenizer(resolved.tokenizer, cache_dir)
    model = load_model(cfg, resolved, tok, cache_dir)
    data = TextData(DataConfig(name="lee_news", source="lee_news"), tok)
    out = {}
    # Per task as well as together: batching pays where per-call overhead dominates (short
    # analogy prompts), not on long perplexity windows that already keep the cores busy.
    for label, tasks in (("default_tasks", ["heldout", "analogy"]), ("heldout", ["heldout"]), ("analogy", ["analogy"])):
        for bs in (1, 8):
            ecfg = EvalConfig(tasks=tasks, batch_size=bs, token_perplexity=False)
            med, _ = _median_time(lambda: run_lm_eval(model, tok, ecfg, data, cache_dir), repeats)  # noqa: B023
            out[f"lm_eval_{label}_bs{bs}_s"] = med
        out[f"lm_eval_{label}_batching_speedup"] = out[f"lm_eval_{label}_bs1_s"] / out[f"lm_eval_{label}_bs8_s"]
    return out


def bench_default_run(cache_dir: Path) -> dict[str, float]:
    """`python run.py` cold (empty cache: conversion + baseline) and warm (cached baseline)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "INFOPT_CACHE_DIR": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        for label in ("cold", "warm"):
            t = time.perf_counter()
            subprocess.run([sys.executable, "run.py", "logger=none", f"hydra.run.dir={tmp}/{label}"], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[f"run_py_{label}_s"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-runs", action="store_true", help="skip the cold/warm `python run.py` timing")
    parser.add_argument("--only-eval", action="store_true", help="only the lm-eval batching figures")
    args = parser.parse_args(argv)
    cache_dir = Path(os.environ.get("INFOPT_CACHE_DIR", Path.home() / ".cache" / "infopt"))
    from infopt.bench.hardware import cpu_name

    results: dict[str, float] = {}
    if not args.only_eval:
        results.update(bench_model_load(cache_dir, args.repeats))
    results.update(bench_lm_eval_batching(cache_dir, max(1, args.repeats - 2)))
    if not (args.skip_runs or args.only_eval):
        results.update(bench_default_run(cache_dir))
    record = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count()}, "when": datetime.now().isoformat(timespec="seconds"), "results": results}
    out_dir = REPO / "outputs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    from infopt.io import atomic_write_json

    atomic_write_json(out_dir / f"{datetime.now():%Y%m%d-%H%M%S}.json", record)
    print(f"| figure | value |  (machine: {record['machine']['cpu']}, {record['machine']['cores']} cores)")
    print("|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.2f} |")


if __name__ == "__main__":
    main()
