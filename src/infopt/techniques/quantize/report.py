"""Markdown table of quantization runs: python -m infopt.techniques.quantize.report outputs/table"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/table")
order = [
    "rtn_w8pc",
    "gptq_w8pc",
    "rtn_w8g64",
    "gptq_w8g64",
    "rtn_w4pc",
    "gptq_w4pc",
    "rtn_w4g64",
    "gptq_w4g64",
    "awq_w4g64",
    "rtn_w3pc",
    "gptq_w3pc",
    "rtn_w3g64",
    "gptq_w3g64",
    "sq_w8a8",
    "llm_int8",
    "dyn_int8_intmm",
    "dyn_int8_torchao",
]
rows = []
base = None


def f(x, p=2):
    return "" if x is None else (f"{x:.{p}f}" if isinstance(x, float) else str(x))


for name in order:
    p = root / name / "results.json"
    if not p.exists():
        continue
    r = json.loads(p.read_text())
    if base is None:
        base = r["baseline"]
    e, b, t, ra = r["result"]["eval"], r["result"]["bench"], r["technique"], r["ratios"]
    rows.append(
        [
            name,
            t["method"],
            t["execution"],
            next((v for k, v in e.items() if k.startswith("heldout/token_perplexity")), None),
            e.get("heldout/word_perplexity"),
            e.get("analogy/acc"),
            ra.get("eval/heldout/word_perplexity/recovery"),
            b.get("stored_mb"),
            t["metrics"].get("export_mb"),
            b.get("decode_tokens_per_s_b1"),
            ra.get("bench/decode_tokens_per_s_b1/speedup"),
            b.get("decode_tokens_per_s_b8"),
            t["metrics"].get("quantize_wall_s"),
            b.get("peak_rss_mb"),
        ]
    )
hdr = [
    "run",
    "method",
    "execution",
    "token ppl",
    "word ppl",
    "analogy acc",
    "recovery (word ppl)",
    "stored MB (in memory)",
    "export MB (on disk)",
    "decode tok/s b1",
    "speedup b1",
    "decode tok/s b8",
    "quantize s",
    "peak RSS MB",
]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
if base:
    e, b = base["eval"], base["bench"]
    print(
        "| "
        + " | ".join(
            [
                "baseline fp32",
                "-",
                "dense",
                f(
                    next(
                        (v for k, v in e.items() if k.startswith("heldout/token_perplexity")), None
                    )
                ),
                f(e.get("heldout/word_perplexity")),
                f(e.get("analogy/acc"), 3),
                "1.00",
                f(b.get("stored_mb"), 1),
                "",
                f(b.get("decode_tokens_per_s_b1"), 1),
                "1.00",
                f(b.get("decode_tokens_per_s_b8"), 1),
                "",
                f(b.get("peak_rss_mb"), 0),
            ]
        )
        + " |"
    )
for r in rows:
    print(
        "| "
        + " | ".join(
            [
                r[0],
                r[1],
                r[2],
                f(r[3]),
                f(r[4]),
                f(r[5], 3),
                f(r[6], 3),
                f(r[7], 1),
                f(r[8], 1),
                f(r[9], 1),
                f(r[10]),
                f(r[11], 1),
                f(r[12], 1),
                f(r[13], 0),
            ]
        )
        + " |"
    )
