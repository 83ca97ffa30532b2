"""Figures as PNG bytes (matplotlib, Agg backend): Pareto plots and the layer-sensitivity heatmap."""

from __future__ import annotations

import io
import math
from typing import Any

COST_LABELS = {
    "stored_mb": "stored size (MiB)",
    "decode_ms_per_token_b1": "decode latency, batch 1 (ms/token)",
    "prefill_ms_b1": "prefill latency, batch 1 (ms)",
}


def _figure(width: float = 7.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=110)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _error(p: dict[str, Any], key: str) -> list[list[float]] | None:
    """Asymmetric error bar [[below], [above]] from the point's interval (None without one)."""
    from infopt.report.analysis import bounds

    b = bounds(p, key)
    return None if b is None or b[0] == b[1] else [[p[key] - b[0]], [b[1] - p[key]]]


def pareto_axes(
    ax, points: list[dict[str, Any]], cost: str, metric: str, higher_is_better: bool
) -> None:
    """Draw runs (error bars: their 95% intervals), baselines (stars) and the Pareto front on ``ax``."""
    drawn = [p for p in points if _finite(p.get(cost)) and _finite(p.get("quality"))]
    several_models = len({p.get("model") for p in drawn}) > 1
    for p in drawn:
        xerr, yerr = _error(p, cost), _error(p, "quality")
        if p.get("is_baseline"):
            edge = "tab:red" if p.get("pareto") else "black"
            ax.plot(
                p[cost],
                p["quality"],
                marker="*",
                markersize=16,
                color="black",
                markeredgecolor=edge,
                markeredgewidth=1.5,
                linestyle="none",
                zorder=4,
            )
        else:  # Pareto-optimal in red, dominated in grey; error bars are the 95% intervals
            style = {"markersize": 8, "color": "tab:red", "zorder": 3} if p.get("pareto") else {
                "markersize": 6, "color": "tab:gray", "alpha": 0.8, "zorder": 2}  # fmt: skip
            ax.errorbar(p[cost], p["quality"], xerr=xerr, yerr=yerr, fmt="o", ecolor=style["color"], capsize=3, **style)
        label = p.get("label") or p.get("name") or ""
        if several_models:
            label += f" [{p.get('model')}]"
        if p.get("n", 1) > 1:
            label += f" (n={p['n']})"
        ax.annotate(
            label, (p[cost], p["quality"]), textcoords="offset points", xytext=(5, 4), fontsize=7
        )
    front = sorted((p for p in drawn if p.get("pareto")), key=lambda p: p[cost])
    if len(front) > 1:
        ax.step(
            [p[cost] for p in front],
            [p["quality"] for p in front],
            where="post",
            color="tab:red",
            alpha=0.5,
            zorder=1,
        )
    qualities = [p["quality"] for p in drawn]
    if (
        not higher_is_better
        and qualities
        and min(qualities) > 0
        and max(qualities) / min(qualities) > 10
    ):
        ax.set_yscale("log")
    ax.set_xlabel(COST_LABELS.get(cost, cost))
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [], [], marker="*", color="black", linestyle="none", markersize=12, label="baseline"
        ),
        Line2D([], [], marker="o", color="tab:red", linestyle="none", label="Pareto-optimal"),
        Line2D([], [], marker="o", color="tab:gray", linestyle="none", label="dominated"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def pareto_png(
    points: list[dict[str, Any]], cost: str, metric: str, higher_is_better: bool, title: str
) -> bytes:
    plt, fig, ax = _figure()
    import textwrap

    pareto_axes(ax, points, cost, metric, higher_is_better)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    return _png(plt, fig)


def layer_heatmap_png(
    layers: list[int], parts: list[str], matrix: list[list[float]], title: str
) -> bytes:
    """Layers down, parts across; colour = held-out loss change when only that part is changed."""
    plt, fig, ax = _figure(
        width=2.2 + 1.3 * max(len(parts), 1), height=1.2 + 0.28 * max(len(layers), 1)
    )
    im = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(parts)), parts)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    ax.set_ylabel("layer")
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            if _finite(v) and len(layers) <= 40:
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label="held-out loss change (nats/token)")
    ax.set_title(title, fontsize=8, wrap=True)
    return _png(plt, fig)
