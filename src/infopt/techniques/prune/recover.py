"""Recovery fine-tuning after pruning, through the shared Lightning loop (``infopt.training``).

Masks are kept exactly: gradients of pruned weights are zeroed before every optimizer step (so
AdamW's moments never move them) and the masks are re-applied after every step (covering weight
decay and anything else that might touch them). With LoRA the adapter's update B A is dense: the
masks are re-applied after merging, which discards the part of the update that lands on pruned
weights (said in the run's notes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from infopt.config.schema import HardwareConfig
from infopt.techniques.prune.config import RecoverConfig
from infopt.techniques.prune.unstructured import to_module_layout
from infopt.training.data import BlockDataModule, BlockDataset
from infopt.training.lora import apply_lora, merge_lora
from infopt.training.module import CausalLMModule
from infopt.training.trainer import build_trainer, fit

log = logging.getLogger(__name__)


class MaskKeeper(L.Callback):
    """Holds (module name -> keep-mask in the module's weight layout) and enforces it in training."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self.model = model

    def _pairs(self):
        for name, mask in self.masks.items():
            module = self.model.get_submodule(name)
            yield module.weight, mask

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for weight, mask in self._pairs():
            if weight.grad is not None:
                weight.grad.mul_(mask.to(weight.grad.device, weight.grad.dtype))

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in self._pairs():
            weight.mul_(mask.to(weight.device, weight.dtype))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.apply()


def module_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(out, in) masks -> masks in each module's own weight layout (GPT-2's Conv1D is (in, out))."""
    return {n: to_module_layout(model.get_submodule(n), m) for n, m in masks.items()}


def recover(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    cfg: RecoverConfig,
    hardware: HardwareConfig,
    train_blocks: torch.Tensor,
    val_blocks: torch.Tensor,
    run_dir: Path,
) -> tuple[nn.Module, dict[str, float], list[str]]:
    """Fine-tune ``model`` on ``train_blocks`` keeping ``masks`` ((out, in), True = kept)."""
    notes: list[str] = []
    layout = module_masks(model, masks)
    train_model = model
    if cfg.lora.enabled:
        train_model = apply_lora(model, cfg.lora)
        notes.append(
            "recovery with LoRA: the merged low-rank update is dense; pruning masks are re-applied after merging"
        )
        keeper = None
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        keeper = MaskKeeper(model, layout)
    L.seed_everything(cfg.seed, verbose=False)
    module = CausalLMModule(train_model, cfg)
    dm = BlockDataModule(BlockDataset(train_blocks), BlockDataset(val_blocks), cfg.batch_size, cfg.seed, cfg.accumulate)
    trainer = build_trainer(hardware, cfg, run_dir, callbacks=[keeper] if keeper else None)
    t = time.perf_counter()
    fit(trainer, module, dm, run_dir, resume=cfg.resume)
    wall = time.perf_counter() - t
    model = merge_lora(train_model) if cfg.lora.enabled else train_model
    MaskKeeper(model, layout).apply()
    model.eval()
    metrics = {"recover_wall_s": wall, "recover_steps": float(trainer.global_step)}
    val = trainer.callback_metrics.get("val/loss")
    if val is not None:
        metrics["recover_val_loss"] = float(val)
    return model, metrics, notes
