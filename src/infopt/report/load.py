"""Read ``results.json`` files (offline, no W&B) into flat rows: one per run.

Used by ``python -m infopt.report``, the docs renderer and the notebooks (``load.rows(dir)`` /
``load.dataframe(dir)``). A row names what was done (model, technique, a short label by what differs),
what it scored (``quality``: one eval metric with its 95% interval, and its ``recovery`` with the paired
interval), what it cost (stored size, decode and prefill speed with their min-max), and where and how it
was measured (``hardware``, ``eval_settings``), so rows from different machines or eval settings are
never compared by accident. Records are checked first: another schema version or a malformed record is
skipped with a warning, never merged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from infopt.errors import ConfigError
from infopt.io import read_json
from infopt.report.labels import names
from infopt.results import SCHEMA_VERSION, is_point_metric, lower_is_better, stable_hash

log = logging.getLogger(__name__)

# Quality metrics in order of preference when none is named: lm-eval word perplexity first.
PREFERRED_METRICS = (
    "heldout/word_perplexity",
    "heldout/token_perplexity_w512",
    "heldout/bits_per_byte",
    "analogy/acc",
)
# Config keys that never change what was computed.
NON_SETTING_KEYS = ("paths", "logger", "run_name", "skip_completed", "objective")
COST_KEYS = (
    "stored_mb",
    "decode_ms_per_token_b1",
    "decode_tokens_per_s_b1",
    "decode_tokens_per_s_b8",
    "prefill_ms_b1",
    "prefill_tokens_per_s_b1",
    "peak_rss_mb",
    "params",
    "weight_mb_per_token",
)
SPREAD_KEYS = ("decode_tokens_per_s_b1", "decode_tokens_per_s_b8")  # have _min / _max in the record


def find_results(paths: list[str | Path]) -> list[Path]:
    """Every results.json at or under ``paths`` (files or directories), sorted, without duplicates."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            found.add(p.resolve())
        elif p.is_dir():
            found.update(q.resolve() for q in p.rglob("results.json") if "wandb" not in q.parts)
        else:
            log.warning("report: %s is neither a results.json nor a directory; ignored", p)
    return sorted(found)


_NUMBER = (int, float, type(None))
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip
# The parts of a record the report reads, and the types it reads them as (a missing key reads as
# None, and "..." means a mapping whose every value has that type). A record that differs is skipped.
SHAPE: dict[str, Any] = {
    "run": dict, "run.name": (str, type(None)), "config": dict,
    "config.model": (dict, type(None)), "config.model.name": (str, type(None)),
    "config.technique": (dict, type(None)), "config.technique.name": (str, type(None)),
    "config.eval": (dict, type(None)), "config.eval.tasks": (list, type(None)),
    "config.data": (dict, type(None)), "config.bench": dict, "config.seed": _NUMBER,
    "result": dict, "result.eval": dict, "result.eval...": _NUMBER, "result.bench": (dict, type(None)),
    "result.bench...": _NUMBER, "baseline": (dict, type(None)), "baseline.eval": (dict, type(None)),
    "baseline.eval...": _NUMBER, "baseline.bench": (dict, type(None)), "baseline.bench...": _NUMBER,
    "ratios": (dict, type(None)), "ratios...": _NUMBER, "technique": (dict, type(None)),
    "technique.name": (str, type(None)), "technique.metrics": (dict, type(None)), "baseline_key": (str, type(None)),
    "environment": (dict, type(None)), "environment.hardware": (dict, type(None)), "stages": (list, type(None)),
}  # fmt: skip


def _shape_problem(record: dict[str, Any]) -> str | None:
    def get(key: str) -> Any:
        node: Any = record
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    for key, types in SHAPE.items():
        if key.endswith("..."):
            values = (get(key[:-3]) or {}).items()
            bad = next(((k, v) for k, v in values if not isinstance(v, types) or isinstance(v, bool)), None)
            if bad is not None:
                return f"{key[:-3]}.{bad[0]} is {bad[1]!r}, not a number"
        elif not isinstance(get(key), types):
            expected = " or ".join(_JSON_NAMES[t] for t in (types if isinstance(types, tuple) else (types,)))
            return f"{key} is {_JSON_NAMES.get(type(get(key)), 'unknown')}, expected {expected}"
    tasks = get("config.eval.tasks") or []
    if not all(isinstance(t, str) for t in tasks):
        return "config.eval.tasks is not a list of names"
    return None


def problem(record: Any) -> str | None:
    """Why a parsed results.json cannot be reported (None: it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version {record.get('schema_version')!r}, this infopt reads {SCHEMA_VERSION}"
    if not isinstance(record.get("run"), dict) or record["run"].get("status") != "complete":
        return "not a complete run"
    result = record.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("eval"), dict) or not isinstance(result.get("bench", {}), dict):
        return "no result with eval and bench sections"
    if not isinstance(record.get("config"), dict):
        return "no config"
    return _shape_problem(record)


def load_records(paths: list[str | Path], warn: bool = True) -> list[dict[str, Any]]:
    """The reportable records under ``paths``; each one that is not is skipped with one warning."""
    records = []
    for path in find_results(paths):
        record = read_json(path)
        why = problem(record)
        if why is not None:
            if warn:
                log.warning("report: %s skipped: %s", path, why)
            continue
        record["_path"] = str(path)
        records.append(record)
    return records


def available_metrics(records: list[dict[str, Any]]) -> list[str]:
    """Quality metrics every record has (the ones a comparison can use)."""
    sets = [{k for k in (r.get("result") or {}).get("eval", {}) if is_point_metric(k)} for r in records]
    return sorted(set.intersection(*sets)) if sets else []


def choose_metric(records: list[dict[str, Any]], metric: str | None = None) -> str:
    """The quality metric to compare on: ``metric`` if every record has it (else ConfigError naming the
    valid ones), otherwise the first preferred one every record has."""
    common = available_metrics(records)
    if metric:
        if records and metric not in common:
            raise ConfigError(f"--metric {metric!r} is not in every record; valid: {', '.join(common) or '(none)'}")
        return metric
    for m in PREFERRED_METRICS:
        if m in common:
            return m
    token = [m for m in common if m.startswith("heldout/token_perplexity")]
    return (token or common or list(PREFERRED_METRICS))[0]


def _without(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus what does not change a setting: paths, logging, and every ``seed`` or ``*_seed``
    (repeats: another draw of the data, the initialisation, a rotation's random signs)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "seed" and not k.endswith("_seed")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = strip({k: v for k, v in config.items() if k not in NON_SETTING_KEYS})
    out.get("bench", {}).pop("timing", None)  # a sizes-only repeat adds quality, not another setting
    return out


def hardware_label(record: dict[str, Any]) -> str:
    hw = (record.get("environment") or {}).get("hardware") or {}
    if hw.get("gpu"):
        return str(hw["gpu"])
    threads = hw.get("torch_threads")
    return f"{hw.get('cpu', 'unknown cpu')}" + (f", {threads} threads" if threads else "")


def eval_settings(record: dict[str, Any]) -> tuple[str, str]:
    """(short label, hash) of everything that makes quality numbers comparable: eval and held-out data."""
    config = record.get("config") or {}
    ev = config.get("eval") or {}
    data = {
        k: v
        for k, v in (config.get("data") or {}).items()
        if k in ("name", "source", "hub_path", "hub_name", "files", "heldout_docs", "max_docs")
    }
    key = stable_hash({"eval": ev, "data": data}, 8)
    label = f"{data.get('name', '?')} held-out {data.get('heldout_docs', '?')} docs, tasks {','.join(ev.get('tasks') or []) or '-'}"
    if ev.get("limit"):
        label += f", limit {ev['limit']}"
    return f"{label} [{key}]", key


def bench_settings(record: dict[str, Any]) -> str:
    b = (record.get("config") or {}).get("bench") or {}
    return f"prompt {b.get('prompt_tokens')}, {b.get('new_tokens')} new tokens"


def _interval(values: dict[str, Any], key: str, lo: str = "_ci95_low", hi: str = "_ci95_high") -> tuple[Any, Any]:
    return values.get(f"{key}{lo}"), values.get(f"{key}{hi}")


def row(record: dict[str, Any], metric: str, label: str | None = None) -> dict[str, Any]:
    config = record.get("config") or {}
    tech = record.get("technique") or {}
    result = record.get("result") or {}
    bench, ev = result.get("bench") or {}, result.get("eval") or {}
    baseline = record.get("baseline") or {}
    ratios = record.get("ratios") or {}
    hardware = hardware_label(record)
    ev_label, ev_key = eval_settings(record)
    out: dict[str, Any] = {
        "name": label or (record.get("run") or {}).get("name", "?"),
        "run_name": (record.get("run") or {}).get("name", "?"),
        "dir": str(Path(record.get("_path", "results.json")).parent),
        "experiment": config.get("experiment"),
        "model": (config.get("model") or {}).get("name"),
        "technique": tech.get("name"),
        "family": tech.get("family"),
        "method": tech.get("method"),
        "label": label or tech.get("name"),
        "execution": tech.get("execution"),
        "seed": config.get("seed"),
        "metric": metric,
        "higher_is_better": not lower_is_better(metric),
        "quality": ev.get(metric),
        "recovery": ratios.get(f"eval/{metric}/recovery"),
        "baseline_quality": (baseline.get("eval") or {}).get(metric),
        "compression": ratios.get("bench/stored_mb/compression"),
        "decode_speedup_b1": ratios.get("bench/decode_tokens_per_s_b1/speedup"),
        "predicted_speedup": ratios.get("bench/weight_mb_per_token/predicted_speedup"),
        "hardware": hardware,
        "eval_settings": ev_label,
        "eval_key": ev_key,
        "bench_settings": bench_settings(record),
        "baseline_key": record.get("baseline_key"),
        "objective": record.get("objective"),
        "wall_s": (record.get("run") or {}).get("wall_s"),
        "git_commit": (record.get("environment") or {}).get("git_commit"),
        # Runs with the same setting_key differ only in seeds: they are repeats, aggregated.
        "setting_key": stable_hash({"config": _without(config), "hardware": hardware}, 12),
        "reverse": (config.get("technique") or {}).get("reverse"),
        "order_key": stable_hash({"config": _without({**config, "technique": {
            k: v for k, v in (config.get("technique") or {}).items() if k != "reverse"}}), "hardware": hardware}, 12)
        if record.get("stages") else None,
    }  # fmt: skip
    out["quality_low"], out["quality_high"] = _interval(ev, metric)
    out["recovery_low"], out["recovery_high"] = _interval(ratios, f"eval/{metric}/recovery")
    speedup = "bench/decode_tokens_per_s_b1/speedup"
    out["decode_speedup_b1_low"], out["decode_speedup_b1_high"] = _interval(ratios, speedup, "_min", "_max")
    for key in COST_KEYS:
        out[key] = bench.get(key)
        out[f"baseline_{key}"] = (baseline.get("bench") or {}).get(key)
    for key in SPREAD_KEYS:
        out[f"{key}_low"], out[f"{key}_high"] = _interval(bench, key, "_min", "_max")
    lo, hi = out["decode_tokens_per_s_b1_low"], out["decode_tokens_per_s_b1_high"]
    if lo and hi:  # ms per token from the slowest and fastest repeat
        out["decode_ms_per_token_b1_low"], out["decode_ms_per_token_b1_high"] = 1e3 / hi, 1e3 / lo
    # Other engines measured beside transformers (bench.backend=llamacpp|vllm): *_decode_tokens_per_s_b1.
    for key, value in bench.items():
        if key.endswith("_decode_tokens_per_s_b1") and key != "decode_tokens_per_s_b1":
            out[key] = value
    return out


def rows(paths: list[str | Path] | str | Path, metric: str | None = None) -> list[dict[str, Any]]:
    """One flat row per readable results.json under ``paths``, named by what differs between them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = load_records(list(paths))
    chosen = choose_metric(records, metric)
    out = [row(r, chosen, label) for r, label in zip(records, names(records), strict=True)]
    settings: dict[str, set[str]] = {}
    for r in out:
        settings.setdefault(r["label"], set()).add(r["setting_key"])
    for r in out:  # two settings the config cannot tell apart (another machine, say): add the run's name
        if len(settings[r["label"]]) > 1:
            r["name"] = r["label"] = f"{r['label']} ({r['run_name']})"
    return out


def dataframe(paths: list[str | Path] | str | Path, metric: str | None = None):
    """``rows`` as a pandas DataFrame (for notebooks)."""
    import pandas as pd

    return pd.DataFrame(rows(paths, metric))


def layer_sensitivity(
    paths: list[str | Path] | str | Path, warn: bool = True
) -> list[tuple[dict[str, Any], tuple[list[int], list[str], list[list[float]]]]]:
    """(record, (layers, parts, delta-loss matrix)) for every layer-sensitivity run under ``paths``."""
    from infopt.studies.layer_sensitivity import heatmap_matrix

    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for record in load_records(list(paths), warn):
        if (record.get("technique") or {}).get("name") == "layer_sensitivity":
            out.append((record, heatmap_matrix(record["technique"].get("metrics") or {})))
    return out
