"""Tiny random-init models built from real architectures (for tests and smoke runs).

GPT-2 keeps its Conv1D projections (weights stored transposed, (in, out)); Llama keeps grouped-
query attention. Vocabulary comes from the tokenizer so real text can be fed through them.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from infopt.config.schema import TinyArchConfig


def tiny_config(
    arch: TinyArchConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
):
    if arch.architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_kv_heads,
            max_position_embeddings=arch.max_positions,
            tie_word_embeddings=True,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    if arch.architecture == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=arch.hidden_size,
            n_inner=arch.intermediate_size,
            n_layer=arch.num_layers,
            n_head=arch.num_heads,
            n_positions=arch.max_positions,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    raise ValueError(f"unknown tiny architecture {arch.architecture!r}")


def build_tiny(
    arch: TinyArchConfig, vocab_size: int, seed: int = 0, **token_ids
) -> PreTrainedModel:
    """Random init, deterministic for a seed."""
    config = tiny_config(arch, vocab_size, **token_ids)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model_cls = LlamaForCausalLM if arch.architecture == "llama" else GPT2LMHeadModel
        model = model_cls(config)
    return model.eval()
