"""Build a Lightning Trainer from the hardware and training configs, and fit with resume.

Checkpoints go to ``<run dir>/checkpoints`` (``last.ckpt`` every ``checkpoint_every`` steps); with
``resume=true`` a rerun in the same run dir continues from it and ends where an uninterrupted run
would (same seed, deterministic data order). Checkpoints are loaded with ``weights_only=True``,
written to a temporary name and renamed (``AtomicCheckpointIO``), and one that does not load is
set aside (``last.ckpt.corrupt``) and training starts over rather than failing or trusting it.

Bit-identical resume needs, besides what Lightning checkpoints (weights, AdamW moments, the LR
scheduler, loop counters): the same data order (``data.ResumableSampler``), the RNG states that
dropout draws from (``ResumeState``), and the last logged training metrics (``ResumeState``, so a
run resumed from its final checkpoint reports the same ``train/loss``). Exactness assumes the same
hardware, library versions and thread count; under multi-process DDP only rank 0's RNG state is
saved. A run that resumed says so in ``results.json`` (``run.resumed_from``).
"""

from __future__ import annotations

import logging
import os
import warnings
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


def _rng_states() -> dict:
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype("int64")),  # tensors, ints: loadable with weights_only
        "numpy_pos": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    pos, has_gauss, gauss = states["numpy_pos"]
    np.random.set_state(("MT19937", states["numpy"].numpy().astype("uint32"), int(pos), int(has_gauss), gauss))
    random.setstate((3, tuple(states["python"]), None))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(Callback):
    """Carries in every checkpoint what Lightning leaves out: the RNG states and the last train metrics.

    RNG: a checkpoint of step N is written after step N; the resumed run restores the states just
    before its first step (N + 1), so dropout draws the same masks as an uninterrupted run. Metrics:
    the last ``train/*`` values logged, restored with the checkpoint, so a run resumed from its final
    checkpoint (killed after training, during evaluation) reports what the uninterrupted run did.
    After SLURM's warning before a time limit (``infopt.interrupt.WARNING``) it also writes
    ``last.ckpt`` at the end of the step in progress, at the point where regular checkpoints are written.
    """

    def __init__(self, last_ckpt: Path | None = None) -> None:
        self.metrics: dict[str, float] = {}
        self.last_ckpt = last_ckpt
        self._restore: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if self._restore is not None:
            _set_rng_states(self._restore)
            self._restore = None

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        from infopt.interrupt import take_warning

        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and getattr(value, "numel", lambda: 1)() == 1:
                self.metrics[key] = float(value)
        # Only between optimizer steps (never mid-accumulation): the same point regular checkpoints are taken.
        if self.last_ckpt is not None and not trainer.fit_loop._should_accumulate() and take_warning():
            trainer.save_checkpoint(self.last_ckpt)
            log.warning(
                "SIGUSR2 (the scheduler's warning before a time limit): saved %s at step %d; training goes on",
                self.last_ckpt,
                trainer.global_step,
            )

    def state_dict(self) -> dict:
        return {"rng": _rng_states(), "metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = state_dict.get("rng")
        self.metrics = dict(state_dict.get("metrics", {}))


def train_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last logged ``train/*`` values, also after a resume that had no step left to run.

    Under ``ddp_spawn`` the callback's copy lives in the workers; the trainer's callback metrics
    (sent back to the main process) fill in.
    """
    state = next((c for c in trainer.callbacks if isinstance(c, ResumeState)), None)
    values = dict(state.metrics) if state is not None else {}
    for key, value in trainer.callback_metrics.items():
        if key.startswith("train/") and getattr(value, "numel", lambda: 1)() == 1:
            values.setdefault(key, float(value))
    return values


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
        # Always last.ckpt: a last.ckpt this fit did not write (the SIGUSR2 save, a run restarted
        # with resume=false) would otherwise make it write last-v1.ckpt, which resume never reads.
        enable_version_counter=False,
    )
    with warnings.catch_warnings():
        # Lightning suggests `srun python ...` wherever srun is installed; infopt's SLURM jobs run
        # through submitit (hydra/launcher=slurm), which does that itself.
        warnings.filterwarnings("ignore", message=".*`srun` command is available on your system.*")
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
            callbacks=[
                ResumeState(run_dir / "checkpoints" / "last.ckpt"),
                ckpt,
                *(callbacks or []),
                *filter(None, [step_callback()]),
            ],
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
    with warnings.catch_warnings():
        # "resuming from a checkpoint that ended before the epoch ended and your dataloader is not
        # resumable": it is, by our own sampler (data.ResumableSampler), which Lightning cannot see.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(ckpt) if ckpt else None,
            weights_only=True,
        )
    return ckpt
