"""A whole run on each tiny architecture writes a complete results.json."""

import json

import pytest

from conftest import QUICK, run_main


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_default_run_writes_results(model, tmp_path):
    # The default technique: SmoothQuant W8A8 on int8 kernels (conf/technique/smoothquant_w8a8.yaml).
    record = run_main([f"model={model}", *QUICK], tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["result"]["bench"]["params"] == record["result"]["bench"]["params"]
    for section in ("config", "baseline", "result", "ratios", "environment", "technique"):
        assert section in on_disk
    assert on_disk["result"]["eval"]["heldout/word_perplexity"] > 1
    assert on_disk["technique"]["name"] == "quantize" and on_disk["technique"]["execution"] == "real"
