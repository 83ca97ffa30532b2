"""KV-cache layouts for decoding: dynamic, static, offloaded, quantized (transformers' caches).

- dynamic: grows by concatenation each step (transformers' default).
- static: preallocated to a maximum length, updated in place; fixed shapes make the decode step
  compilable (see ``technique=compile``).
- offloaded / offloaded_static: layers live in CPU memory and are prefetched to the GPU one layer
  ahead (GPU only: on CPU there is nothing to offload to).
- quantized: stores keys/values in low precision. ``fp8`` (built into transformers) keeps e4m3
  values with one per-tensor scale frozen at the first update; ``quanto``/``hqq`` quantize per
  channel in groups with a full-precision residual window, after KIVI (Liu et al. 2024,
  "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache").

The weights are untouched. What a cache changes is measured three ways: the bytes it holds at each
context length (against the dynamic cache), held-out token perplexity computed chunk by chunk with
the cache in the loop (each chunk attends to the cached, possibly quantized, keys of earlier
chunks), and agreement of greedy generations with the dynamic cache's.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from infopt.bench.measure import PeakMemory
from infopt.errors import ConfigError
from infopt.models.surgery import model_device
from infopt.techniques.architecture.common import (
    cache_bytes,
    cached_forward,
    greedy_agreement,
    resolve_lengths,
    stream_prompts,
    tokens_of_length,
)
from infopt.techniques.architecture.config import KVCacheConfig
from infopt.techniques.base import Applied, Technique

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)
MB = 2**20
_BACKEND_PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}


def generate_kwargs(c: KVCacheConfig) -> dict[str, Any]:
    """What generate() needs to build this cache itself."""
    kwargs: dict[str, Any] = {"cache_implementation": c.implementation}
    if c.implementation == "quantized":
        cache_config: dict[str, Any] = {"backend": c.quant_backend}
        if c.quant_backend != "fp8":  # fp8 quantizes per tensor and rejects group options
            cache_config.update(
                nbits=c.nbits, q_group_size=c.q_group_size, residual_length=c.residual_length
            )
        kwargs["cache_config"] = cache_config
    return kwargs


def make_cache(model: nn.Module, implementation: str, max_len: int, c: KVCacheConfig | None = None):
    """A fresh cache object for direct forward calls (the same classes generate() builds)."""
    from transformers import DynamicCache, QuantizedCache, StaticCache

    config = model.config.get_text_config(decoder=True)
    if implementation == "dynamic":
        return DynamicCache(config=config)
    if implementation in ("offloaded", "offloaded_static"):
        if implementation == "offloaded":
            return DynamicCache(config=config, offloading=True)
        return StaticCache(config=config, max_cache_len=max_len, offloading=True)
    if implementation == "static":
        return StaticCache(config=config, max_cache_len=max_len)
    if implementation == "quantized":
        assert c is not None
        cache_config = generate_kwargs(c)["cache_config"]
        backend = cache_config.pop("backend")
        return QuantizedCache(backend=backend, config=config, **cache_config)
    raise ValueError(f"unknown cache implementation {implementation!r}")


@torch.inference_mode()
def cache_in_loop_nll(
    model: nn.Module, window: torch.Tensor, cache, chunk: int
) -> tuple[float, int, torch.Tensor]:
    """Sum NLL of predicting window[1:] feeding ``chunk`` tokens per forward through ``cache``.

    Returns (sum NLL, predicted tokens, logits (T, V)) so two caches can be compared position by position.
    """
    device = model_device(model)
    window = window.view(1, -1).to(device)  # (1, T)
    logits = []
    for s in range(0, window.shape[1], chunk):
        ids = window[:, s : s + chunk]  # (1, C)
        out_logits, cache = cached_forward(model, ids, cache)
        logits.append(out_logits[0].float())  # (C, V)
    full = torch.cat(logits)  # (T, V)
    nll = F.cross_entropy(full[:-1], window[0, 1:], reduction="sum")
    return float(nll), window.shape[1] - 1, full


@torch.inference_mode()
def memory_point(
    model: nn.Module, implementation: str, n: int, c: KVCacheConfig, stream: torch.Tensor
) -> dict[str, float]:
    """Cache bytes after prefilling n tokens and one decode step; peak working memory of both."""
    device = model_device(model)
    ids = tokens_of_length(stream, n).to(device)  # (1, n)
    cache = make_cache(model, implementation, n + 1, c)
    with PeakMemory(device) as mem:
        out_logits, cache = cached_forward(model, ids, cache)
        _, cache = cached_forward(model, out_logits[:, -1:].argmax(-1), cache)
    return {
        "cache_mb": cache_bytes(cache) / MB,
        "working_memory_mb": (mem.peak - mem.start) / MB,
    }


class KVCache(Technique):
    """Decode with another KV-cache layout; measure its memory and quality effect."""


    def check(self, cfg: InfoptConfig) -> None:
        c: KVCacheConfig = self.config  # type: ignore[assignment]
        if c.implementation.startswith("offloaded") and cfg.hardware.accelerator != "gpu":
            raise ConfigError(
                f"technique.implementation={c.implementation} offloads cache layers from GPU to CPU memory and needs hardware=gpu; "
                "on CPU use dynamic, static or quantized"
            )
        if c.implementation == "quantized" and c.quant_backend in _BACKEND_PACKAGES:
            module, package = _BACKEND_PACKAGES[c.quant_backend]
            if (
                importlib.util.find_spec(module.split(".")[0]) is None
                or importlib.util.find_spec(module) is None
            ):
                raise ConfigError(
                    f"technique.quant_backend={c.quant_backend} needs the {package} package (pip install {package}); fp8 works without one"
                )

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        c: KVCacheConfig = self.config  # type: ignore[assignment]
        rows, metrics = memory_table(model, c, ctx.data.heldout_stream)
        windows = ctx.data.heldout_blocks(c.ppl_window)[: c.ppl_windows]
        if windows.shape[0] == 0:
            raise ConfigError(f"technique.ppl_window={c.ppl_window}: the held-out text is shorter than one window")
        metrics.update(perplexity_in_loop(model, c, windows))
        kwargs = generate_kwargs(c)
        prompts = stream_prompts(ctx.data.heldout_stream, c.agreement_prompts, c.agreement_prompt_tokens)
        agreement = greedy_agreement(model, prompts, c.agreement_new_tokens, ctx.tokenizer.pad_token_id, kwargs)
        metrics.update(agreement.metrics())
        notes = []
        if c.implementation == "quantized":
            notes.append(
                f"KV cache quantized ({c.quant_backend}): perplexity x{metrics['perplexity_ratio_vs_dynamic']:.4f} vs the "
                f"dynamic cache, {agreement.identical}/{agreement.prompts} greedy generations identical"
            )
        elif agreement.non_ties:
            notes.append(
                f"{c.implementation} cache: {agreement.non_ties} greedy generation(s) differ from the dynamic cache at a non-tie (unexpected)"
            )
        return Applied(
            model=model, execution="dense", generate_kwargs=kwargs, metrics=metrics, notes=notes,
            tables={"memory": {"columns": MEMORY_COLUMNS, "rows": rows}},
        )  # fmt: skip


MEMORY_COLUMNS = ["cache", "context", "cache_mb", "working_memory_mb"]


def memory_table(model: nn.Module, c: KVCacheConfig, stream: torch.Tensor) -> tuple[list[list[Any]], dict[str, float]]:
    """Cache bytes and working memory against context length, this cache and the dynamic one."""
    rows, metrics = [], {}
    for n in resolve_lengths(model, c.context_lengths):
        for impl in dict.fromkeys(["dynamic", c.implementation]):
            point = memory_point(model, impl, n, c, stream)
            rows.append([impl, n, round(point["cache_mb"], 3), round(point["working_memory_mb"], 1)])
            tag = "dynamic" if impl == "dynamic" and impl != c.implementation else "cache"
            metrics.update({f"{k}/{tag}/ctx{n}": v for k, v in point.items()})
        if c.implementation != "dynamic":
            dynamic, cache = metrics[f"cache_mb/dynamic/ctx{n}"], metrics[f"cache_mb/cache/ctx{n}"]
            metrics[f"cache_memory_ratio/ctx{n}"] = dynamic / max(cache, 1e-12)
    return rows, metrics


def perplexity_in_loop(model: nn.Module, c: KVCacheConfig, windows: torch.Tensor) -> dict[str, float]:
    """Token perplexity with this cache in the loop against the dynamic cache under the same protocol."""
    totals = {"dynamic": [0.0, 0], "cache": [0.0, 0]}
    max_diff = 0.0
    for w in windows:
        logits = {}
        for tag, impl in (("dynamic", "dynamic"), ("cache", c.implementation)):
            nll, n, logits[tag] = cache_in_loop_nll(model, w, make_cache(model, impl, c.ppl_window, c), c.ppl_chunk)
            totals[tag][0] += nll
            totals[tag][1] += n
        max_diff = max(max_diff, float((logits["cache"] - logits["dynamic"]).abs().max()))
    ppl = {tag: math.exp(total / count) for tag, (total, count) in totals.items()}
    key = f"w{c.ppl_window}_chunk{c.ppl_chunk}"
    return {
        f"token_perplexity_cache_in_loop_{key}": ppl["cache"],
        f"token_perplexity_dynamic_in_loop_{key}": ppl["dynamic"],
        "perplexity_ratio_vs_dynamic": ppl["cache"] / ppl["dynamic"],
        "max_abs_logit_diff_vs_dynamic": max_diff,
    }
