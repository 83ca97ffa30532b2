"""Token blocks for calibration and training: documents joined with EOS, cut into equal blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


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


def contiguous_blocks(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping blocks (N, seq_len); the ragged tail is dropped."""
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"{stream.numel()} tokens are fewer than one block of {seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


def sample_blocks(stream: torch.Tensor, seq_len: int, count: int, seed: int) -> torch.Tensor:
    """``count`` windows at random offsets (GPTQ-style calibration); deterministic for a seed."""
    if stream.numel() <= seq_len:
        raise ValueError(f"{stream.numel()} tokens cannot give windows of {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (count,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
