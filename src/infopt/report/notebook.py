"""Small helpers that keep each notebook in notebooks/ to a few cells.

``results_dir(default)`` reads ``INFOPT_RESULTS`` (the test suite points it at tiny-model runs);
the figure helpers draw on matplotlib axes the same way as the HTML report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from infopt.report import analysis, load, plots

TABLE_COLUMNS = [
    "name",
    "model",
    "label",
    "execution",
    "quality",
    "recovery",
    "stored_mb",
    "compression",
    "decode_ms_per_token_b1",
    "decode_tokens_per_s_b1",
    "hardware",
]


def results_dir(default: str) -> Path:
    """``$INFOPT_RESULTS`` if set, else ``default`` (relative to the repository root)."""
    env = os.environ.get("INFOPT_RESULTS")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[3]
    return root / default


def table(path: str | Path, metric: str | None = None):
    """The runs under ``path``, seeds aggregated, as a DataFrame."""
    import pandas as pd

    rows = analysis.aggregate_seeds(load.rows(path, metric))
    return (
        pd.DataFrame(rows)[[*TABLE_COLUMNS, "n"]] if rows else pd.DataFrame(columns=TABLE_COLUMNS)
    )


def pareto_figure(path: str | Path, cost: str = "stored_mb", metric: str | None = None):
    """One Pareto panel per eval setting (and per hardware for latency costs)."""
    import matplotlib.pyplot as plt

    rows = analysis.aggregate_seeds(load.rows(path, metric))
    keys = ("eval_key",) if cost == "stored_mb" else ("eval_key", "hardware")
    groups = sorted(analysis.group_by(rows, *keys).items(), key=lambda kv: str(kv[0]))
    fig, axes = plt.subplots(
        1, max(len(groups), 1), figsize=(7 * max(len(groups), 1), 4.5), squeeze=False
    )
    for ax, (key, members) in zip(axes[0], groups, strict=False):
        points = analysis.pareto_points(members, cost)
        plots.pareto_axes(ax, points, cost, members[0]["metric"], members[0]["higher_is_better"])
        ax.set_title(" | ".join(str(k) for k in key), fontsize=8)
    fig.tight_layout()
    return fig


def order_effects_figure(path: str | Path, metric: str | None = None):
    """Quality of each pipeline in its listed order (A) and reversed (B)."""
    import matplotlib.pyplot as plt

    effects = analysis.order_effects(load.rows(path, metric))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, e in enumerate(effects):
        ax.bar(
            [2 * i, 2 * i + 0.8],
            [e["quality_forward"], e["quality_reversed"]],
            width=0.7,
            color=["tab:blue", "tab:orange"],
        )
        ax.text(
            2 * i + 0.4,
            max(e["quality_forward"], e["quality_reversed"]),
            f"A - B = {e['quality_difference']:.3g}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(
        [x for i in range(len(effects)) for x in (2 * i, 2 * i + 0.8)],
        [lbl for e in effects for lbl in (f"A: {e['forward']}", f"B: {e['reversed']}")],
        fontsize=7,
        rotation=15,
    )
    ax.set_ylabel(effects[0]["metric"] if effects else "quality")
    ax.set_title("order effects: the same stages in both orders", fontsize=9)
    fig.tight_layout()
    return fig, effects


def layer_heatmap_figures(path: str | Path) -> list[Any]:
    """One heatmap per layer-sensitivity run under ``path``."""
    import matplotlib.pyplot as plt

    figs = []
    for record, (layers, parts, matrix) in load.layer_sensitivity(path):
        fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(parts), 1.2 + 0.28 * len(layers)))
        im = ax.imshow(matrix, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(parts)), parts)
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, label="held-out loss change (nats/token)")
        ax.set_title(record["run"]["name"][:60], fontsize=8)
        fig.tight_layout()
        figs.append(fig)
    return figs
