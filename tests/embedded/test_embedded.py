"""The real embedded SmolLM2-135M end to end (slow: `make test-full`)."""

from __future__ import annotations

import json

import pytest

from conftest import CACHE_DIR, run_main

pytestmark = pytest.mark.slow


def test_embedded_model_converts_and_answers():
    import torch

    from infopt.config.schema import ModelConfig
    from infopt.models.load import load_model, load_tokenizer, resolve

    cfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(cfg)
    tok = load_tokenizer(resolved.tokenizer, CACHE_DIR)
    model = load_model(cfg, resolved, tok, CACHE_DIR)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_embedded_run_end_to_end(tmp_path):
    record = run_main(["logger=none", "bench=quick", "eval.analogy_per_section=5"], tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["run"]["status"] == "complete"
    ppl = record["baseline"]["eval"]["heldout/token_perplexity_w512"]
    # REFERENCES.md: about 32 on the last 30 Lee documents with 512-token windows.
    assert 20 < ppl < 50
    assert record["baseline"]["bench"]["params"] == pytest.approx(134.5e6, rel=0.01)
    # The default technique (SmoothQuant W8A8, real int8): docs/quantization.md measured +2.1%.
    assert record["technique"]["execution"] == "real"
    assert record["result"]["eval"]["heldout/token_perplexity_w512"] < 1.05 * ppl
