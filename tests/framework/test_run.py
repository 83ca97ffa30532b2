"""Whole runs on tiny models: the record, the W&B offline run, the baseline cache."""

from __future__ import annotations

import json

import pytest

from conftest import QUICK, run_main
from support.wandb_offline import read_run


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_run_writes_record_and_wandb_summary(model, tmp_path):
    overrides = [f"model={model}", "technique=baseline", "eval=quick", "bench=quick", "logger=wandb", "use_baseline_cache=false"]
    record = run_main(overrides, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(record, default=str))

    # The fields later issues and the report read.
    assert on_disk["config"]["model"]["name"] == model
    for key in ("eval", "bench"):
        assert on_disk["baseline"][key] and on_disk["result"][key]
    env = on_disk["environment"]
    assert env["packages"]["torch"] and env["hardware"]["cpu"] and env["seed"] == 0
    assert on_disk["ratios"]["bench/stored_mb/compression"] == pytest.approx(1.0)
    assert on_disk["technique"]["execution"] == "dense"

    # The W&B offline run lives in the run dir, and its summary holds the same numbers.
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = read_run(runs[0])
    summary = logged["summary"]
    assert logged["name"] == f"{model}-baseline" and f"model:{model}" in logged["tags"]
    for key, value in on_disk["result"]["eval"].items():
        assert summary[f"eval/{key}"] == pytest.approx(value)
    assert summary["bench/stored_mb"] == pytest.approx(on_disk["result"]["bench"]["stored_mb"])


def test_baseline_is_cached_across_runs(tmp_path):
    overrides = ["model=tiny_llama", "technique=baseline", *QUICK, "seed=123"]
    first = run_main(overrides, tmp_path / "a")
    second = run_main(overrides, tmp_path / "b")
    assert second["baseline_cached"] is True
    assert second["baseline"] == first["baseline"]
    assert second["baseline_key"] == first["baseline_key"]


def test_corrupt_baseline_cache_is_rebuilt(tmp_path):
    overrides = ["model=tiny_llama", "technique=baseline", *QUICK, "seed=7"]
    first = run_main(overrides, tmp_path / "a")
    from conftest import CACHE_DIR

    cache_file = CACHE_DIR / "baselines" / f"{first['baseline_key']}.json"
    cache_file.write_text('{"key": "trunc')
    second = run_main(overrides, tmp_path / "b")
    assert second["baseline_cached"] is False
    assert json.loads(cache_file.read_text())["key"] == first["baseline_key"]


def test_same_config_and_seed_give_same_quality_metrics(tmp_path):
    overrides = ["model=tiny_gpt2", "technique=baseline", *QUICK, "use_baseline_cache=false", "bench=none"]
    a = run_main(overrides, tmp_path / "a")
    b = run_main(overrides, tmp_path / "b")
    assert a["result"]["eval"] == b["result"]["eval"]
