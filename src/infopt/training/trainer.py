"""Build a Lightning Trainer from the hardware and training configs, and fit with resume.

Checkpoints go to ``<run dir>/checkpoints`` (``last.ckpt`` every ``checkpoint_every`` steps); with
``resume=true`` a rerun in the same run dir continues from it and ends where an uninterrupted run
would (same seed, deterministic data order). Checkpoints are loaded with ``weights_only=True``,
written to a temporary name and renamed (``AtomicCheckpointIO``), and one that does not load is
set aside (``last.ckpt.corrupt``) and training starts over rather than failing or trusting it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from infopt.config.schema import HardwareConfig
from infopt.faults import step_callback
from infopt.training.config import TrainConfig

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary sibling, fsync, rename: a kill never leaves a torn ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import torch

        from infopt.io import atomic_file

        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        # Never unpickle arbitrary objects from a checkpoint, whatever the caller asks.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def build_trainer(
    hardware: HardwareConfig,
    train: TrainConfig,
    run_dir: Path,
    logger=False,
    callbacks: list[Callback] | None = None,
    val_batches: int | None = None,
) -> L.Trainer:
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=train.checkpoint_every or None,
        save_on_train_epoch_end=False,
    )
    return L.Trainer(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        strategy=hardware.strategy,
        precision=hardware.precision,
        max_steps=train.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=train.accumulate,
        gradient_clip_val=train.clip_grad,
        val_check_interval=train.val_every * train.accumulate,
        check_val_every_n_epoch=None,
        limit_val_batches=val_batches or train.val_batches,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[ckpt, *(callbacks or []), *filter(None, [step_callback()])],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        deterministic=True,
        default_root_dir=str(run_dir),
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` if it loads (``weights_only``); a corrupt one is renamed aside, never trusted."""
    import torch

    path = run_dir / "checkpoints" / "last.ckpt"
    for stale in path.parent.glob(".last.ckpt.*.tmp"):  # a save that a kill interrupted
        stale.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("no state_dict")
    except Exception as err:  # truncated zip, bad pickle opcode, foreign file
        aside = path.with_name("last.ckpt.corrupt")
        os.replace(path, aside)
        log.warning("checkpoint %s does not load (%s); moved to %s, training from the start", path, err, aside.name)
        return None
    return path


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    resume: bool,
) -> Path | None:
    """Train; continue from ``last.ckpt`` when asked and present. Returns the checkpoint resumed from."""
    ckpt = last_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=str(ckpt) if ckpt else None,
        weights_only=True if ckpt else None,
    )
    return ckpt
