"""95% intervals for quality numbers: a percentile bootstrap over held-out units (documents, questions).

A corpus-level metric is a transform of a ratio of sums over units: perplexity = exp(sum NLL / sum
tokens), accuracy = sum correct / sum questions. A resample draws units with replacement and
recomputes the metric; the interval is the 2.5th and 97.5th percentile of 1000 resamples (Efron &
Tibshirani 1993, ch. 13). ``paired_ratio_interval`` resamples the *same* units for two measurements
of them (the baseline and the result), so the interval of their ratio (recovery) reflects how the
two differ document by document, not how each varies on its own.

A measurement keeps its units under ``"units"``: ``{metric: {"num": [...], "den": [...], "transform":
"exp" | "identity"}}``; the metric is ``transform(sum(num) / sum(den))``.
"""

from __future__ import annotations

import math
import random
from typing import Any

ITERS = 1000
SEED = 0
LEVEL = 0.95


def value(units: dict[str, Any], picks: list[int] | None = None) -> float:
    num, den = units["num"], units["den"]
    idx = range(len(num)) if picks is None else picks
    ratio = sum(num[i] for i in idx) / max(sum(den[i] for i in idx), 1e-12)
    return math.exp(min(ratio, 700.0)) if units["transform"] == "exp" else ratio


def _resamples(n: int, iters: int = ITERS, seed: int = SEED) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(iters)]


def _percentiles(stats: list[float]) -> tuple[float, float]:
    stats = sorted(stats)
    lo = stats[int(math.floor((1 - LEVEL) / 2 * (len(stats) - 1)))]
    hi = stats[int(math.ceil((1 + LEVEL) / 2 * (len(stats) - 1)))]
    return lo, hi


def interval(units: dict[str, Any]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the metric over its units (None with fewer than 2 units)."""
    n = len(units["num"])
    if n < 2:
        return None
    return _percentiles([value(units, picks) for picks in _resamples(n)])


def paired_ratio_interval(result: dict[str, Any], baseline: dict[str, Any], lower_is_better: bool) -> tuple[float, float] | None:
    """95% interval of the recovery ratio (oriented so > 1 is better), resampling the same units in both."""
    n = len(result["num"])
    if n < 2 or len(baseline["num"]) != n:
        return None
    stats = []
    for picks in _resamples(n):
        r, b = value(result, picks), value(baseline, picks)
        stats.append((b / r if lower_is_better else r / b) if min(r, b) > 0 else math.nan)
    finite = [s for s in stats if math.isfinite(s)]
    return _percentiles(finite) if len(finite) >= 2 else None


def with_intervals(metrics: dict[str, float], units: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``<metric>_ci95_low`` / ``_ci95_high`` beside every metric that has units."""
    out = dict(metrics)
    for key, u in units.items():
        bounds = interval(u)
        if bounds is not None:
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = bounds
    return out


INTERVAL_SUFFIXES = ("_ci95_low", "_ci95_high")


def units_from_samples(task: str, samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-document (or per-question) units from lm-eval's logged samples.

    Rolling-loglikelihood metrics log ``(loglikelihood, count)`` per document: word/byte perplexity
    become ``exp(sum -ll / sum count)``; bits per byte ``sum -ll / ln 2 / sum bytes``. Scalar metrics
    (``acc``) are means over questions.
    """
    out: dict[str, dict[str, Any]] = {}
    first_filter = samples[0].get("filter") if samples else None
    for s in samples:
        if s.get("filter") != first_filter:  # each filter logs every document again
            continue
        for metric, v in s.items():
            if metric in ("doc", "doc_id", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                          "doc_hash", "prompt_hash", "target_hash"):  # fmt: skip
                continue
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                ll, count = float(v[0]), float(v[1])
                if metric == "bits_per_byte":
                    unit, transform = (-ll / math.log(2), count), "identity"
                else:
                    unit, transform = (-ll, count), "exp"
            elif isinstance(v, (int, float, bool)):
                unit, transform = (float(v), 1.0), "identity"
            else:
                continue
            entry = out.setdefault(f"{task}/{metric}", {"num": [], "den": [], "transform": transform})
            entry["num"].append(unit[0])
            entry["den"].append(unit[1])
    return out
