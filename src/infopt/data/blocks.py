"""Token blocks for calibration and training: documents joined with EOS, cut into equal blocks.

A block longer than its text is a setting the corpus cannot satisfy (``data.seq_len=100000`` on a
60,000-token corpus): ``TooFewTokens`` says so in one line, with the text's token count and the
largest length it allows, and the CLI exits 2 as for any other config error. (The model's context
bounds the same lengths before anything loads: ``infopt.composition.limits``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infopt.errors import ConfigError


class TooFewTokens(ConfigError, ValueError):
    """The text holds fewer tokens than one block (a ``ValueError`` too, for callers that catch that)."""


def _too_few(tokens: int, seq_len: int, largest: int, key: str) -> TooFewTokens:
    more = "give more text (data.files, data.max_docs, data.calibration_docs)"
    if largest < 1:
        return TooFewTokens(f"{key}={seq_len}: the text it is cut from has {tokens} tokens; {more}")
    return TooFewTokens(
        f"{key}={seq_len} is longer than the text it is cut from allows: {tokens} tokens, so at most {largest}; "
        f"use {key}<={largest}, or {more}"
    )


def tokenize_stream(tokenizer, docs: Sequence[str]) -> torch.Tensor:
    """All documents as one 1-D token stream, each followed by EOS (so blocks may span documents)."""
    return tokenize_with_documents(tokenizer, docs)[0]


def tokenize_with_documents(tokenizer, docs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(stream, document index of each stream token): the stream of ``tokenize_stream`` and, per token,
    which document it came from (a document's EOS belongs to it)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    owner: list[int] = []
    for i, doc in enumerate(docs):
        tokens = tokenizer(doc, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids.extend(tokens)
        owner.extend([i] * len(tokens))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def contiguous_blocks(stream: torch.Tensor, seq_len: int, key: str = "data.seq_len") -> torch.Tensor:
    """Non-overlapping blocks (N, seq_len); the ragged tail is dropped. ``key``: the setting that chose
    ``seq_len``, named if the stream is too short."""
    n = stream.numel() // seq_len
    if n == 0:
        raise _too_few(stream.numel(), seq_len, stream.numel(), key)
    return stream[: n * seq_len].view(n, seq_len)


def sample_blocks(
    stream: torch.Tensor, seq_len: int, count: int, seed: int, key: str = "data.seq_len"
) -> torch.Tensor:
    """``count`` windows at random offsets (GPTQ-style calibration); deterministic for a seed."""
    if stream.numel() <= seq_len:
        raise _too_few(stream.numel(), seq_len, stream.numel() - 1, key)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (count,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
