"""Decode speed of several models of one process, timed in interleaved rounds.

Timing model A, then model B an hour later (or in another process) compares machine loads, not
kernels. Here every round decodes once with each model in turn, so a burst of load hits all of
them alike; the ratio to the reference is taken within each round and its median reported.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def decode_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int, **generate_kwargs: Any) -> float:
    """Wall seconds of one greedy ``generate`` of exactly ``new_tokens`` tokens."""
    with torch.no_grad():
        t = time.perf_counter()
        model.generate(
            prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **generate_kwargs,
        )
        return time.perf_counter() - t


def interleaved_decode(
    models: dict[str, nn.Module], prompt: torch.Tensor, new_tokens: int, rounds: int, reference: str
) -> dict[str, dict[str, Any]]:
    """Per model: median tokens/s, median per-round speedup over ``reference``, raw seconds."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models {list(models)}")
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; need at least 1")
    for model in models.values():  # warm-up: first-call allocations and kernel selection
        decode_seconds(model, prompt, min(4, new_tokens))
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            seconds[name].append(decode_seconds(model, prompt, new_tokens))
    out = {}
    for name in models:
        ratios = [r / s for r, s in zip(seconds[reference], seconds[name], strict=True)]
        out[name] = {
            "decode_tokens_per_s": new_tokens / statistics.median(seconds[name]),
            "decode_speedup_median_of_rounds": statistics.median(ratios),
            "decode_s_rounds": seconds[name],
        }
    return out


@dataclass
class EmbeddedSetup:
    """What a measurement script over variants of the embedded model starts from."""

    tokenizer: Any
    model: nn.Module  # dense fp32, eval mode
    data: Any  # TextData over the Lee corpus
    heldout: torch.Tensor  # (windows, 512) held-out token windows for perplexity


def embedded_setup(heldout_windows: int) -> EmbeddedSetup:
    """The embedded SmolLM2-135M in fp32, its tokenizer, the default corpus and held-out windows."""
    import os

    from transformers import AutoModelForCausalLM

    from infopt.config.schema import DataConfig
    from infopt.data.text import TextData
    from infopt.models.embedded import cached_checkpoint
    from infopt.models.load import load_tokenizer

    cache = Path(os.environ.get("INFOPT_CACHE_DIR", "~/.cache/infopt")).expanduser()
    torch.manual_seed(0)
    tok = load_tokenizer("embedded", cache)
    dense = AutoModelForCausalLM.from_pretrained(str(cached_checkpoint(cache)), dtype=torch.float32).eval()
    data = TextData(DataConfig(name="lee_news", source="lee_news"), tok)
    return EmbeddedSetup(tok, dense, data, data.heldout_blocks(512)[:heldout_windows])


def print_row(name: str, row: dict[str, Any]) -> None:
    print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
