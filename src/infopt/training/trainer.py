"""Build a Lightning Trainer from the hardware and training configs, and fit with resume.

Checkpoints go to ``<run dir>/checkpoints`` (``last.ckpt`` every ``checkpoint_every`` steps); with
``resume=true`` a rerun in the same run dir continues from it and ends where an uninterrupted run
would (same seed, deterministic data order). Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from infopt.config.schema import HardwareConfig
from infopt.training.config import TrainConfig

log = logging.getLogger(__name__)


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
        callbacks=[ckpt, *(callbacks or [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        deterministic=True,
        default_root_dir=str(run_dir),
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


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
