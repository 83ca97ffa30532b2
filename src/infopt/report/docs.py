"""Numbers in README.md and docs/*.md, rendered from the committed records under ``results/``.

A rendered block sits between two HTML comments, which GitHub does not show:

    <!-- infopt:render table study=quant_grid columns=name,quality,recovery sort=quality -->
    | run | quality | recovery |
    ...
    <!-- infopt:end -->

``python -m infopt.report --docs`` rewrites every block from the records; ``--docs --check`` rewrites
nothing and exits 1 naming each block whose text differs from what its records give (the test suite
runs the check, so the docs and the records cannot drift apart). Views:

- ``table study=S [columns=k,...] [sort=k] [where=k:v]``: the study's runs (seeds aggregated), one row
  per setting, named by what differs, quality and speeds with their intervals.
- ``value study=S row=NAME key=K``: one number of one row (for prose), with its interval when it has one.
- ``claims study=S``: the study's conclusions (``report/claims.py``), each checked on the records.
- ``walltime``: every study's records, runs and summed wall time on the machine that made them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infopt.errors import InfoptError
from infopt.report import analysis, load
from infopt.report.build import COLUMNS, cell, markdown_table

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "results"
# A block view's opening comment ends its line; a value sits inline: <!-- ...value... -->2.56<!-- infopt:end -->
BLOCK = re.compile(r"(<!-- infopt:render (?P<spec>[^\n]*?) -->\n?)(?P<body>.*?)(<!-- infopt:end -->)", re.S)
TITLES = {key: title for key, title, _ in COLUMNS} | {
    "label": "run", "quality_low": "low", "llamacpp_decode_tokens_per_s_b1": "llama.cpp tok/s b1",
    "decode_ms_per_token_b1": "ms/token b1", "prefill_ms_b1": "prefill ms b1", "params": "params",
    "weight_mb_per_token": "MiB read/token", "peak_rss_mb": "peak RSS MiB", "wall_s": "wall s",
    "decode_tokens_per_s_b8": "tok/s b8", "baseline_quality": "baseline quality",
}  # fmt: skip
INTERVAL_KEYS = {"quality", "recovery", "decode_tokens_per_s_b1", "decode_tokens_per_s_b8", "decode_speedup_b1",
                 "decode_ms_per_token_b1"}  # fmt: skip


class DocsError(InfoptError):
    pass


def study_rows(study: str, results: Path = RESULTS, metric: str | None = None) -> list[dict[str, Any]]:
    """The study's runs as report rows, seeds aggregated (DocsError when it has no records)."""
    folder = results / study
    if not any(folder.rglob("results.json")):
        raise DocsError(f"no records for study {study!r} under {folder}: regenerate it (make results STUDY={study})")
    return analysis.aggregate_seeds(load.rows(folder, metric))


def _where(rows: list[dict[str, Any]], spec: str | None) -> list[dict[str, Any]]:
    if not spec:
        return rows
    key, _, value = spec.partition(":")
    return [r for r in rows if str(r.get(key)) == value]


def table_view(args: dict[str, str], results: Path) -> str:
    rows = _where(study_rows(args["study"], results, args.get("metric")), args.get("where"))
    if args.get("sort"):
        key = args["sort"]
        rows.sort(key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else 0))
    keys = args.get("columns", "name,quality,recovery,stored_mb,decode_tokens_per_s_b1,decode_speedup_b1").split(",")
    columns = [(k, TITLES.get(k, k.replace("_", " ")), k in INTERVAL_KEYS) for k in keys]
    metric = rows[0]["metric"] if rows else "?"
    return markdown_table(rows, columns).replace("| quality |", f"| {metric} |", 1) + "\n"


def value_view(args: dict[str, str], results: Path) -> str:
    rows = [r for r in study_rows(args["study"], results, args.get("metric")) if r["name"] == args["row"]]
    if len(rows) != 1:
        names = ", ".join(r["name"] for r in study_rows(args["study"], results, args.get("metric")))
        raise DocsError(f"value: row {args['row']!r} of study {args['study']} matches {len(rows)} runs; rows: {names}")
    return cell(rows[0], args["key"], args["key"] in INTERVAL_KEYS)


def claims_view(args: dict[str, str], results: Path) -> str:
    from infopt.report.claims import check

    lines = []
    for claim, holds in check(args["study"], results):
        mark = "holds" if holds else "DOES NOT HOLD"
        lines.append(f"- {claim.text} ({mark} on the committed records)")
    return "\n".join(lines) + "\n"


def walltime_view(args: dict[str, str], results: Path) -> str:
    from infopt.studies.records import STUDIES

    lines = ["| study | records | wall time on the machine that made them |", "|---|---|---|"]
    for name in STUDIES:
        records = load.load_records([results / name]) if (results / name).is_dir() else []
        seconds = sum((r.get("run") or {}).get("wall_s") or 0 for r in records)
        lines.append(f"| {name} | {len(records)} | {seconds / 60:.0f} min |")
    return "\n".join(lines) + "\n"


VIEWS: dict[str, Callable[[dict[str, str], Path], str]] = {
    "table": table_view,
    "value": value_view,
    "claims": claims_view,
    "walltime": walltime_view,
}


def render_spec(spec: str, results: Path = RESULTS) -> str:
    view, *pairs = shlex.split(spec)
    if view not in VIEWS:
        raise DocsError(f"unknown view {view!r} in '<!-- infopt:render {spec} -->'; views: {', '.join(VIEWS)}")
    return VIEWS[view](dict(p.split("=", 1) for p in pairs), results)


def render_text(text: str, results: Path = RESULTS) -> str:
    def sub(m: re.Match) -> str:
        body = render_spec(m.group("spec"), results)
        if m.group(1).endswith("\n"):  # a block: the closing comment on its own line
            return m.group(1) + body + ("" if body.endswith("\n") else "\n") + m.group(4)
        return m.group(1) + body.strip() + m.group(4)

    return BLOCK.sub(sub, text)


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_docs(check: bool = False, root: Path = REPO, results: Path = RESULTS) -> list[str]:
    """Rewrite (or, with ``check``, compare) every rendered block; returns the files that differ."""
    from infopt.io import atomic_write_text

    stale = []
    for path in doc_files(root):
        text = path.read_text()
        if "<!-- infopt:render" not in text:
            continue
        new = render_text(text, results)
        if new != text:
            stale.append(str(path.relative_to(root)))
            if not check:
                atomic_write_text(path, new)
    return stale
