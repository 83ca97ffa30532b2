"""Assemble the report: a Markdown table, a self-contained HTML page (plots embedded), pareto.json.

Grouping rules: quality against size is drawn per eval setting; quality against decode latency per
eval setting x hardware. When the runs span more than one group the page says so at the top and
each plot's title names its group, so numbers from different machines or evals never share axes.
Runs that differ only in seed are one point: the mean, with a 95% confidence interval as error bars.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infopt.errors import InfoptError
from infopt.io import atomic_write_json, atomic_write_text
from infopt.report import analysis, load, plots

COLUMNS = [
    ("name", "run"),
    ("model", "model"),
    ("label", "technique"),
    ("execution", "execution"),
    ("n", "seeds"),
    ("quality", "quality"),
    ("recovery", "recovery"),
    ("stored_mb", "stored MiB"),
    ("compression", "compression"),
    ("decode_tokens_per_s_b1", "decode tok/s b1"),
    ("decode_ms_per_token_b1", "decode ms/tok b1"),
    ("prefill_ms_b1", "prefill ms b1"),
    ("pareto_size", "Pareto (size)"),
    ("pareto_latency", "Pareto (latency)"),
    ("hardware", "hardware"),
    ("eval_settings", "eval settings"),
]


@dataclass
class Report:
    html: Path
    markdown: Path
    rows: list[dict[str, Any]]  # aggregated over seeds
    pareto: dict[str, list[str]] = field(
        default_factory=dict
    )  # plot title -> Pareto-optimal point names
    groups: int = 1


def fmt(v: Any, ci: Any = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        s = f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3g}"
        if isinstance(ci, float) and math.isfinite(ci):
            s += f" ± {ci:.2g}"
        return s
    return str(v)


def _cell(r: dict[str, Any], key: str) -> str:
    return fmt(r.get(key), r.get(f"{key}_ci"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = [
        "| " + " | ".join(_cell(r, k).replace("|", "/") for k, _ in COLUMNS) + " |" for r in rows
    ]
    return "\n".join([head, sep, *body])


def html_table(columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = []
    for r in rows:
        cls = ' class="pareto"' if r.get("pareto_size") or r.get("pareto_latency") else ""
        body.append(
            f"<tr{cls}>"
            + "".join(f"<td>{html.escape(_cell(r, k))}</td>" for k, _ in columns)
            + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.pareto td { background: #fff1f0; }
.note { background: #fffbe6; border: 1px solid #e6d280; padding: 0.5em 1em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def build_report(
    paths: list[str | Path],
    out_dir: str | Path,
    metric: str | None = None,
    title: str = "infopt report",
) -> Report:
    raw = load.rows(list(paths), metric)
    if not raw:
        raise InfoptError(f"no results.json found under {', '.join(map(str, paths))}")
    rows = analysis.aggregate_seeds(raw)
    rows.sort(
        key=lambda r: (
            r["eval_key"],
            r["hardware"],
            str(r["model"]),
            str(r["label"]),
            str(r["name"]),
        )
    )
    metric = rows[0]["metric"]
    higher = rows[0]["higher_is_better"]
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    eval_groups = analysis.group_by(rows, "eval_key")
    hw_groups = analysis.group_by(rows, "eval_key", "hardware")
    notes = [
        f"quality = {metric} ({'higher' if higher else 'lower'} is better); recovery = ratio to the run's own "
        "baseline, oriented so that > 1 is better; ± = 95% confidence interval over seeds."
    ]
    if len(eval_groups) > 1 or len(hw_groups) > 1:
        notes.append(
            f"These runs come from {len(eval_groups)} eval setting(s) and {len(hw_groups)} eval x hardware "
            "group(s). They are never mixed in one plot: each plot's title names its group."
        )
    if any(r["n"] > 1 for r in rows):
        notes.append(
            "Runs that differ only in seed (calibration subset, training order) are aggregated: "
            "mean, and the 95% t-interval drawn as error bars."
        )

    sections_html: list[str] = []
    sections_md: list[str] = []
    pareto: dict[str, list[str]] = {}
    for r in rows:
        r["pareto_size"] = r["pareto_latency"] = False

    def plot(
        members: list[dict[str, Any]], cost: str, group_title: str, stem: str, flag: str
    ) -> None:
        points = analysis.pareto_points(members, cost)
        if not any(p.get(cost) is not None and p.get("quality") is not None for p in points):
            return
        optimal = {p["setting_key"] for p in points if p.get("pareto") and p.get("setting_key")}
        for r in members:
            r[flag] = r[flag] or r["setting_key"] in optimal
        plot_title = f"{metric} vs {plots.COST_LABELS.get(cost, cost)} | {group_title}"
        png = plots.pareto_png(points, cost, metric, higher, plot_title)
        (figures / f"{stem}.png").write_bytes(png)
        pareto[plot_title] = [str(p.get("name")) for p in points if p.get("pareto")]
        b64 = base64.b64encode(png).decode()
        sections_html.append(
            f"<h3>{html.escape(plot_title)}</h3><img alt='{html.escape(plot_title)}' src='data:image/png;base64,{b64}'>"
            f"<p>Pareto-optimal: {html.escape(', '.join(pareto[plot_title]))}</p>"
        )
        sections_md.append(
            f"### {plot_title}\n\n![{plot_title}](figures/{stem}.png)\n\nPareto-optimal: {', '.join(pareto[plot_title])}\n"
        )

    for i, ((_eval_key,), members) in enumerate(sorted(eval_groups.items())):
        plot(members, "stored_mb", members[0]["eval_settings"], f"pareto_size_{i}", "pareto_size")
    for i, ((_eval_key, hardware), members) in enumerate(sorted(hw_groups.items())):
        bench = members[0]["bench_settings"]
        plot(
            members,
            "decode_ms_per_token_b1",
            f"{members[0]['eval_settings']} | {hardware} | {bench}",
            f"pareto_latency_{i}",
            "pareto_latency",
        )

    # Order effects: pipelines run in both orders.
    effects = analysis.order_effects(raw)
    if effects:
        cols = [
            ("forward", "order A"),
            ("reversed", "order B"),
            ("quality_forward", "quality A"),
            ("quality_reversed", "quality B"),
            ("quality_difference", "A - B"),
            ("recovery_difference", "recovery A - B"),
            ("stored_mb_difference", "MiB A - B"),
            ("decode_ms_per_token_b1_difference", "decode ms A - B"),
        ]
        sections_html.append("<h2>Order effects</h2>" + html_table(cols, effects))
        md = [
            "| " + " | ".join(t for _, t in cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|",
        ]
        md += ["| " + " | ".join(fmt(e.get(k)) for k, _ in cols) + " |" for e in effects]
        sections_md.append("## Order effects\n\n" + "\n".join(md) + "\n")

    # Layer sensitivity heatmaps.
    for j, (record, (layers, parts, matrix)) in enumerate(load.layer_sensitivity(list(paths))):
        if not layers:
            continue
        name = (record.get("run") or {}).get("name", "?")
        inner = ((record.get("config") or {}).get("technique") or {}).get("inner", {})
        t = f"layer sensitivity: {name} (inner: {inner})"
        png = plots.layer_heatmap_png(layers, parts, matrix, t)
        (figures / f"layer_sensitivity_{j}.png").write_bytes(png)
        sections_html.append(
            f"<h2>{html.escape(t)}</h2><img alt='layer sensitivity heatmap' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        )
        sections_md.append(f"## {t}\n\n![layer sensitivity](figures/layer_sensitivity_{j}.png)\n")

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(raw)} run(s) from {html.escape(', '.join(map(str, paths)))}; generated {generated}.</p>"
        + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
        + "<h2>Runs</h2>"
        + html_table(COLUMNS, rows)
        + "<h2>Pareto plots</h2>"
        + "".join(sections_html)
        + "</body></html>"
    )
    md_text = (
        f"# {title}\n\n{len(raw)} run(s); generated {generated}.\n\n"
        + "".join(f"> {n}\n>\n" for n in notes)
        + "\n## Runs\n\n"
        + markdown_table(rows)
        + "\n\n## Pareto plots\n\n"
        + "\n".join(sections_md)
    )
    atomic_write_text(out / "index.html", page)
    atomic_write_text(out / "report.md", md_text)
    atomic_write_json(out / "pareto.json", pareto)
    return Report(
        html=out / "index.html",
        markdown=out / "report.md",
        rows=rows,
        pareto=pareto,
        groups=len(hw_groups),
    )
