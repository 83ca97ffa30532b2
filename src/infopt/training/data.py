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
    """A fresh seeded permutation each epoch; the first epoch after a resume starts ``skip`` samples in.

    The order is a function of (seed, epoch) alone, so a run resumed mid-epoch from a checkpoint
    sees exactly the batches an uninterrupted run would have seen next. ``len()`` is always the
    full epoch: Lightning counts an epoch's batches from ``len(dataloader)`` and restores its own
    position inside the epoch from the checkpoint, so a shortened length would end the resumed
    epoch early and shift every later epoch (the drift issue 18 found).
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
        return self.size


def resume_position(global_step: int, batches_per_epoch: int, accumulate: int) -> tuple[int, int]:
    """(epoch, micro-batches already consumed in it) after ``global_step`` optimizer steps.

    Lightning steps the optimizer at the end of an epoch even when fewer than ``accumulate``
    micro-batches are pending, so an epoch holds ceil(batches / accumulate) steps.
    """
    steps_per_epoch = -(-batches_per_epoch // accumulate)
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    return epoch, step_in_epoch * accumulate


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
        if trainer is not None and trainer.global_step > 0:  # resumed: continue where the checkpoint left off
            epoch, skip = resume_position(trainer.global_step, len(self.train) // self.batch_size, self.accumulate)
        sampler = ResumableSampler(len(self.train), self.seed, epoch, skip * self.batch_size)
        return DataLoader(
            self.train, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=0,
            generator=_own_generator(),
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val, batch_size=self.batch_size, shuffle=False, num_workers=0, generator=_own_generator()
        )


def _own_generator() -> torch.Generator:
    """Every DataLoader iterator draws a base seed; from its own generator it leaves the global RNG
    (dropout's) alone, so a validation pass that a resumed run skips cannot shift later dropout masks."""
    return torch.Generator().manual_seed(0)
