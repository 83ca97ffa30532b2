"""LightningModule for causal-LM training stages. Subclasses override ``training_loss``.

Logs ``train/loss``, ``train/lr``, ``train/tokens_per_s``, ``val/loss`` and, on a GPU,
``train/peak_memory_mb`` (peak allocation of the process that trains). Anything that must not
be trained or checkpointed (a teacher) is held outside the module tree: see ``Frozen``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from infopt.training.config import TrainConfig


class Frozen:
    """Holds a module without registering it: not trained, not in state_dict or checkpoints."""

    def __init__(self, module: nn.Module) -> None:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits (B, T, V), input_ids (B, T)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1)
    )


@torch.no_grad()
def mean_lm_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int, vocab: int | None = None) -> float:
    """Mean next-token cross-entropy of ``model`` over ``blocks`` (N, T), ``batch_size`` rows at a time.

    A function of the weights alone: the final ``val_loss`` of a training stage is computed with it
    after fit, so a run resumed from its last checkpoint (no validation left to run) reports the
    same number as an uninterrupted one. ``vocab`` cuts padded logit columns.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values = []
    for b in blocks.split(batch_size):
        logits = model(input_ids=b.to(device)).logits
        values.append(lm_loss(logits[..., :vocab] if vocab else logits, b.to(device)).item())
    model.train(was_training)
    return sum(values) / max(1, len(values))


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class CausalLMModule(L.LightningModule):
    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model.train()  # dropout etc. as in training; eval() again after fit
        self.cfg = cfg
        self._t_last: float | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_loss(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise and named parts to log. Default: cross-entropy on the data."""
        loss = lm_loss(self(batch["input_ids"]), batch["input_ids"])
        return loss, {"ce": loss.detach()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(batch)
        now = time.perf_counter()
        tokens = batch["input_ids"].numel()
        logs = {"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()}}
        if self._t_last is not None:
            logs["train/tokens_per_s"] = torch.tensor(tokens / max(now - self._t_last, 1e-9))
        self._t_last = now
        if self.device.type == "cuda":  # logged, so it reaches the main process under ddp_spawn too
            logs["train/peak_memory_mb"] = torch.tensor(torch.cuda.max_memory_allocated(self.device) / 2**20)
        self.log_dict(
            logs,
            on_step=True,
            prog_bar=False,
            rank_zero_only=True,
            batch_size=batch["input_ids"].shape[0],
        )
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_step=True,
            rank_zero_only=True,
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = lm_loss(self(batch["input_ids"]), batch["input_ids"])
        self.log(
            "val/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["input_ids"].shape[0]
        )

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
