"""Quantization on the real embedded SmolLM2-135M (slow: make test-full).

Orderings from the literature, on held-out token perplexity (256-token windows): GPTQ with
act-order below RTN at 4 bits, group 64; real W8A8 (SmoothQuant, int8 GEMM) close to float.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import CACHE_DIR
from support.embedded import heldout_ppl

pytestmark = pytest.mark.slow


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
    base = heldout_ppl(model, data)
    rtn = heldout_ppl(_apply(model, data, tmp_path, method="rtn", bits=4, group_size=64), data)
    gptq = heldout_ppl(_apply(model, data, tmp_path, method="gptq", bits=4, group_size=64), data)
    assert base < gptq < rtn, (base, gptq, rtn)


def test_real_w8a8_close_to_float(smollm2, tmp_path):
    model, data = smollm2
    base = heldout_ppl(model, data)
    sq = heldout_ppl(_apply(model, data, tmp_path, method="smoothquant", execution="real"), data)
    assert sq < 1.10 * base, (base, sq)
