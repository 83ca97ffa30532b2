"""Assemble the report: an HTML page (interactive plots, a table that fits the window, details on demand),
a Markdown page (the same table, PNG plots) and pareto.json.

Grouping rules: quality against size is drawn per eval setting; quality against decode latency per
eval setting x hardware. When the runs span more than one group the page says so and each plot's title
names its group, so numbers from different machines or evals never share axes. Runs that differ only in
seed are one point: the mean, with a 95% t-interval over seeds as error bars; a single run shows its 95%
bootstrap interval over documents. A point is called Pareto-dominated only when another point beats it
beyond both intervals.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infopt.errors import InfoptError
from infopt.io import atomic_write_json, atomic_write_text
from infopt.report import analysis, interactive, load, plots

# (key, title, interval shown): the compact table; everything else is behind "details".
COLUMNS = [
    ("name", "run", False),
    ("family", "family", False),
    ("execution", "execution", False),
    ("n", "runs", False),
    ("quality", "quality", True),
    ("recovery", "recovery", True),
    ("stored_mb", "MiB", False),
    ("compression", "smaller", False),
    ("decode_tokens_per_s_b1", "tok/s b1", True),
    ("decode_speedup_b1", "speedup b1", True),
    ("predicted_speedup", "predicted", False),
    ("pareto_size", "front (size)", False),
    ("pareto_latency", "front (latency)", False),
]
DETAILS = [("model", "model"), ("hardware", "hardware"), ("eval_settings", "eval"), ("bench_settings", "bench"),
           ("seeds", "seeds"), ("dirs", "records"), ("git_commit", "git commit"), ("wall_s", "wall s")]  # fmt: skip
COSTS = ("stored_mb", "decode_ms_per_token_b1")


@dataclass
class Report:
    html: Path
    markdown: Path
    rows: list[dict[str, Any]]  # aggregated over seeds
    pareto: dict[str, list[str]] = field(default_factory=dict)  # plot title -> Pareto-optimal point names
    groups: int = 1


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def cell(r: dict[str, Any], key: str, interval: bool = False) -> str:
    """A value, with its interval as ``[low, high]`` when it has one."""
    text = fmt(r.get(key))
    b = analysis.bounds(r, key) if interval else None
    return f"{text} [{fmt(b[0])}, {fmt(b[1])}]" if b and b[0] != b[1] else text


def markdown_table(rows: list[dict[str, Any]], columns=COLUMNS) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r, k, i).replace("|", "/") for k, _, i in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def html_table(rows: list[dict[str, Any]], columns=COLUMNS, details: bool = True) -> str:
    """The first column opens the run's details (model, hardware, eval, records...) on click."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in columns)
    body = []
    for r in rows:
        cls = ' class="pareto"' if r.get("pareto_size") or r.get("pareto_latency") else ""
        cells = [f"<td>{html.escape(cell(r, k, i))}</td>" for k, _, i in columns]
        if details:
            more = "".join(f"<div><b>{html.escape(t)}</b>: {html.escape(fmt(r.get(k)))}</div>" for k, t in DETAILS)
            cells[0] = f"<td><details><summary>{html.escape(cell(r, columns[0][0]))}</summary>{more}</details></td>"
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1360px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 12.5px; margin: 1em 0; width: 100%; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; max-width: 26em; }
details summary { cursor: pointer; } details div { font-size: 11px; color: #555; text-align: left; }
tr.pareto td { background: #fff4f2; }
.note { background: #fffbe6; border: 1px solid #e6d280; padding: 0.4em 0.8em; font-size: 13px; }
.plot { width: 100%; }
"""


@dataclass
class _Page:
    html: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    pareto: dict[str, list[str]] = field(default_factory=dict)


def _plot(page: _Page, members, cost: str, group: str, stem: str, flag: str, figures: Path) -> None:
    points = analysis.pareto_points(members, cost)
    metric, higher = members[0]["metric"], members[0]["higher_is_better"]
    if not any(analysis.bounds(p, cost) and analysis.bounds(p, "quality") for p in points):
        return
    optimal = {p["setting_key"] for p in points if p.get("pareto") and p.get("setting_key")}
    for r in members:
        r[flag] = r.get(flag) or r["setting_key"] in optimal
    title = f"{metric} vs {plots.COST_LABELS.get(cost, cost)} | {group}"
    page.pareto[title] = [str(p.get("name")) for p in points if p.get("pareto")]
    fig = interactive.pareto_figure(points, cost, metric, higher, title)
    page.html.append(f"<div class='plot'>{interactive.figure_html(fig, stem)}</div>")
    (figures / f"{stem}.png").write_bytes(plots.pareto_png(points, cost, metric, higher, title))
    page.markdown.append(f"### {title}\n\n![{title}](figures/{stem}.png)\n\nPareto-optimal: {', '.join(page.pareto[title])}\n")


def _order_effects(page: _Page, raw: list[dict[str, Any]]) -> None:
    effects = analysis.order_effects(raw)
    if not effects:
        return
    cols = [("forward", "order A", False), ("reversed", "order B", False), ("quality_forward", "quality A", False),
            ("quality_reversed", "quality B", False), ("quality_difference", "A - B", False),
            ("recovery_difference", "recovery A - B", False), ("stored_mb_difference", "MiB A - B", False),
            ("decode_ms_per_token_b1_difference", "decode ms A - B", False)]  # fmt: skip
    page.html.append("<h2>Order effects</h2>" + html_table(effects, cols, details=False))
    page.markdown.append("## Order effects\n\n" + markdown_table(effects, cols) + "\n")


def _heatmaps(page: _Page, paths, figures: Path) -> None:
    # warn=False: load.rows has already named every file it skipped
    for j, (record, (layers, parts, matrix)) in enumerate(load.layer_sensitivity(list(paths), warn=False)):
        if not layers:
            continue
        t = f"layer sensitivity: {(record.get('run') or {}).get('name', '?')}"
        png = plots.layer_heatmap_png(layers, parts, matrix, t)
        (figures / f"layer_sensitivity_{j}.png").write_bytes(png)
        page.html.append(f"<h2>{html.escape(t)}</h2><img alt='layer sensitivity heatmap' src='figures/layer_sensitivity_{j}.png'>")
        page.markdown.append(f"## {t}\n\n![layer sensitivity](figures/layer_sensitivity_{j}.png)\n")


def _notes(rows: list[dict[str, Any]], eval_groups: int, hw_groups: int) -> list[str]:
    metric, higher = rows[0]["metric"], rows[0]["higher_is_better"]
    notes = [
        f"quality = {metric} ({'higher' if higher else 'lower'} is better); recovery = ratio to the run's own baseline, "
        "oriented so that > 1 is better. [low, high] = 95% interval: bootstrap over held-out documents for one run, "
        "t-interval over seeds when several runs share a setting; speeds show the min-max of the timed repeats. "
        "A point is dominated only when another beats it beyond both intervals."
    ]
    if eval_groups > 1 or hw_groups > 1:
        notes.append(
            f"These runs come from {eval_groups} eval setting(s) and {hw_groups} eval x hardware group(s). "
            "They are never mixed in one plot: each plot's title names its group."
        )
    return notes


def build_report(paths: list[str | Path], out_dir: str | Path, metric: str | None = None,
                 title: str = "infopt report") -> Report:  # fmt: skip
    raw = load.rows(list(paths), metric)
    if not raw:
        raise InfoptError(f"no readable results.json found under {', '.join(map(str, paths))}")
    rows = analysis.aggregate_seeds(raw)
    rows.sort(key=lambda r: (r["eval_key"], r["hardware"], str(r.get("family")), str(r["name"])))
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    eval_groups = analysis.group_by(rows, "eval_key")
    hw_groups = analysis.group_by(rows, "eval_key", "hardware")
    page = _Page()
    for i, ((_,), members) in enumerate(sorted(eval_groups.items())):
        _plot(page, members, "stored_mb", members[0]["eval_settings"], f"pareto_size_{i}", "pareto_size", figures)
    for i, ((_, hardware), members) in enumerate(sorted(hw_groups.items())):
        group = f"{members[0]['eval_settings']} | {hardware} | {members[0]['bench_settings']}"
        _plot(page, members, "decode_ms_per_token_b1", group, f"pareto_latency_{i}", "pareto_latency", figures)
    _order_effects(page, raw)
    _heatmaps(page, paths, figures)
    interactive.write_plotly_js(out)
    notes = _notes(rows, len(eval_groups), len(hw_groups))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_page = (
        f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style><script src='plotly.min.js'></script></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(raw)} run(s); generated {generated}.</p>"
        + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
        + "<h2>Runs</h2>" + html_table(rows) + "<h2>Pareto plots</h2>" + "".join(page.html) + "</body></html>"
    )  # fmt: skip
    md = (f"# {title}\n\n{len(raw)} run(s); generated {generated}.\n\n" + "".join(f"> {n}\n>\n" for n in notes)
          + "\n## Runs\n\n" + markdown_table(rows) + "\n\n## Pareto plots\n\n" + "\n".join(page.markdown))  # fmt: skip
    atomic_write_text(out / "index.html", html_page)
    atomic_write_text(out / "report.md", md)
    atomic_write_json(out / "pareto.json", page.pareto)
    return Report(out / "index.html", out / "report.md", rows, page.pareto, len(hw_groups))
