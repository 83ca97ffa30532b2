"""What techniques see of the data group: splits as text and as token blocks, tokenized once."""

from __future__ import annotations

from functools import cached_property

import torch

from infopt.config.schema import DataConfig
from infopt.data.blocks import contiguous_blocks, sample_blocks, tokenize_stream, tokenize_with_documents
from infopt.data.corpus import Corpus, load_corpus


class TextData:
    def __init__(self, cfg: DataConfig, tokenizer, corpus: Corpus | None = None) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self._corpus = corpus

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = load_corpus(self.cfg)
        return self._corpus

    @cached_property
    def train_stream(self) -> torch.Tensor:
        return tokenize_stream(self.tokenizer, self.corpus.train)

    @cached_property
    def calibration_stream(self) -> torch.Tensor:
        return tokenize_stream(self.tokenizer, self.corpus.calibration)

    @cached_property
    def _heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_with_documents(self.tokenizer, self.corpus.heldout)

    @property
    def heldout_stream(self) -> torch.Tensor:
        return self._heldout[0]

    @property
    def heldout_documents(self) -> torch.Tensor:
        """Index of the held-out document each token of ``heldout_stream`` belongs to."""
        return self._heldout[1]

    def calibration_blocks(
        self, count: int | None = None, seq_len: int | None = None, seed: int | None = None,
        key: str = "data.seq_len",
    ) -> torch.Tensor:  # fmt: skip
        """(count, seq_len) windows from the calibration documents (falls back to train if too short);
        ``key``: the setting that chose ``seq_len``, named when the text is too short for it."""
        count = count or self.cfg.calibration_samples
        seq_len = seq_len or self.cfg.seq_len
        stream = self.calibration_stream
        if stream.numel() <= seq_len:
            stream = self.train_stream
        return sample_blocks(stream, seq_len, count, self.cfg.seed if seed is None else seed, key)

    def train_blocks(self, seq_len: int | None = None, key: str = "data.seq_len") -> torch.Tensor:
        return contiguous_blocks(self.train_stream, seq_len or self.cfg.seq_len, key)

    def heldout_blocks(self, seq_len: int | None = None, key: str = "data.seq_len") -> torch.Tensor:
        return contiguous_blocks(self.heldout_stream, seq_len or self.cfg.seq_len, key)
