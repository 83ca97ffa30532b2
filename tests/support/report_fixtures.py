"""Synthetic results.json records with chosen numbers, for report tests with hand-computed answers."""

from __future__ import annotations

import json
from pathlib import Path

METRIC = "heldout/word_perplexity"


def record(
    name: str,
    technique: str,
    ppl: float,
    stored_mb: float,
    decode_ms: float,
    *,
    seed: int = 0,
    model: str = "m",
    cpu: str = "CPU A",
    base=(20.0, 100.0, 10.0),
    reverse: bool | None = None,
    extra: dict | None = None,
) -> dict:
    base_ppl, base_mb, base_ms = base
    tech_cfg = {"name": technique, **(extra or {})}
    if reverse is not None:
        tech_cfg["reverse"] = reverse
    return {
        "schema_version": 1,
        "run": {"name": name, "status": "complete"},
        "config": {
            "model": {"name": model},
            "technique": tech_cfg,
            "eval": {"tasks": ["heldout"], "limit": None},
            "data": {"name": "lee_news", "heldout_docs": 30, "seed": 0},
            "bench": {"prompt_tokens": 128, "new_tokens": 32},
            "seed": seed,
            "paths": {"output_dir": name},
        },
        "config_hash": name,
        "baseline_key": f"{model}-{cpu}",
        "environment": {"hardware": {"cpu": cpu, "torch_threads": 2}},
        "baseline": {
            "eval": {METRIC: base_ppl},
            "bench": {"stored_mb": base_mb, "decode_ms_per_token_b1": base_ms},
        },
        "result": {
            "eval": {METRIC: ppl},
            "bench": {"stored_mb": stored_mb, "decode_ms_per_token_b1": decode_ms},
        },
        "technique": {"name": technique, "method": None, "execution": "dense", "metrics": {}},
        "stages": [{"name": "a"}, {"name": "b"}] if reverse is not None else [],
        "ratios": {
            f"eval/{METRIC}/recovery": base_ppl / ppl,
            "bench/stored_mb/compression": base_mb / stored_mb,
        },
    }


def write(root: Path, records: list[dict]) -> Path:
    for i, r in enumerate(records):
        d = root / f"{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(r))
    return root
