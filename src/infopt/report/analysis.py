"""Pure functions over report rows: seed aggregation with intervals, Pareto sets that respect intervals,
order-effect pairs, grouping.

Every plotted or tabled number carries an interval ``(<key>_low, <key>_high)``: for quality and recovery
the 95% bootstrap interval over held-out documents (one run) or the 95% t-interval over seeds (several
runs of one setting); for speeds the min-max of the timed repeats; sizes are exact (low = high = value).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

# Aggregated over seeds: (key, how its interval is formed when a single run is shown).
AGGREGATED = (
    "quality",
    "recovery",
    "stored_mb",
    "compression",
    "decode_ms_per_token_b1",
    "decode_tokens_per_s_b1",
    "decode_tokens_per_s_b8",
    "decode_speedup_b1",
    "predicted_speedup",
    "prefill_ms_b1",
    "prefill_tokens_per_s_b1",
    "peak_rss_mb",
    "weight_mb_per_token",
    "objective",
    "wall_s",
)
SEED_INTERVAL = ("quality", "recovery")  # over seeds: a t-interval; the others keep the runs' spread


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def bounds(p: dict[str, Any], key: str) -> tuple[float, float] | None:
    """(low, high) of ``key`` on a row: its interval when it has one, else the value itself."""
    v = p.get(key)
    if not _ok(v):
        return None
    lo, hi = p.get(f"{key}_low"), p.get(f"{key}_high")
    return (lo, hi) if _ok(lo) and _ok(hi) else (v, v)


def dominates(a: dict[str, Any], b: dict[str, Any], cost: str, higher_is_better: bool) -> bool:
    """``a`` beats ``b`` beyond their intervals: no worse on cost and quality at every point of both
    intervals, and strictly better on one of them. Overlapping intervals are not dominance."""
    ca, cb, qa, qb = bounds(a, cost), bounds(b, cost), bounds(a, "quality"), bounds(b, "quality")
    if None in (ca, cb, qa, qb):
        return False
    if not higher_is_better:  # lower quality is better: compare negated intervals
        qa, qb = (-qa[1], -qa[0]), (-qb[1], -qb[0])
    cost_ok, quality_ok = ca[1] <= cb[0], qa[0] >= qb[1]
    return cost_ok and quality_ok and (ca[1] < cb[0] or qa[0] > qb[1])


def pareto_mask(costs: list[float], qualities: list[float], higher_is_better: bool = True) -> list[bool]:
    """True for points no other point dominates (point values, no intervals)."""
    points = [{"c": c, "quality": q} for c, q in zip(costs, qualities, strict=True)]
    return pareto_flags(points, "c", higher_is_better)


def pareto_flags(points: list[dict[str, Any]], cost: str, higher_is_better: bool) -> list[bool]:
    """True for points that no other point dominates beyond the intervals; missing values never are."""
    return [
        bounds(p, cost) is not None and bounds(p, "quality") is not None
        and not any(dominates(o, p, cost, higher_is_better) for j, o in enumerate(points) if j != i)
        for i, p in enumerate(points)
    ]  # fmt: skip


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile (scipy when present, else a table accurate to 3 decimals)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
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
    """Rows that differ only in seed (same ``setting_key``) merged: means, 95% t-intervals over seeds for
    quality and recovery (``<key>_low/_high``, ``<key>_ci`` half-width), the widest spread of the runs
    for speeds, ``n`` runs. A single run keeps its own intervals (bootstrap over documents, min-max)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["setting_key"]].append(r)
    out = []
    for members in groups.values():
        agg = dict(members[0])
        agg["n"] = len(members)
        agg["seeds"] = sorted({m.get("seed") for m in members}, key=str)
        agg["dirs"] = [m["dir"] for m in members]
        if len(members) > 1:
            for key in AGGREGATED:
                _aggregate(agg, members, key)
        out.append(agg)
    return out


def _aggregate(agg: dict[str, Any], members: list[dict[str, Any]], key: str) -> None:
    values = [m[key] for m in members if _ok(m.get(key))]
    if not values:
        agg[key] = agg[f"{key}_ci"] = agg[f"{key}_low"] = agg[f"{key}_high"] = None
        return
    mean, half = mean_ci(values)
    agg[key], agg[f"{key}_ci"] = mean, half
    if key in SEED_INTERVAL and half is not None:
        agg[f"{key}_low"], agg[f"{key}_high"] = mean - half, mean + half
    else:  # speeds and sizes: the widest spread any run measured
        lows = [m.get(f"{key}_low", m[key]) for m in members if _ok(m.get(key))]
        highs = [m.get(f"{key}_high", m[key]) for m in members if _ok(m.get(key))]
        agg[f"{key}_low"], agg[f"{key}_high"] = min(lows), max(highs)


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
        if key and key not in seen and _ok(r.get("baseline_quality")) and _ok(r.get(f"baseline_{cost}")):
            seen[key] = {
                "name": f"baseline ({r['model']})", "label": "baseline", "model": r["model"], "baseline_key": key,
                "quality": r["baseline_quality"], cost: r[f"baseline_{cost}"], "technique": "baseline",
                "family": "baseline",
            }  # fmt: skip
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
    for p, m in zip(points, pareto_flags(points, cost, higher), strict=True):
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
        entry = {"order_key": key[0], "forward": f["label"], "reversed": r["label"], "metric": f["metric"]}
        for k in ("quality", "recovery", "stored_mb", "decode_ms_per_token_b1"):
            a, b = f.get(k), r.get(k)
            entry[f"{k}_forward"], entry[f"{k}_reversed"] = a, b
            entry[f"{k}_difference"] = None if a is None or b is None else a - b
        out.append(entry)
    return out
