"""The GPU benchmark: speed and memory of each technique's CUDA path, as ordinary run records.

Each item is one run of the framework (``run_experiment`` on a composed config, in this process so
torch, transformers and Hydra load once), written to ``<out>/records/<item>/results.json`` like any
other run; ``<out>/summary.json`` and ``summary.md`` collect the headline numbers and say which item
ran, failed (with its error) or was not reached in the time budget. Items run in priority order
and none starts after the deadline, so a slow machine still returns the most important rows.

Models are random-weight shapes (``model=smollm2_shape``: SmolLM2-135M's; ``model=llama_1b_shape``:
Llama-3.2-1B's layers, 1.07B parameters) in bfloat16: their speed and memory are those of the real
models, their quality numbers mean nothing. Text: the Lee corpus from the file gpu_prepare.sh writes.

    python benchmarks/gpu_bench.py --out DIR [--deadline-s 300] [--only a,b] [--list]
    python benchmarks/gpu_bench.py --out DIR --cpu    # rehearsal: tiny models on CPU, CUDA items skipped
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CONF_DIR = REPO / "conf"


@dataclass(frozen=True)
class Item:
    name: str
    overrides: list[str]
    needs: tuple[str, ...] = ()  # cuda | a package name
    what: str = ""  # one line for the summary


SMOL = ["model=smollm2_shape"]
ONE_B = ["model=llama_1b_shape"]
# No packed export: writing a 1B model's int8 weights costs time and says nothing about speed.
W8A8 = ["technique=smoothquant_w8a8", "technique.export_packed=false"]
DYN8 = ["technique=quantize", "technique.method=dynamic_int8", "technique.execution=real", "technique.export_packed=false"]
INT4 = [*DYN8, "technique.dynamic_backend=torchao_int4", "technique.bits=4"]
BNB = ["technique=quantize", "technique.method=llm_int8", "technique.execution=real", "technique.export_packed=false"]
SPARSE = ["technique=prune", "technique.method=magnitude", "technique.nm=2:4", "technique.execution=sparse_kernel"]
DISTILL = ["technique=distill", "technique.train.max_steps=30", "technique.train.batch_size=8",
           "technique.train.seq_len=512", "technique.train.val_every=30", "technique.train.val_batches=2",
           "technique.train.checkpoint_every=0", "technique.train.warmup_steps=5", "technique.save_student=false"]  # fmt: skip


def plan() -> list[Item]:
    """Every item, most important first (the deadline cuts from the end)."""
    return [
        Item("smollm2_bf16_baseline", [*SMOL, "technique=baseline"], ("cuda",), "bf16 baseline"),
        Item("smollm2_w8a8_smoothquant", [*SMOL, *W8A8], ("cuda",), "SmoothQuant W8A8, torch._int_mm (padded decode)"),
        Item("smollm2_dynamic_int8", [*SMOL, *DYN8], ("cuda",), "dynamic int8, torch._int_mm (padded decode)"),
        Item("smollm2_int4_torchao", [*SMOL, *INT4, "technique.group_size=64"], ("cuda", "torchao"),
             "int4 weight-only, torchao tinygemm, g64"),
        Item("smollm2_llm_int8_bnb", [*SMOL, *BNB], ("cuda", "bitsandbytes"), "LLM.int8, bitsandbytes"),
        Item("smollm2_sparse_2to4", [*SMOL, *SPARSE], ("cuda",), "2:4 magnitude, semi-structured kernels vs dense"),
        Item("smollm2_attention_2k_16k",
             [*SMOL, "model.tiny.max_positions=16384", "technique=attention",
              "technique.compare=[eager,sdpa:math,sdpa:flash,sdpa:efficient,sdpa:cudnn]",
              "technique.context_lengths=[2048,8192,16384]", "technique.logit_tolerance=0.1"],
             ("cuda",), "SDPA backends vs eager at 2k-16k context"),  # fmt: skip
        Item("smollm2_distill_gpu", [*SMOL, *DISTILL], ("cuda",), "distillation, bf16-mixed, 1 GPU"),
        Item("smollm2_distill_ddp", [*SMOL, *DISTILL, "hardware=multi_gpu", "hardware.devices=1"], ("cuda",),
             "distillation, ddp_spawn, devices=1"),
        Item("smollm2_distill_fsdp", [*SMOL, *DISTILL, "hardware=fsdp", "hardware.devices=1"], ("cuda",),
             "distillation, FSDP, devices=1"),
        Item("llama1b_bf16_baseline", [*ONE_B, "technique=baseline"], ("cuda",), "bf16 baseline"),
        Item("llama1b_w8a8_smoothquant", [*ONE_B, *W8A8], ("cuda",), "SmoothQuant W8A8"),
        Item("llama1b_int4_torchao", [*ONE_B, *INT4, "technique.group_size=128"], ("cuda", "torchao"),
             "int4 weight-only, torchao tinygemm, g128"),
        Item("llama1b_sparse_2to4", [*ONE_B, *SPARSE], ("cuda",), "2:4 semi-structured vs dense"),
        Item("llama1b_llm_int8_bnb", [*ONE_B, *BNB], ("cuda", "bitsandbytes"), "LLM.int8, bitsandbytes"),
        Item("llama1b_dynamic_int8", [*ONE_B, *DYN8], ("cuda",), "dynamic int8"),
        Item("smollm2_compile_default", [*SMOL, "technique=compile", "technique.mode=default"], ("cuda",),
             "torch.compile default, static cache"),
        Item("smollm2_compile_reduce_overhead", [*SMOL, "technique=compile", "technique.mode=reduce-overhead"],
             ("cuda",), "torch.compile reduce-overhead (CUDA graphs)"),
    ]


def common_overrides(cpu: bool, sample_text: Path | None) -> list[str]:
    """Same measurement for every item: token perplexity only (no lm-eval), decode at batch 1 and 8."""
    data = (["data=text_files", f"data.files=[{sample_text}]", "data.heldout_docs=30", "data.calibration_docs=30"]
            if sample_text else ["data=lee_news"])  # fmt: skip
    out = ["logger=none", "eval.tasks=[]", "skip_completed=false", *data]
    if cpu:  # rehearsal: the plumbing on tiny models, in seconds
        return [*out, "hardware=cpu", "bench=quick", "eval.limit=4", "eval.token_perplexity_window=128"]
    return [*out, "hardware=gpu", "model.dtype=bfloat16", "bench.batch_sizes=[1,8]", "bench.new_tokens=32",
            "bench.repeats=3", "bench.warmup=1"]  # fmt: skip


def cpu_rehearsal(item: Item) -> Item:
    """The same item on a tiny model (GPU-sized shapes and steps would take minutes on a CPU)."""
    shrink = {"model=smollm2_shape": "model=tiny_llama", "model=llama_1b_shape": "model=tiny_llama",
              "model.tiny.max_positions=16384": "model.tiny.max_positions=1024",
              "technique.context_lengths=[2048,8192,16384]": "technique.context_lengths=[256,1024]",
              "technique.logit_tolerance=0.1": "technique.logit_tolerance=0.001",
              "technique.train.max_steps=30": "technique.train.max_steps=4",
              "technique.train.val_every=30": "technique.train.val_every=4",
              "technique.train.seq_len=512": "technique.train.seq_len=32",
              "technique.train.warmup_steps=5": "technique.train.warmup_steps=1",
              "technique.group_size=64": "technique.group_size=32",
              "technique.compare=[eager,sdpa:math,sdpa:flash,sdpa:efficient,sdpa:cudnn]":
                  "technique.compare=[eager,sdpa:math,sdpa:flash]"}  # fmt: skip
    overrides = [shrink.get(o, o) for o in item.overrides]
    if "technique=distill" in overrides:
        overrides = [o for o in overrides if not o.startswith("hardware")]
        overrides += ["technique.student.layers=[1]", "technique.data.train_docs=30"]
        if "ddp" in item.name:
            overrides.append("hardware.strategy=ddp_spawn")
    if "technique=compile" in overrides:
        overrides.append("technique.backend=eager")  # Inductor on 2 CPU cores takes minutes
    needs = tuple(n for n in item.needs if n != "cuda")
    if "fsdp" in item.name or "reduce_overhead" in item.name or "sparse" in item.name or "bnb" in item.name \
            or "int4" in item.name:
        needs = (*needs, "cuda")  # no CPU path to rehearse
    return Item(item.name, overrides, needs, item.what)


def compose(overrides: list[str], output_dir: Path, cache_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from infopt.config.store import register_configs
    from omegaconf import open_dict

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
    return cfg


def missing(item: Item) -> str | None:
    import torch

    for need in item.needs:
        if need == "cuda" and not torch.cuda.is_available():
            return "needs a CUDA GPU"
        if need != "cuda" and importlib.util.find_spec(need) is None:
            return f"needs the {need} package (not in .whl/ for this run)"
    return None


HEADLINE = ("decode_tokens_per_s_b1", "decode_tokens_per_s_b8", "prefill_ms_b1", "peak_memory_mb", "peak_rss_mb",
            "stored_mb", "working_memory_mb")  # fmt: skip


def headline(record: dict) -> dict:
    """The numbers a summary row shows: the result's bench, its ratios to the baseline, and the
    technique's own metrics (attention sweep, compile speeds, training speed and memory)."""
    bench = (record.get("result") or {}).get("bench") or {}
    ratios = record.get("ratios") or {}
    tech = record.get("technique") or {}
    out = {k: bench[k] for k in HEADLINE if k in bench}
    out.update({f"ratio/{k}": v for k, v in ratios.items() if k.startswith("bench/") or "perplexity" in k})
    out.update({f"technique/{k}": v for k, v in (tech.get("metrics") or {}).items()})
    out["execution"] = tech.get("execution")
    out["notes"] = tech.get("notes", [])
    if tech.get("tables"):
        out["tables"] = tech["tables"]
    return out


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("transformers", "lightning", "torchao", "bitsandbytes", "hydra-core", "accelerate"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()  # fmt: skip
        except Exception:
            env["driver"] = None
    return env


def write_summary(out: Path, summary: dict) -> None:
    from infopt.io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    lines = [f"# GPU benchmark ({summary['environment'].get('gpu', 'no GPU: CPU rehearsal')})", "",
             "| item | status | s | decode tok/s b1 | b8 | speedup b1 | peak MB | stored MB | what |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in summary["items"].items():
        h = row.get("headline") or {}

        def f(v):
            return f"{v:.4g}" if isinstance(v, (int, float)) else "-"

        lines.append(
            f"| {name} | {row['status']} | {f(row.get('wall_s'))} | {f(h.get('decode_tokens_per_s_b1'))} | "
            f"{f(h.get('decode_tokens_per_s_b8'))} | {f(h.get('ratio/bench/decode_tokens_per_s_b1/speedup'))} | "
            f"{f(h.get('peak_memory_mb', h.get('peak_rss_mb')))} | {f(h.get('stored_mb'))} | {row.get('what', '')} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=False, default=REPO / "outputs" / "gpu_bench")
    ap.add_argument("--deadline-s", type=float, default=300.0, help="start no item after this many seconds")
    ap.add_argument("--only", default="", help="comma-separated item names")
    ap.add_argument("--cpu", action="store_true", help="rehearse on CPU with tiny models")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)

    items = plan()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {i.name for i in items}
        if unknown:
            ap.error(f"--only: unknown items {sorted(unknown)}; valid: {', '.join(i.name for i in items)}")
        items = [i for i in items if i.name in wanted]
    if args.cpu:
        items = [cpu_rehearsal(i) for i in items]
    if args.list:
        for i in items:
            print(f"{i.name:34s} {' '.join(i.overrides)}")
        return 0

    t0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache_dir = Path(os.environ.get("INFOPT_CACHE_DIR", REPO / ".cache" / "infopt-gpu")).resolve()
    sample = cache_dir / "data" / "lee_news.txt"
    common = common_overrides(args.cpu, sample if sample.is_file() else None)
    out = args.out.resolve()
    (out / "records").mkdir(parents=True, exist_ok=True)
    summary: dict = {"environment": environment(), "common_overrides": common, "deadline_s": args.deadline_s,
                     "cpu_rehearsal": args.cpu, "items": {}}  # fmt: skip
    kit = cache_dir / "kit.json"
    if kit.is_file():
        summary["kit"] = json.loads(kit.read_text())
    for item in items:
        summary["items"][item.name] = {"status": "not run: time budget", "what": item.what,
                                       "overrides": item.overrides}  # fmt: skip
    write_summary(out, summary)

    from infopt.experiment import JobInfo, run_experiment

    failures = 0
    for item in items:
        row = summary["items"][item.name]
        elapsed = time.perf_counter() - t0
        if elapsed > args.deadline_s:
            print(f"[gpu_bench] {item.name}: not started ({elapsed:.0f} s > deadline {args.deadline_s:.0f} s)", flush=True)
            continue
        why = missing(item)
        if why:
            row["status"] = f"skipped: {why}"
            print(f"[gpu_bench] {item.name}: skipped ({why})", flush=True)
            write_summary(out, summary)
            continue
        print(f"[gpu_bench] {item.name}: {' '.join(item.overrides)}", flush=True)
        t = time.perf_counter()
        try:
            cfg = compose([*common, *item.overrides, f"run_name={item.name}"], out / "records" / item.name, cache_dir)
            record = run_experiment(cfg, JobInfo(name=item.name, overrides=[*common, *item.overrides]))
            row.update(status="ok", headline=headline(record))
        except BaseException as err:  # noqa: BLE001 - a failing item is a result; the next item still runs
            if isinstance(err, KeyboardInterrupt):
                raise
            failures += 1
            row.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000],
                       traceback=traceback.format_exc()[-6000:])  # fmt: skip
            print(f"[gpu_bench] {item.name}: FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)
        row["wall_s"] = time.perf_counter() - t
        write_summary(out, summary)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
    summary["wall_s"] = time.perf_counter() - t0
    write_summary(out, summary)
    print((out / "summary.md").read_text(), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
