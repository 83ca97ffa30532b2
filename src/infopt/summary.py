"""The table printed at the end of a run: baseline, result, ratio, for the numbers that matter."""

from __future__ import annotations

from typing import Any

from infopt.results import COUNT_KEYS

HEADLINE_BENCH = (
    "stored_mb",
    "params",
    "prefill_ms_b1",
    "decode_tokens_per_s_b1",
    "decode_tokens_per_s_b8",
    "peak_rss_mb",
    "peak_memory_mb",
    "predicted_decode_tokens_per_s_b1",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e5:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def rows(record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    base = record.get("baseline") or {}
    res = record.get("result") or {}
    ratios = record.get("ratios") or {}
    out = []
    for key in sorted(res.get("eval") or {}):
        if key.endswith("_stderr") or key.split("/")[-1] in COUNT_KEYS:
            continue
        ratio = ratios.get(f"eval/{key}/recovery")
        out.append(
            (
                f"eval/{key}",
                _fmt((base.get("eval") or {}).get(key)),
                _fmt(res["eval"][key]),
                f"recovery {ratio:.3f}" if ratio else "",
            )
        )
    bench = res.get("bench") or {}
    for key in HEADLINE_BENCH:
        if key not in bench:
            continue
        ratio = next(
            (
                f"{name} {v:.2f}x"
                for k, v in ratios.items()
                for name in [k.rsplit("/", 1)[-1]]
                if k.startswith(f"bench/{key}/")
            ),
            "",
        )
        out.append(
            (f"bench/{key}", _fmt((base.get("bench") or {}).get(key)), _fmt(bench[key]), ratio)
        )
    for key, value in sorted((record.get("technique") or {}).get("metrics", {}).items()):
        out.append((f"technique/{key}", "", _fmt(value), ""))
    return out


# Ratios shown per pipeline stage: quality kept, size, decode speed.
STAGE_RATIOS = ("eval/heldout/word_perplexity/recovery", "bench/stored_mb/compression", "bench/decode_tokens_per_s_b1/speedup")


def stage_rows(stages: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """A pipeline's stages as a table: cumulative (vs baseline) and per-stage (vs previous) ratios."""
    columns = ["step", "stage", "execution"]
    columns += [f"cumulative {k.split('/')[-2]} {k.split('/')[-1]}" for k in STAGE_RATIOS]
    columns += [f"stage {k.split('/')[-2]} {k.split('/')[-1]}" for k in STAGE_RATIOS]
    table = []
    for st in stages:
        ratios = st.get("ratios") or {}
        label = st["name"] + (f" ({st['method']})" if st.get("method") else "")
        row: list[Any] = [st["step"], label, st["execution"]]
        row += [(ratios.get("cumulative") or {}).get(k) for k in STAGE_RATIOS]
        row += [(ratios.get("stage") or {}).get(k) for k in STAGE_RATIOS]
        table.append(row)
    return columns, table


def print_summary(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Run names and notes hold overrides such as data.files=[/a.txt]: text, never rich markup.
    tech = record.get("technique") or {}
    title = escape(f"{record['run']['name']}  [{tech.get('name')}, execution={tech.get('execution')}]")
    table = Table(title=title)
    for col in ("metric", "baseline", "result", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows(record):
        table.add_row(*(escape(str(v)) for v in r))
    console = Console()
    console.print(table)
    if record.get("stages"):
        columns, stage_table = stage_rows(record["stages"])
        st = Table(title="pipeline stages (cumulative: vs baseline; stage: vs the previous stage)")
        for col in columns:
            st.add_column(col, justify="right")
        for r in stage_table:
            st.add_row(*(escape(_fmt(v)) for v in r))
        console.print(st)
    for note in tech.get("notes", []):
        console.print(escape(f"note: {note}"))
    console.print(escape(f"results: {record['run']['output_dir']}/results.json"))
