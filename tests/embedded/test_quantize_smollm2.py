"""Quantization on the real embedded SmolLM2-135M (slow: make test-full).

Orderings from the literature, on held-out token perplexity (256-token windows): GPTQ with
act-order below RTN at 4 bits, group 64; real W8A8 (SmoothQuant, int8 GEMM) close to float.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import CACHE_DIR

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from infopt.config.schema import DataConfig, ModelConfig
    from infopt.data.text import TextData
    from infopt.models.load import load_model, load_tokenizer, resolve

    cfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(cfg)
    tok = load_tokenizer(resolved.tokenizer, CACHE_DIR)
    model = load_model(cfg, resolved, tok, CACHE_DIR)
    data = TextData(
        DataConfig(name="lee_news", source="lee_news", seq_len=256, calibration_samples=16), tok
    )
    return model, data


def _ppl(model, data) -> float:
    from infopt.evaluation.perplexity import token_perplexity

    with torch.no_grad():
        return token_perplexity(model, data.heldout_blocks(256)[:8], batch_size=4)


def _apply(model, data, tmp_path, **kw):
    from infopt.context import RunContext
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.technique import Quantize

    ctx = RunContext(
        cfg=None,
        tokenizer=data.tokenizer,
        data=data,
        output_dir=tmp_path,
        cache_dir=CACHE_DIR,
        device=torch.device("cpu"),
        logger=None,
    )
    return (
        Quantize(QuantizeConfig(export_packed=False, **kw)).apply(copy.deepcopy(model), ctx).model
    )


def test_gptq_beats_rtn_at_4_bits(smollm2, tmp_path):
    model, data = smollm2
    base = _ppl(model, data)
    rtn = _ppl(_apply(model, data, tmp_path, method="rtn", bits=4, group_size=64), data)
    gptq = _ppl(_apply(model, data, tmp_path, method="gptq", bits=4, group_size=64), data)
    assert base < gptq < rtn, (base, gptq, rtn)


def test_real_w8a8_close_to_float(smollm2, tmp_path):
    model, data = smollm2
    base = _ppl(model, data)
    sq = _ppl(_apply(model, data, tmp_path, method="smoothquant", execution="real"), data)
    assert sq < 1.10 * base, (base, sq)
