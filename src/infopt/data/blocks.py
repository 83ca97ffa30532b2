"""Token blocks for calibration and training: documents joined with EOS, cut into equal blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize_stream(tokenizer, docs: Sequence[str]) -> torch.Tensor:
    """All documents as one 1-D token stream, each followed by EOS (so blocks may span documents)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


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
