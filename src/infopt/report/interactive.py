"""Interactive Pareto plots (plotly) for the HTML report: hover shows a run and its numbers with their
intervals, clicking a family in the legend hides or shows it, error bars are the 95% intervals."""

from __future__ import annotations

from typing import Any

from infopt.report.analysis import bounds
from infopt.report.plots import COST_LABELS

FAMILY_COLORS = {
    "baseline": "#000000",
    "quantization": "#1f77b4",
    "pruning": "#2ca02c",
    "distillation": "#9467bd",
    "architecture": "#ff7f0e",
    "study": "#8c564b",
}


def _fmt(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.4g}"


def _with_interval(p: dict[str, Any], key: str) -> str:
    b = bounds(p, key)
    if b is None:
        return "-"
    value = _fmt(p[key])
    return value if b[0] == b[1] else f"{value} [{_fmt(b[0])}, {_fmt(b[1])}]"


def hover(p: dict[str, Any], cost: str, metric: str) -> str:
    lines = [
        f"<b>{p.get('name')}</b> ({p.get('family') or p.get('technique')}, {p.get('execution') or 'dense'})",
        f"{metric}: {_with_interval(p, 'quality')}",
        f"recovery: {_with_interval(p, 'recovery')}",
        f"{COST_LABELS.get(cost, cost)}: {_with_interval(p, cost)}",
        f"stored MiB: {_fmt(p.get('stored_mb'))}, decode tok/s b1: {_with_interval(p, 'decode_tokens_per_s_b1')}",
    ]
    if p.get("n", 1) > 1:
        lines.append(f"{p['n']} seeds: intervals are 95% t-intervals over seeds")
    if p.get("pareto"):
        lines.append("Pareto-optimal (no point beats it beyond the intervals)")
    return "<br>".join(lines)


def _error(points: list[dict[str, Any]], key: str) -> dict[str, Any]:
    plus, minus = [], []
    for p in points:
        b = bounds(p, key)
        plus.append(b[1] - p[key] if b else 0)
        minus.append(p[key] - b[0] if b else 0)
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus, "thickness": 1}


def pareto_figure(points: list[dict[str, Any]], cost: str, metric: str, higher_is_better: bool, title: str):
    """A plotly Figure: one trace per family (toggled from the legend), baselines as stars, the front as a line."""
    import plotly.graph_objects as go

    drawn = [p for p in points if bounds(p, cost) and bounds(p, "quality")]
    fig = go.Figure()
    for family in sorted({p.get("family") or p.get("technique") or "?" for p in drawn}):
        members = [p for p in drawn if (p.get("family") or p.get("technique") or "?") == family]
        fig.add_trace(go.Scatter(
            x=[p[cost] for p in members], y=[p["quality"] for p in members], mode="markers", name=family,
            marker={"color": FAMILY_COLORS.get(family, "#7f7f7f"), "size": [14 if p.get("is_baseline") else 9 for p in members],
                    "symbol": ["star" if p.get("is_baseline") else ("circle" if p.get("pareto") else "circle-open") for p in members],
                    "line": {"width": 1.5}},
            error_x=_error(members, cost), error_y=_error(members, "quality"),
            text=[hover(p, cost, metric) for p in members], hovertemplate="%{text}<extra></extra>",
        ))  # fmt: skip
    front = sorted((p for p in drawn if p.get("pareto")), key=lambda p: p[cost])
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[p[cost] for p in front], y=[p["quality"] for p in front], mode="lines",
                                 line={"shape": "hv", "color": "rgba(214,39,40,0.4)"}, name="Pareto front",
                                 hoverinfo="skip"))  # fmt: skip
    qualities = [p["quality"] for p in drawn]
    log_y = not higher_is_better and qualities and min(qualities) > 0 and max(qualities) / min(qualities) > 10
    fig.update_layout(
        title={"text": title, "font": {"size": 13}}, height=460, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis_title=COST_LABELS.get(cost, cost), yaxis_title=f"{metric} ({'higher' if higher_is_better else 'lower'} is better)",
        yaxis_type="log" if log_y else "linear", legend={"title": "family (click to hide)"}, template="plotly_white",
    )  # fmt: skip
    return fig


def figure_html(fig, div_id: str) -> str:
    """The figure as a <div> that reads plotly.js from the page's own plotly.min.js (offline)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})


def write_plotly_js(directory) -> None:
    """plotly.min.js beside the page, once: the page works offline and without a CDN."""
    from pathlib import Path

    from plotly.offline import get_plotlyjs

    target = Path(directory) / "plotly.min.js"
    if not target.is_file():
        from infopt.io import atomic_write_text

        atomic_write_text(target, get_plotlyjs())
