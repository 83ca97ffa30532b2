"""Students table of a distillation sweep (experiment=kd_ablation / kd_student), from results.json only.

    python scripts/distill_summary.py outputs/sweeps/kd_ablation [more dirs] [--out table.md]

One row per run: which teacher (stage 0 of a kd_ablation arm, else the full model), how many training
documents, loss and data mode, the student's size, the teacher's and the student's loss on the same
held-out blocks (as perplexities), the run's held-out token perplexity and its recovery against the
full teacher (the run's baseline), and the decode speedup at batch 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def _distill_stage(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float], str]:
    """(distill config, distill metrics, teacher label) of a plain distill run or a pipeline arm."""
    tech = record["config"]["technique"]
    if tech.get("name") == "pipeline":
        stages = tech["stages"]
        idx = next(i for i, s in enumerate(stages) if s.get("name") == "distill")
        before = [s for s in stages[:idx] if s.get("name") != "baseline"]
        label = " + ".join(
            "{name} {method} {bits}".format(
                name=s["name"], method=s.get("method", ""), bits=f"{s['bits']}-bit" if s.get("bits") else ""
            ).strip()
            for s in before
        )
        prefix = f"stage{idx + 1}_distill/"
        metrics = {k[len(prefix) :]: v for k, v in record["technique"]["metrics"].items() if k.startswith(prefix)}
        return stages[idx], metrics, label or "full"
    return tech, record["technique"]["metrics"], "full"


def _ppl(loss: float | None) -> float | None:
    return math.exp(loss) if loss is not None and math.isfinite(loss) else None


def rows(dirs: list[Path]) -> list[dict[str, Any]]:
    out = []
    for d in dirs:
        for path in sorted(d.rglob("results.json")):
            record = json.loads(path.read_text())
            if "distill" not in json.dumps(record["config"]["technique"]):
                continue
            cfg, m, teacher = _distill_stage(record)
            loss = {
                k: v
                for k, v in (cfg.get("loss") or {}).items()
                if k in ("ce", "forward_kl", "reverse_kl", "gjs", "skew_kl", "hidden") and v
            }
            ev = (record.get("result") or {}).get("eval", {})
            ratios = record.get("ratios", {})
            out.append(
                {
                    "teacher": teacher,
                    "train docs": (cfg.get("data") or {}).get("train_docs") or "all",
                    "mode": (cfg.get("data") or {}).get("mode", "online"),
                    "loss": " + ".join(f"{v:g} {k}" for k, v in loss.items()),
                    "student layers": m.get("student_layers"),
                    "params x teacher": m.get("param_ratio"),
                    "train tokens": m.get("train_tokens"),
                    "teacher val ppl": _ppl(m.get("teacher_val_loss")),
                    "student val ppl": _ppl(m.get("val_loss")),
                    "heldout token ppl": ev.get("heldout/token_perplexity_w512"),
                    "ppl recovery": ratios.get("eval/heldout/token_perplexity_w512/recovery"),
                    "decode speedup b1": ratios.get("bench/decode_tokens_per_s_b1/speedup"),
                    "train tok/s": m.get("train_tokens_per_s_median"),
                }
            )
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "(no distillation results)"
    cols = list(table[0])

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    text = markdown(rows(args.dirs))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
