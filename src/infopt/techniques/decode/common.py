"""Shared pieces of the decode techniques: greedy generation, timing, prompts, tie checks, cache bytes.

The greedy-equivalence check is the oracle of this package: a faster decode path must return the
tokens plain greedy decoding returns; where it does not, the first differing position must be a
place where the target's top two logits tie within float tolerance (a different summation order
may then legitimately flip the argmax).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def cached_forward(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """One forward that reads and extends a KV cache: (logits, cache).

    transformers 5.2x calls it ``cache`` (argument and output); earlier 5.x releases, such as the
    GPU machine's 5.17, ``past_key_values``. Either is taken from the model's own signature.
    """
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True, **({name: cache} if cache is not None else {}))
    return out.logits, out["cache"] if "cache" in out else out["past_key_values"]


def max_context(model: nn.Module) -> int:
    """The model's maximum context in tokens (position table size or rope limit)."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, key, None)
        if value:
            return int(value)
    raise ValueError(f"{type(model).__name__}: cannot tell its maximum context from the config")


def resolve_lengths(model: nn.Module, lengths: list[int]) -> list[int]:
    """Context lengths with 0 meaning the model's maximum; duplicates dropped, order kept."""
    top = max_context(model)
    out: list[int] = []
    for n in lengths:
        n = top if n == 0 else min(n, top)
        if n not in out:
            out.append(n)
    return out


@torch.inference_mode()
def greedy(
    model: nn.Module,
    input_ids: torch.Tensor,
    new_tokens: int,
    pad_token_id: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``input_ids`` (EOS suppressed, as in the bench): (B, new_tokens)."""
    input_ids = input_ids.to(model_device(model))
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
        **kwargs,
    )
    return out[:, input_ids.shape[1] :].cpu()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[1] for _ in range(repeats))


def document_prompts(
    tokenizer,
    documents: list[str] | tuple[str, ...],
    count: int,
    max_tokens: int,
    template: str = "{text}",
    chat: bool = False,
    min_tokens: int = 16,
) -> list[torch.Tensor]:
    """Up to ``count`` prompts (1, T) from documents: each document cut to ``max_tokens`` tokens, then templated.

    The document is truncated before templating so the instruction around it survives.
    """
    prompts: list[torch.Tensor] = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) < min_tokens:
            continue
        text = template.replace("{text}", tokenizer.decode(ids))
        if chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append(torch.tensor([list(ids)], dtype=torch.long))
        if len(prompts) == count:
            break
    if not prompts:
        raise ValueError(
            f"no document of the data group has {min_tokens}+ tokens to build prompts from"
        )
    return prompts


def stream_prompts(stream: torch.Tensor, count: int, length: int) -> list[torch.Tensor]:
    """``count`` disjoint (1, length) windows of a token stream (fewer if it is short)."""
    n = min(count, stream.numel() // length)
    if n == 0:
        raise ValueError(
            f"the held-out text has {stream.numel()} tokens, fewer than one {length}-token prompt"
        )
    return [stream[i * length : (i + 1) * length].view(1, length).clone() for i in range(n)]


@dataclass
class Divergence:
    """Where a decode path first differs from plain greedy, and whether that is a top-2 tie."""

    position: int  # index into the generated tokens
    reference_token: int
    other_token: int
    gap: float  # top-1 logit minus the logit of the other path's token (0 = exact tie)
    tie: bool


@torch.inference_mode()
def divergence(
    model: nn.Module,
    prompt: torch.Tensor,
    reference: torch.Tensor,
    other: torch.Tensor,
    tolerance: float,
    suppress: list[int] | None = None,
) -> Divergence | None:
    """None if ``other`` equals ``reference`` (both (N,) generated tokens after ``prompt`` (1, T)).

    Else recompute the target's logits at the first differing position with a plain full forward
    (no cache, the reference's prefix) and call it a tie when both tokens are within ``tolerance``
    of the top logit. ``suppress`` lists tokens generate() masked (EOS under min_new_tokens).
    """
    reference, other = reference.view(-1), other.view(-1)
    diff = (reference != other).nonzero()
    if diff.numel() == 0:
        return None
    i = int(diff[0])
    prefix = (
        torch.cat([prompt.view(-1).cpu(), reference[:i]]).view(1, -1).to(model_device(model))
    )  # (1, T + i)
    logits = model(input_ids=prefix).logits[0, -1].float()  # (V,)
    for t in suppress or []:
        logits[t] = float("-inf")
    top = logits.max()
    ref_tok, oth_tok = int(reference[i]), int(other[i])
    gap = float(top - logits[oth_tok])
    tie = gap <= tolerance and float(top - logits[ref_tok]) <= tolerance
    return Divergence(i, ref_tok, oth_tok, gap, tie)


def tie_tolerance(model: nn.Module) -> float:
    """Top-2 logit gap still called a tie: 1e-4 in float32; in bf16/fp16 a logit of ~8 rounds by
    ~0.03, so two kernels (compiled vs eager, another cache layout) can swap near-tied tokens there."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return 1e-4 if dtype == torch.float32 else 5e-2


def eos_ids(model: nn.Module) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from a cache object (layers, quantized tuples, QTensors)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        inner = (
            [getattr(obj, a) for a in getattr(obj, "__tensor_flatten__", lambda: ([], None))()[0]]
            if type(obj) is not torch.Tensor
            else []
        )
        if inner:  # tensor subclass (e.g. a quanto QTensor): count its packed parts
            return sum(tensor_bytes(t, seen) for t in inner)
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o, seen) for o in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        return sum(tensor_bytes(v, seen) for k, v in vars(obj).items() if not k.startswith("__"))
    return 0


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers Cache (all layers)."""
    return sum(tensor_bytes(layer) for layer in cache.layers)
