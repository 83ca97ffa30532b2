"""Perplexities equal a hand computation; the local tasks hold what they claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from conftest import CACHE_DIR
from infopt.config.schema import DataConfig, EvalConfig
from infopt.data.text import TextData
from infopt.evaluation.local_tasks import analogy_questions
from infopt.evaluation.perplexity import token_perplexity
from infopt.evaluation.runner import evaluate


def test_token_perplexity_equals_hand_computation(tiny_llama):
    torch.manual_seed(0)
    blocks = torch.randint(0, 1000, (3, 16))
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in blocks:
            logp = F.log_softmax(tiny_llama(input_ids=row[None]).logits[0].double(), dim=-1)
            for t in range(1, row.numel()):
                nll -= logp[t - 1, row[t]].item()
                count += 1
    assert token_perplexity(tiny_llama, blocks, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_lm_eval_word_perplexity_equals_hand_computation(tiny_llama, tokenizer, tmp_path):
    docs = ["The cat sat on the mat today.", "A dog ran in the park.", "Markets fell sharply on Tuesday.", "Rain is expected later this week."]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(docs))
    data = TextData(DataConfig(name="t", source="text_files", files=[str(path)], heldout_docs=2, calibration_docs=0), tokenizer)
    cfg = EvalConfig(tasks=["heldout"], token_perplexity=False, batch_size=2)
    metrics, units = evaluate(tiny_llama, tokenizer, cfg, data, CACHE_DIR)

    # lm-eval's rolling loglikelihood: the first token is predicted from the prefix token.
    from lm_eval.models.huggingface import HFLM

    prefix = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=1).prefix_token_id
    total_ll, total_words = 0.0, 0
    with torch.no_grad():
        for doc in docs[2:]:
            ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
            inp = torch.tensor([[prefix, *ids]])
            logp = F.log_softmax(tiny_llama(input_ids=inp).logits[0].double(), dim=-1)
            total_ll += sum(logp[i, ids[i]].item() for i in range(len(ids)))
            total_words += len(doc.split())
    assert metrics["heldout/word_perplexity"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-4)
    # The bootstrap units reproduce the corpus-level number, and its interval contains it.
    from infopt.evaluation.uncertainty import value

    word = units["heldout/word_perplexity"]
    assert len(word["num"]) == 2 and value(word) == pytest.approx(metrics["heldout/word_perplexity"], rel=1e-9)
    assert metrics["heldout/word_perplexity_ci95_low"] <= metrics["heldout/word_perplexity"] <= metrics["heldout/word_perplexity_ci95_high"]


def test_token_perplexity_units_are_per_document_and_reproduce_the_number(tiny_llama, tokenizer, text_data):
    cfg = EvalConfig(tasks=[], token_perplexity=True, token_perplexity_window=64, limit=6, batch_size=4)
    metrics, units = evaluate(tiny_llama, tokenizer, cfg, text_data, CACHE_DIR)
    from infopt.evaluation.uncertainty import value

    u = units["heldout/token_perplexity_w64"]
    # 6 windows of 64 tokens: every predicted token is attributed to exactly one document.
    assert sum(u["den"]) == 6 * 63 and len(u["num"]) >= 1
    assert value(u) == pytest.approx(metrics["heldout/token_perplexity_w64"], rel=1e-6)


def test_paired_recovery_interval_is_narrower_than_independent_ones():
    """Documents differ in difficulty far more than two close models differ on each document: pairing
    the resamples removes the shared document variance from the recovery interval."""
    import random

    from infopt.evaluation.uncertainty import interval, paired_ratio_interval

    rng = random.Random(0)
    hard = [rng.uniform(2.0, 5.0) for _ in range(40)]  # per-document NLL per token
    base = {"num": [100 * h for h in hard], "den": [100.0] * 40, "transform": "exp"}
    result = {"num": [100 * (h + 0.05) for h in hard], "den": [100.0] * 40, "transform": "exp"}
    lo, hi = paired_ratio_interval(result, base, lower_is_better=True)
    assert lo == pytest.approx(hi, rel=1e-9) == pytest.approx(math.exp(-0.05), rel=1e-9)  # a constant shift
    b_lo, b_hi = interval(base)
    assert b_hi / b_lo > 1.5  # the documents alone spread each perplexity widely


def test_analogy_sample_is_stratified_and_stable():
    qs = analogy_questions(per_section=3)
    sections = {q["section"] for q in qs}
    assert len(sections) == 14 and len(qs) == 42
    assert qs == analogy_questions(per_section=3)
    assert all(len(q["d"]) > 0 for q in qs)


def test_corpus_splits_are_disjoint_and_deterministic(tokenizer):
    from infopt.data.corpus import load_corpus

    cfg = DataConfig(name="lee_news", source="lee_news")
    c = load_corpus(cfg)
    assert len(c.heldout) == 30 and len(c.calibration) == 30 and len(c.train) == 240
    assert not set(c.heldout) & set(c.train) and not set(c.calibration) & set(c.train)
    assert load_corpus(cfg) == c
