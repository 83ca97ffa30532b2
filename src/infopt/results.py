"""The experiment record: results.json, ratios to the baseline, environment, secret redaction.

Metric keys: ``eval/<task>/<metric>``, ``bench/<metric>``, ``technique/<metric>``. Ratios are
oriented so that higher is better and are named for what they mean: ``recovery`` (quality kept),
``speedup``, ``compression``, ``memory_reduction``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# Re-exported: secrets are matched by precise patterns (``tokenizer`` is not a token).
from infopt.secrets import REDACTED, redact  # noqa: F401

SCHEMA_VERSION = 1
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss", "nll")
COUNT_KEYS = ("documents", "token_windows", "sample_len")
# Keys beside a metric that describe its uncertainty: no ratio of their own.
UNCERTAINTY_SUFFIXES = ("_stderr", "_ci95_low", "_ci95_high", "_min", "_max")


def is_point_metric(key: str) -> bool:
    """A measured quantity (not its interval, stderr or a count of units)."""
    return not key.endswith(UNCERTAINTY_SUFFIXES) and key.split("/")[-1] not in COUNT_KEYS
PACKAGES = (
    "torch",
    "transformers",
    "lm_eval",
    "lightning",
    "hydra-core",
    "omegaconf",
    "wandb",
    "peft",
    "torchao",
    "gguf",
    "compressed-tensors",
    "accelerate",
    "infopt",
)

def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[
        :length
    ]


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def _ratio(num: float, den: float) -> float | None:
    if den == 0 or num is None or den is None:
        return None
    return num / den


def compute_ratios(
    baseline: dict[str, dict[str, float]], result: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Result relative to baseline, every ratio oriented so > 1 is better."""
    from infopt.evaluation.uncertainty import paired_ratio_interval

    ratios: dict[str, float] = {}
    b_eval, r_eval = baseline.get("eval", {}), result.get("eval", {})
    b_units, r_units = baseline.get("units") or {}, result.get("units") or {}
    for key, value in r_eval.items():
        if key not in b_eval or not is_point_metric(key):
            continue
        r = _ratio(b_eval[key], value) if lower_is_better(key) else _ratio(value, b_eval[key])
        if r is None:
            continue
        ratios[f"eval/{key}/recovery"] = r
        if key in r_units and key in b_units:  # paired bootstrap over the same documents
            bounds = paired_ratio_interval(r_units[key], b_units[key], lower_is_better(key))
            if bounds is not None:
                ratios[f"eval/{key}/recovery_ci95_low"], ratios[f"eval/{key}/recovery_ci95_high"] = bounds
    b_bench, r_bench = baseline.get("bench", {}), result.get("bench", {})
    for key, value in r_bench.items():
        if key not in b_bench or not is_point_metric(key) or key.startswith("machine_"):
            continue
        base = b_bench[key]
        if "tokens_per_s" in key and not key.startswith("predicted"):
            r, name = _ratio(value, base), "speedup"
        elif "_ms_" in key or key.startswith(("prefill_ms", "e2e_ms")):
            r, name = _ratio(base, value), "speedup"
        elif key == "stored_mb":
            r, name = _ratio(base, value), "compression"
        elif key == "weight_mb_per_token":
            r, name = _ratio(base, value), "predicted_speedup"
        elif key in ("peak_rss_mb", "peak_memory_mb", "working_memory_mb"):
            r, name = _ratio(base, value), "memory_reduction"
        elif key == "params":
            r, name = _ratio(base, value), "reduction"
        else:
            continue
        if r is not None:
            ratios[f"bench/{key}/{name}"] = r
    return ratios


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(device_info: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "hardware": device_info,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "seed": seed,
        "argv": redact(sys.argv[1:]),
    }


def flatten(section: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    """{"eval": {"heldout/x": 1}} -> {"<prefix>eval/heldout/x": 1} (numbers only: not the bootstrap units)."""
    return {
        f"{prefix}{group}/{k}": v
        for group, values in section.items()
        if group != "units"
        for k, v in values.items()
    }
