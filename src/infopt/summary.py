"""The table printed at the end of a run: baseline, result, ratio, for the numbers that matter."""

from __future__ import annotations

from typing import Any

from infopt.results import is_point_metric

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


def _with_interval(values: dict[str, Any], key: str, fmt: str | None = None) -> str:
    """``value [low, high]`` when the 95% interval is there (``_ci95_low`` / ``_ci95_high`` keys)."""
    v = values.get(key)
    if v is None:
        return "-"
    show = (lambda x: fmt.format(x)) if fmt else _fmt
    lo, hi = values.get(f"{key}_ci95_low"), values.get(f"{key}_ci95_high")
    return f"{show(v)} [{show(lo)}, {show(hi)}]" if lo is not None and hi is not None else show(v)


def rows(record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    base = record.get("baseline") or {}
    res = record.get("result") or {}
    ratios = record.get("ratios") or {}
    out = []
    for key in sorted(res.get("eval") or {}):
        if not is_point_metric(key):
            continue
        ratio = _with_interval(ratios, f"eval/{key}/recovery", "{:.3f}")
        out.append(
            (
                f"eval/{key}",
                _with_interval(base.get("eval") or {}, key),
                _with_interval(res["eval"], key),
                f"recovery {ratio}" if ratio != "-" else "",
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
    """The summary table, stages and notes on stdout. Every piece of user text goes to rich as
    ``Text`` (``literal``): a run name or a path may hold brackets that rich would read as markup."""
    from rich.console import Console
    from rich.table import Table

    from infopt.console import literal

    tech = record.get("technique") or {}
    title = f"{record['run']['name']}  ({tech.get('name')}, execution={tech.get('execution')})"
    table = Table(title=literal(title))
    for col in ("metric", "baseline", "result", "ratio"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows(record):
        table.add_row(*(literal(c) for c in r))
    console = Console(highlight=False)
    console.print(table)
    if record.get("stages"):
        columns, stage_table = stage_rows(record["stages"])
        st = Table(title="pipeline stages (cumulative: vs baseline; stage: vs the previous stage)")
        for col in columns:
            st.add_column(literal(col), justify="right")
        for r in stage_table:
            st.add_row(*(literal(_fmt(v)) for v in r))
        console.print(st)
    for note in tech.get("notes", []):
        console.print(literal(f"note: {note}"))
    console.print(literal(f"results: {record['run']['output_dir']}/results.json"))
