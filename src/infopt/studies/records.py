"""The committed records: every documented number comes from a ``results.json`` under ``results/``.

A study is a named experiment (``conf/experiment/<study>.yaml``, a multirun). Regenerating it runs
its sweep under ``outputs/studies/<study>/`` (git-ignored: exported weights, checkpoints, W&B runs,
logs) and copies each finished job's ``results.json`` to ``results/<study>/<job>/results.json``
(a few KB each, committed). Before the sweep starts, the committed records are put back into the
sweep dir, so a job whose record already holds the same config (``config_hash``) is skipped: a
regeneration resumes where it stopped, and deleting a study's records and regenerating reproduces
them. Nothing is written outside ``results/`` and ``outputs/`` (the model and baseline caches go to
``outputs/cache``).

    python -m infopt.studies.records list
    python -m infopt.studies.records regenerate int8_effects [more studies | all]     (make results STUDY=...)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infopt.io import atomic_write_json, read_json

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "results"
OUTPUTS = REPO / "outputs"


# Seeds 1 and 2 beside the experiment's own seed 0: quality intervals over calibration / training samples.
# Their speeds would repeat seed 0's (same shapes, same kernels), so they record sizes only.
MORE_SEEDS = ("seed=1,2", "bench=static")


@dataclass(frozen=True)
class Study:
    name: str  # the experiment: conf/experiment/<name>.yaml
    question: str  # what the study answers, in one line
    # One multirun per entry, each with these extra overrides (the experiment file holds the rest);
    # () is the experiment as a user runs it.
    sweeps: tuple[tuple[str, ...], ...] = ((),)


# The review's studies and the framework's own, in the order `regenerate all` runs them.
STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        Study("overview", "one default setting per family on the same model: which moves the quality/cost front?",
              ((), ("technique=smoothquant_w8a8,quantize,prune,prune_mlp_channels,distill_quick", *MORE_SEEDS))),
        Study("int8_effects", "per-tensor vs per-channel vs per-token scales, LLM.int8, SmoothQuant: quality and speed of 8 bits",
              ((), ("technique=smoothquant_w8a8,smoothquant_w8a8_per_tensor", *MORE_SEEDS))),
        Study("llm_int8_hardware", "LLM.int8 vs plain int8 vs fp32 on this hardware"),
        Study("prune_methods", "magnitude vs Wanda vs SparseGPT at 50% unstructured and 2:4: quality kept",
              ((), ("technique.method=wanda,sparsegpt", "seed=1,2"))),
        Study("architecture_paths", "attention kernels, fp8 KV cache, compiled decode, prompt lookup: latency, memory, same output"),
        Study("quant_grid", "RTN vs GPTQ at 8/4/3 bits, per channel and groups of 64",
              ((), ("technique.method=gptq", "seed=1,2"))),
        Study("rotation", "does a Hadamard rotation before rounding bring RTN W4 closer to GPTQ?",
              ((), ("technique.rotate=hadamard", "technique.rotate_seed=1,2"))),  # other draws of the signs
        Study("structured_pruning_tradeoff", "heads / MLP channels / layers removed, with and without recovery",
              ((), MORE_SEEDS)),
        Study("sparsity_speedup", "unstructured vs 2:4 vs structured at equal parameter fraction: measured vs predicted speed",
              ((), MORE_SEEDS)),
        Study("kd_student", "student depth/width x distillation loss at one token budget", ((), MORE_SEEDS)),
        Study("kd_ablation", "teacher quality x training-data diversity, over seeds", ((), ("seed=1,2",))),
        Study("layer_sensitivity", "held-out loss change when one layer alone is quantized"),
        Study("order_effects", "prune then quantize, or quantize then prune", ((), MORE_SEEDS)),
        Study("budget_search", "the best quantization settings under a size and latency budget (Optuna)"),
    )
}


def committed_studies(results: Path = RESULTS) -> list[str]:
    """The registered studies that have at least one committed record, in registry order."""
    return [name for name in STUDIES if any((results / name).rglob("results.json"))]


def study_dirs(name: str, results: Path = RESULTS, outputs: Path = OUTPUTS) -> tuple[Path, Path]:
    """(committed records dir, sweep dir) of a study."""
    return results / name, outputs / "studies" / name


def seed_sweep_dir(records: Path, sweep: Path) -> int:
    """Put the committed records back where the sweep writes them (so finished jobs are skipped)."""
    count = 0
    for record in sorted(records.rglob("results.json")):
        target = sweep / record.relative_to(records)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(record, target)
            count += 1
    return count


def collect(sweep: Path, records: Path) -> list[Path]:
    """Copy every complete ``results.json`` of the sweep into the committed records (atomically)."""
    copied = []
    for path in sorted(sweep.rglob("results.json")):
        if "wandb" in path.parts:
            continue
        record = read_json(path)
        if not isinstance(record, dict) or (record.get("run") or {}).get("status") != "complete":
            continue
        record.pop("skipped", None)
        target = records / path.relative_to(sweep)
        if read_json(target) != record:
            atomic_write_json(target, record)
            copied.append(target)
    return copied


def regenerate(
    name: str, extra: list[str] | tuple[str, ...] = (), results: Path = RESULTS, outputs: Path = OUTPUTS,
    python: str = sys.executable, sweeps: list[int] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Run one study's sweeps (all, or the 1-based ``sweeps``), resuming from its committed records,
    and refresh the records."""
    study = STUDIES.get(name)
    if study is None:
        raise SystemExit(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    bad = [i for i in sweeps or [] if not 1 <= i <= len(study.sweeps)]
    if bad:
        raise SystemExit(f"study {name} has sweeps 1..{len(study.sweeps)}; got {bad}")
    records, sweep = study_dirs(name, results, outputs)
    seeded = seed_sweep_dir(records, sweep)
    env = {**os.environ, "INFOPT_CACHE_DIR": os.environ.get("INFOPT_CACHE_DIR", str(outputs / "cache")),
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    t = time.perf_counter()
    for overrides in [o for i, o in enumerate(study.sweeps, 1) if not sweeps or i in sweeps]:
        command = [python, str(REPO / "run.py"), "-m", f"experiment={name}", f"hydra.sweep.dir={sweep}",
                   *overrides, *extra]  # fmt: skip
        subprocess.run(command, cwd=REPO, env=env, check=True)
    wall = time.perf_counter() - t
    copied = collect(sweep, records)
    print(f"infopt: study {name}: {len(copied)} record(s) written to {records} ({seeded} reused), {wall:.0f} s")
    return {"wall_s": wall, "records_written": float(len(copied)), "records_reused": float(seeded)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infopt.studies.records", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the studies and what each answers")
    regen = sub.add_parser("regenerate", help="run studies (resuming) and refresh their records under results/")
    regen.add_argument("studies", nargs="+", help=f"study names or 'all' ({', '.join(STUDIES)})")
    regen.add_argument("--override", action="append", default=[], help="an extra override for every job")
    regen.add_argument("--sweep", action="append", type=int, default=[],
                       help="run only this sweep of each study (1 = the experiment as configured, 2 = its extra "
                            "seeds where it has them); repeatable; default all")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "list":
        for s in STUDIES.values():
            records = len(list((RESULTS / s.name).rglob("results.json")))
            print(f"{s.name:30s} {records:3d} record(s)  {s.question}")
        return 0
    names = list(STUDIES) if args.studies == ["all"] else args.studies
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        print(f"infopt: error: unknown study {', '.join(unknown)}; studies: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    for name in names:
        regenerate(name, args.override, sweeps=args.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
