"""The real embedded SmolLM2-135M and its held-out perplexity, shared by the slow tests in tests/embedded."""

from __future__ import annotations

import pytest
import torch

from conftest import CACHE_DIR


@pytest.fixture(scope="module")
def smollm2():
    """(model, data): the embedded model and the Lee corpus in 256-token windows."""
    from infopt.config.schema import DataConfig, ModelConfig
    from infopt.data.text import TextData
    from infopt.models.load import load_model, load_tokenizer, resolve

    cfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(cfg)
    tok = load_tokenizer(resolved.tokenizer, CACHE_DIR)
    model = load_model(cfg, resolved, tok, CACHE_DIR)
    data = TextData(DataConfig(name="lee_news", source="lee_news", seq_len=256, calibration_samples=16), tok)
    return model, data


def heldout_ppl(model, data) -> float:
    """Token perplexity over the first 8 held-out 256-token windows."""
    from infopt.evaluation.perplexity import token_perplexity

    with torch.no_grad():
        return token_perplexity(model, data.heldout_blocks(256)[:8], batch_size=4)
