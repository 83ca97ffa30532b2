"""Shared pieces of the architecture techniques: greedy generation, prompts, tie checks, cache bytes.

The greedy-equivalence check is the oracle of this package: a faster decode path must return the
tokens plain greedy decoding returns; where it does not, the first differing position must be a
place where the target's top two logits tie within float tolerance (a different summation order
may then legitimately flip the argmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from infopt.models.surgery import context_length, model_device


def cached_forward(model: nn.Module, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """One forward that reads and extends a KV cache: (logits, cache).

    transformers 5.2x calls it ``cache`` (argument and output); earlier 5.x releases, such as the
    GPU machine's 5.17, ``past_key_values``. Either is taken from the model's own signature.
    """
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True, **({name: cache} if cache is not None else {}))
    return out.logits, out["cache"] if "cache" in out else out["past_key_values"]


def resolve_lengths(model: nn.Module, lengths: list[int]) -> list[int]:
    """Context lengths with 0 meaning the model's maximum; duplicates dropped, order kept."""
    top = context_length(model.config)
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


def decode_step_seconds(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int, pad: int | None, repeats: int, **kwargs: Any
) -> float:
    """Seconds per decoded token, prefill excluded: (t(N) - t(1)) / (N - 1); NaN when contention swamped it.

    Fastest of ``repeats`` runs on each side: on a shared CPU other processes only ever add time,
    and a difference of two medians can go negative under contention.
    """
    from infopt.bench.timing import repeat

    one = repeat(lambda: greedy(model, prompt, 1, pad, **kwargs), repeats).min
    full = repeat(lambda: greedy(model, prompt, new_tokens, pad, **kwargs), repeats).min
    return (full - one) / (new_tokens - 1) if full > one else float("nan")


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


def tokens_of_length(stream: torch.Tensor, n: int) -> torch.Tensor:
    """(1, n) real-text tokens; the stream is repeated when shorter than n (for timing and memory only)."""
    reps = -(-n // max(stream.numel(), 1))
    return stream.repeat(reps)[:n].view(1, n).clone()


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


@dataclass
class Agreement:
    """Greedy generations of a decode path against plain greedy decoding, over several prompts."""

    prompts: int
    identical: int  # prompts whose tokens are all equal
    ties: int  # prompts that first differ at a top-2 logit tie
    non_ties: int  # prompts that differ elsewhere (a bug for exact paths)
    prefix_fraction: float  # generated tokens before the first difference, over all generated

    def metrics(self) -> dict[str, float]:
        return {
            "greedy_identical_fraction": self.identical / self.prompts,
            "greedy_prefix_agreement": self.prefix_fraction,
            "greedy_divergences_at_ties": float(self.ties),
            "greedy_divergences_not_ties": float(self.non_ties),
        }


def greedy_agreement(
    model: nn.Module,
    prompts: list[torch.Tensor],
    new_tokens: int,
    pad: int | None,
    kwargs: dict[str, Any],
    tolerance: float | None = None,
    references: list[torch.Tensor] | None = None,
) -> Agreement:
    """Compare ``greedy(..., **kwargs)`` with plain greedy (or ``references``) on each prompt; a top-2
    gap within ``tolerance`` (default: ``tie_tolerance`` of the model's dtype) counts as a tie."""
    tolerance = tie_tolerance(model) if tolerance is None else tolerance
    identical = ties = non_ties = agree = 0
    for i, p in enumerate(prompts):
        ref = references[i] if references is not None else greedy(model, p, new_tokens, pad)[0]
        out = greedy(model, p, new_tokens, pad, **kwargs)[0]
        d = divergence(model, p, ref, out, tolerance, suppress=eos_ids(model))
        if d is None:
            identical, agree = identical + 1, agree + new_tokens
        else:
            agree, ties, non_ties = agree + d.position, ties + d.tie, non_ties + (not d.tie)
    return Agreement(len(prompts), identical, ties, non_ties, agree / (len(prompts) * new_tokens))


def eos_ids(model: nn.Module) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers Cache (all layers)."""
    from infopt.bench.size import tensor_bytes

    return sum(tensor_bytes(layer) for layer in cache.layers)
