"""Decode speed of several models of one process, timed in interleaved rounds.

Timing model A, then model B an hour later (or in another process) compares machine loads, not
kernels. Here every round decodes once with each model in turn, so a burst of load hits all of
them alike; the ratio to the reference is taken within each round and its median reported.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from infopt.bench.timing import timed


def decode_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int, **generate_kwargs: Any) -> float:
    """Wall seconds of one greedy ``generate`` of exactly ``new_tokens`` tokens."""
    with torch.no_grad():
        _, seconds = timed(
            lambda: model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=0, **generate_kwargs),
            prompt.device,
        )  # fmt: skip
    return seconds


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
