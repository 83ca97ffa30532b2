"""What keeps each notebook in notebooks/ to a few cells: its study's committed records, as a table,
as Pareto figures (matplotlib: PNG outputs GitHub shows), and the study's claims asserted.

``results_dir(study)`` is ``results/<study>`` of this checkout, or ``$INFOPT_RESULTS/<study>`` when set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from infopt.report import analysis, load, plots

TABLE_COLUMNS = ["name", "family", "n", "quality", "quality_low", "quality_high", "recovery", "stored_mb",
                 "compression", "decode_tokens_per_s_b1", "decode_speedup_b1", "predicted_speedup"]  # fmt: skip
REPO = Path(__file__).resolve().parents[3]


def results_dir(study: str) -> Path:
    root = Path(os.environ["INFOPT_RESULTS"]) if os.environ.get("INFOPT_RESULTS") else REPO / "results"
    return root / study


def study(name: str, metric: str | None = None) -> list[dict[str, Any]]:
    """The study's runs, seeds aggregated, each with its quality interval."""
    return analysis.aggregate_seeds(load.rows(results_dir(name), metric))


def table(rows: list[dict[str, Any]]):
    """The rows as a DataFrame with the columns a reader compares."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    return frame[[c for c in TABLE_COLUMNS if c in frame.columns]]


def pareto_figure(rows: list[dict[str, Any]], cost: str = "stored_mb"):
    """One Pareto panel per eval setting (and per hardware for latency costs), intervals as error bars."""
    import matplotlib.pyplot as plt

    keys = ("eval_key",) if cost == "stored_mb" else ("eval_key", "hardware")
    groups = sorted(analysis.group_by(rows, *keys).items(), key=lambda kv: str(kv[0]))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(7.5 * max(len(groups), 1), 4.8), squeeze=False)
    for ax, (key, members) in zip(axes[0], groups, strict=False):
        points = analysis.pareto_points(members, cost)
        plots.pareto_axes(ax, points, cost, members[0]["metric"], members[0]["higher_is_better"])
        ax.set_title(" | ".join(str(k) for k in key), fontsize=8)
    fig.tight_layout()
    return fig


def assert_claims(name: str) -> list[str]:
    """The study's conclusions, each checked on its records (AssertionError naming any that fails)."""
    from infopt.report.claims import check

    results = check(name, results_dir(name).parent)
    failed = [c.text for c, holds in results if not holds]
    assert not failed, f"claims that the records of {name} do not support: {failed}"
    return [c.text for c, _ in results]


def layer_heatmap_figures(name: str) -> list[Any]:
    """One heatmap per layer-sensitivity run of the study."""
    import matplotlib.pyplot as plt

    figs = []
    for record, (layers, parts, matrix) in load.layer_sensitivity(results_dir(name)):
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
