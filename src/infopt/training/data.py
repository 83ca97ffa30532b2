"""A LightningDataModule over fixed token blocks: train blocks shuffled by seed, held-out in order."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class BlockDataset(Dataset):
    """Rows of a (N, T) token tensor, plus optional per-row extras (cached teacher logits...)."""

    def __init__(self, blocks: torch.Tensor, extras: dict[str, torch.Tensor] | None = None) -> None:
        self.blocks = blocks
        self.extras = extras or {}
        for name, t in self.extras.items():
            if t.shape[0] != blocks.shape[0]:
                raise ValueError(
                    f"extra {name!r} has {t.shape[0]} rows, blocks have {blocks.shape[0]}"
                )

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.blocks[i]}
        item.update({name: t[i] for name, t in self.extras.items()})
        return item


class ResumableSampler(Sampler[int]):
    """A fresh seeded permutation each epoch, starting ``skip`` samples in.

    The order is a function of (seed, epoch) alone, so a run resumed mid-epoch from a checkpoint
    sees exactly the batches an uninterrupted run would have seen next.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.size, self.seed, self.epoch, self.skip = size, seed, epoch, skip

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=gen).tolist()
        skip, self.skip = self.skip, 0  # only the first epoch after a resume is partial
        self.epoch += 1
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.size - self.skip


class BlockDataModule(L.LightningDataModule):
    def __init__(
        self, train: Dataset, val: Dataset, batch_size: int, seed: int = 0, accumulate: int = 1
    ) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.seed, self.accumulate = (
            train,
            val,
            batch_size,
            seed,
            accumulate,
        )

    def train_dataloader(self) -> DataLoader:
        epoch, skip = 0, 0
        trainer = getattr(self, "trainer", None)
        if (
            trainer is not None and trainer.global_step > 0
        ):  # resumed: continue where the checkpoint left off
            batches_per_epoch = len(self.train) // self.batch_size
            consumed = trainer.global_step * self.accumulate
            epoch, skip = divmod(consumed, batches_per_epoch)
            skip *= self.batch_size
        sampler = ResumableSampler(len(self.train), self.seed, epoch, skip)
        return DataLoader(
            self.train, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=0
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, shuffle=False, num_workers=0)
