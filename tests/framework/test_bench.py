"""Bench numbers are positive and sizes follow from the tensors actually held."""

from __future__ import annotations

import pytest
import torch

from infopt.bench.measure import measure
from infopt.bench.size import flops_per_token, parameter_count, stored_bytes, weight_bytes_per_token
from infopt.config.schema import BenchConfig


def test_fp32_stored_size_is_four_bytes_per_parameter(tiny_model):
    assert stored_bytes(tiny_model) == 4 * parameter_count(tiny_model)
    half = tiny_model.to(torch.bfloat16)
    assert stored_bytes(half) == 2 * parameter_count(half)


def test_tied_embeddings_are_counted_once_and_read_in_full(tiny_llama):
    emb = tiny_llama.get_input_embeddings().weight
    assert tiny_llama.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert parameter_count(tiny_llama) == sum(p.numel() for p in tiny_llama.parameters())
    # Tied: the head reads the whole table each token, so nothing is subtracted.
    assert weight_bytes_per_token(tiny_llama) == stored_bytes(tiny_llama)
    assert flops_per_token(tiny_llama) == 2 * parameter_count(tiny_llama)


def test_measure_reports_positive_numbers(tiny_gpt2):
    cfg = BenchConfig(prompt_tokens=8, new_tokens=4, batch_sizes=[1, 2], warmup=0, repeats=2, probe_hardware=True)
    out, notes = measure(tiny_gpt2, cfg, pad_token_id=0)
    assert not notes
    for key in ("prefill_ms_b1", "decode_tokens_per_s_b1", "decode_tokens_per_s_b2", "peak_rss_mb", "stored_mb",
                "predicted_decode_tokens_per_s_b1", "machine_bandwidth_gbs"):
        assert out[key] > 0, key
    assert out["decode_tokens_per_s_b1_min"] <= out["decode_tokens_per_s_b1"] <= out["decode_tokens_per_s_b1_max"]


def test_interleaved_decode_reports_every_model_against_the_reference(tiny_llama):
    import copy

    from infopt.bench.interleaved import interleaved_decode

    models = {"a": tiny_llama, "b": copy.deepcopy(tiny_llama)}
    prompt = torch.randint(0, tiny_llama.config.vocab_size, (1, 8))
    out = interleaved_decode(models, prompt, new_tokens=3, rounds=2, reference="a")
    assert set(out) == {"a", "b"}
    assert out["a"]["decode_speedup_median_of_rounds"] == 1.0  # each round's ratio to itself
    for row in out.values():
        assert len(row["decode_s_rounds"]) == 2 and min(row["decode_s_rounds"]) > 0
        assert row["decode_tokens_per_s"] > 0
    with pytest.raises(ValueError, match="reference 'c'"):
        interleaved_decode(models, prompt, 3, 2, reference="c")
    with pytest.raises(ValueError, match="rounds=0"):
        interleaved_decode(models, prompt, 3, 0, reference="a")
