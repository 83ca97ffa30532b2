"""Read ``results.json`` files (offline, no W&B) into flat rows: one per run.

Used by ``python -m infopt.report`` and by the notebooks (``load.rows(dir)`` /
``load.dataframe(dir)``). A row names what was done (model, technique, method, stages), what it
scored (``quality``: one eval metric, and its ``recovery``), what it cost (stored size, decode and
prefill speed), and where and how it was measured (``hardware``, ``eval_settings``), so rows
from different machines or eval settings are never compared by accident.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from infopt.io import read_json
from infopt.results import lower_is_better, stable_hash

log = logging.getLogger(__name__)

# Quality metrics in order of preference when none is named: lm-eval word perplexity first.
PREFERRED_METRICS = (
    "heldout/word_perplexity",
    "heldout/token_perplexity_w512",
    "heldout/bits_per_byte",
    "analogy/acc",
)
# Config keys that vary between repeats of the same setting (aggregated, not compared).
SEED_KEYS = (("seed",), ("data", "seed"))
# Config keys that never change what was computed.
NON_SETTING_KEYS = ("paths", "logger", "run_name", "skip_completed", "objective")
COST_KEYS = (
    "stored_mb",
    "decode_ms_per_token_b1",
    "decode_tokens_per_s_b1",
    "prefill_ms_b1",
    "prefill_tokens_per_s_b1",
    "peak_rss_mb",
    "params",
)


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


def load_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    records = []
    for path in find_results(paths):
        record = read_json(path)
        if not isinstance(record, dict) or "result" not in record:
            log.warning("report: %s is not a complete results.json; skipped", path)
            continue
        record["_path"] = str(path)
        records.append(record)
    return records


def choose_metric(records: list[dict[str, Any]], metric: str | None = None) -> str:
    """The quality metric to compare on: ``metric`` if given, else the first preferred one every run has."""
    if metric:
        return metric
    available = [set((r.get("result") or {}).get("eval", {})) for r in records]
    if not available:
        return PREFERRED_METRICS[0]
    common = set.intersection(*available)
    for m in PREFERRED_METRICS:
        if m in common:
            return m
    token = sorted(m for m in common if m.startswith("heldout/token_perplexity"))
    if token:
        return token[0]
    rest = sorted(m for m in common if not m.endswith("_stderr"))
    return rest[0] if rest else PREFERRED_METRICS[0]


def _without(config: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in NON_SETTING_KEYS}
    for path in paths:
        node = out
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                break
            node[key] = dict(node[key])
            node = node[key]
        else:
            node.pop(path[-1], None)
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


def row(record: dict[str, Any], metric: str) -> dict[str, Any]:
    config = record.get("config") or {}
    tech = record.get("technique") or {}
    result = record.get("result") or {}
    bench = result.get("bench") or {}
    baseline = record.get("baseline") or {}
    ratios = record.get("ratios") or {}
    ev_label, ev_key = eval_settings(record)
    hardware = hardware_label(record)
    stages = record.get("stages") or []
    technique_label = tech.get("name", "?")
    if stages:
        technique_label = " -> ".join(
            s["name"] + (f"({s['method']})" if s.get("method") else "") for s in stages
        )
    elif tech.get("method"):
        structured = ((config.get("technique") or {}).get("structured") or {}).get("target")
        if structured and structured != "none":  # records written before the method said so
            technique_label += f"(structured:{structured})"
        else:
            technique_label += f"({tech['method']})"
    out: dict[str, Any] = {
        "name": (record.get("run") or {}).get("name", "?"),
        "dir": str(Path(record.get("_path", "results.json")).parent),
        "experiment": config.get("experiment"),
        "model": (config.get("model") or {}).get("name"),
        "technique": tech.get("name"),
        "method": tech.get("method"),
        "label": technique_label,
        "execution": tech.get("execution"),
        "seed": config.get("seed"),
        "data_seed": (config.get("data") or {}).get("seed"),
        "metric": metric,
        "higher_is_better": not lower_is_better(metric),
        "quality": (result.get("eval") or {}).get(metric),
        "recovery": ratios.get(f"eval/{metric}/recovery"),
        "baseline_quality": (baseline.get("eval") or {}).get(metric),
        "compression": ratios.get("bench/stored_mb/compression"),
        "decode_speedup_b1": ratios.get("bench/decode_tokens_per_s_b1/speedup"),
        "hardware": hardware,
        "eval_settings": ev_label,
        "eval_key": ev_key,
        "bench_settings": bench_settings(record),
        "baseline_key": record.get("baseline_key"),
        "objective": record.get("objective"),
        # Runs with the same setting_key differ only in seeds: they are repeats, aggregated.
        "setting_key": stable_hash(
            {"config": _without(config, SEED_KEYS), "hardware": hardware}, 12
        ),
        "reverse": (config.get("technique") or {}).get("reverse"),
        "order_key": stable_hash(
            {
                "config": _without(config, (*SEED_KEYS, ("technique", "reverse"))),
                "hardware": hardware,
            },
            12,
        )
        if stages
        else None,
    }
    for key in COST_KEYS:
        out[key] = bench.get(key)
        out[f"baseline_{key}"] = (baseline.get("bench") or {}).get(key)
    return out


def rows(paths: list[str | Path] | str | Path, metric: str | None = None) -> list[dict[str, Any]]:
    """One flat row per results.json under ``paths``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = load_records(list(paths))
    chosen = choose_metric(records, metric)
    return [row(r, chosen) for r in records]


def dataframe(paths: list[str | Path] | str | Path, metric: str | None = None):
    """``rows`` as a pandas DataFrame (for notebooks)."""
    import pandas as pd

    return pd.DataFrame(rows(paths, metric))


def layer_sensitivity(
    paths: list[str | Path] | str | Path,
) -> list[tuple[dict[str, Any], tuple[list[int], list[str], list[list[float]]]]]:
    """(record, (layers, parts, delta-loss matrix)) for every layer-sensitivity run under ``paths``."""
    from infopt.studies.layer_sensitivity import heatmap_matrix

    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for record in load_records(list(paths)):
        if (record.get("technique") or {}).get("name") == "layer_sensitivity":
            out.append((record, heatmap_matrix(record["technique"].get("metrics") or {})))
    return out
