"""Recovery fine-tuning after pruning, through the shared Lightning loop (``infopt.training``).

Masks are kept exactly (``training.masks.MaskKeeper``). With LoRA the adapter's update B A is dense: the
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
from infopt.training.data import BlockDataModule, BlockDataset
from infopt.training.lora import apply_lora, merge_lora
from infopt.training.masks import MaskKeeper, module_masks
from infopt.training.module import CausalLMModule, mean_lm_loss
from infopt.training.trainer import build_trainer, fit

log = logging.getLogger(__name__)


def recover(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    cfg: RecoverConfig,
    hardware: HardwareConfig,
    train_blocks: torch.Tensor,
    val_blocks: torch.Tensor,
    run_dir: Path,
    resumed_from: list[str] | None = None,
) -> tuple[nn.Module, dict[str, float], list[str]]:
    """Fine-tune ``model`` on ``train_blocks`` keeping ``masks`` ((out, in), True = kept).

    A checkpoint this resumed from is appended to ``resumed_from`` (the run's record says so)."""
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
    resumed = fit(trainer, module, dm, run_dir, resume=cfg.resume)
    wall = time.perf_counter() - t
    model = merge_lora(train_model) if cfg.lora.enabled else train_model
    MaskKeeper(model, layout).apply()
    model.eval()
    metrics = {
        "recover_wall_s": wall,
        "recover_steps": float(trainer.global_step),
        "recover_resumed": float(resumed is not None),
    }
    # The recovered model's loss on the validation blocks (a function of the weights: the same after a resume).
    metrics["recover_val_loss"] = mean_lm_loss(model, val_blocks[: cfg.val_batches * cfg.batch_size], cfg.batch_size)
    if resumed is not None:
        notes.append(f"recovery resumed from {resumed}")
        if resumed_from is not None:
            resumed_from.append(str(resumed))
    return model, metrics, notes
