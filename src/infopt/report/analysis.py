"""Pure functions over report rows: Pareto sets, seed aggregation, order-effect pairs, grouping."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

AGGREGATED = (
    "quality",
    "recovery",
    "stored_mb",
    "compression",
    "decode_ms_per_token_b1",
    "decode_tokens_per_s_b1",
    "decode_speedup_b1",
    "prefill_ms_b1",
    "prefill_tokens_per_s_b1",
    "peak_rss_mb",
    "objective",
)


def pareto_mask(
    costs: list[float], qualities: list[float], higher_is_better: bool = True
) -> list[bool]:
    """True for points no other point dominates (cost <= and quality at least as good, one strictly).

    Lower cost is better; quality is better when higher (or lower, with ``higher_is_better=False``).
    Points with a missing (None/NaN) coordinate are never Pareto-optimal and dominate nothing.
    """
    sign = 1.0 if higher_is_better else -1.0

    def ok(x: float | None) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    pts = [
        (c, sign * q) if ok(c) and ok(q) else None for c, q in zip(costs, qualities, strict=True)
    ]
    mask = []
    for i, p in enumerate(pts):
        if p is None:
            mask.append(False)
            continue
        dominated = any(
            j != i
            and o is not None
            and o[0] <= p[0]
            and o[1] >= p[1]
            and (o[0] < p[0] or o[1] > p[1])
            for j, o in enumerate(pts)
        )
        mask.append(not dominated)
    return mask


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile (scipy when present, else a table accurate to 3 decimals)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        table = {
            1: 12.706,
            2: 4.303,
            3: 3.182,
            4: 2.776,
            5: 2.571,
            6: 2.447,
            7: 2.365,
            8: 2.306,
            9: 2.262,
            10: 2.228,
        }
        return table.get(df, 1.96 + 2.5 / df)


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t confidence interval; None for a single value)."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that differ only in seed (same ``setting_key``) merged: means, ``<key>_ci`` 95% half-widths, ``n``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["setting_key"]].append(r)
    out = []
    for members in groups.values():
        agg = dict(members[0])
        agg["n"] = len(members)
        agg["seeds"] = sorted({(m.get("seed"), m.get("data_seed")) for m in members}, key=str)
        agg["dirs"] = [m["dir"] for m in members]
        for key in AGGREGATED:
            values = [m.get(key) for m in members if m.get(key) is not None]
            if not values:
                agg[key], agg[f"{key}_ci"] = None, None
                continue
            agg[key], agg[f"{key}_ci"] = mean_ci(values)
        out.append(agg)
    return out


def group_by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return dict(groups)


def baseline_points(rows: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """One point per distinct baseline measurement (model x eval x bench x hardware) in ``rows``."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = r.get("baseline_key")
        if (
            key
            and key not in seen
            and r.get("baseline_quality") is not None
            and r.get(f"baseline_{cost}") is not None
        ):
            seen[key] = {
                "name": f"baseline ({r['model']})",
                "label": "baseline",
                "model": r["model"],
                "baseline_key": key,
                "quality": r["baseline_quality"],
                cost: r[f"baseline_{cost}"],
                "technique": "baseline",
            }
    return list(seen.values())


def pareto_points(rows: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Runs plus their baselines (once each), every point with ``is_baseline`` and ``pareto`` set."""
    points = [dict(r, is_baseline=r.get("technique") == "baseline") for r in rows]
    # A baseline is drawn once per distinct point: measured on two machines, it has one size.
    seen = {(p.get("model"), p.get("quality"), p.get(cost)) for p in points if p["is_baseline"]}
    seen |= {p.get("baseline_key") for p in points if p["is_baseline"]}
    for b in baseline_points(rows, cost):
        if b["baseline_key"] not in seen and (b["model"], b["quality"], b[cost]) not in seen:
            seen |= {b["baseline_key"], (b["model"], b["quality"], b[cost])}
            points.append(dict(b, is_baseline=True))
    higher = rows[0]["higher_is_better"] if rows else True
    mask = pareto_mask([p.get(cost) for p in points], [p.get("quality") for p in points], higher)
    for p, m in zip(points, mask, strict=True):
        p["pareto"] = m
    return points


def order_effects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pipelines run in both orders (``technique.reverse``): forward vs reversed, and the difference."""
    out = []
    for key, members in group_by([r for r in rows if r.get("order_key")], "order_key").items():
        fwd = [m for m in members if not m.get("reverse")]
        rev = [m for m in members if m.get("reverse")]
        if not fwd or not rev:
            continue
        f, r = aggregate_seeds(fwd)[0], aggregate_seeds(rev)[0]
        entry = {
            "order_key": key[0],
            "forward": f["label"],
            "reversed": r["label"],
            "metric": f["metric"],
        }
        for k in ("quality", "recovery", "stored_mb", "decode_ms_per_token_b1"):
            a, b = f.get(k), r.get(k)
            entry[f"{k}_forward"], entry[f"{k}_reversed"] = a, b
            entry[f"{k}_difference"] = None if a is None or b is None else a - b
        out.append(entry)
    return out
