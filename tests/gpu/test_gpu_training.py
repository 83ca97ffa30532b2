"""GPU: Lightning training in bf16-mixed on one device, DDP (ddp_spawn) and FSDP with devices=1
(one GPU: FSDP still wraps the model in its flat parameters), checkpoints through the atomic
checkpoint IO with the pruning MaskKeeper, and resume to the weights an uninterrupted run ends with."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from conftest import run_main
from infopt.config.schema import HardwareConfig
from infopt.training.config import TrainConfig
from infopt.training.data import BlockDataModule, BlockDataset
from infopt.training.masks import MaskKeeper
from infopt.training.module import CausalLMModule, lm_loss
from infopt.training.trainer import build_trainer, fit
from support.gpu import CUDA, DEVICE, HW, RUN, needs_cuda, text_data, tiny

pytestmark = pytest.mark.gpu


def _hardware(strategy: str = "auto") -> HardwareConfig:
    if CUDA:
        return HardwareConfig(name=strategy, accelerator="gpu", devices=1, strategy=strategy, precision="bf16-mixed")
    return HardwareConfig(name="cpu", strategy=strategy)


def _datamodule(data, seq_len=32, batch_size=4):
    train = BlockDataset(data.train_blocks(seq_len)[:64])
    val = BlockDataset(data.heldout_blocks(seq_len)[:8])
    return BlockDataModule(train, val, batch_size=batch_size, seed=0)


@torch.no_grad()
def _heldout_loss(model, data) -> float:
    blocks = data.heldout_blocks(32)[:8].to(next(model.parameters()).device)
    return lm_loss(model(input_ids=blocks).logits, blocks).item()


def test_bf16_mixed_fit_lowers_heldout_loss(tokenizer, tmp_path):
    data = text_data(tokenizer)
    model = tiny(tokenizer)
    before = _heldout_loss(model, data)
    cfg = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=2, val_every=10, checkpoint_every=0)
    trainer = build_trainer(_hardware(), cfg, tmp_path)
    fit(trainer, CausalLMModule(model, cfg), _datamodule(data), tmp_path, resume=False)
    assert next(model.parameters()).device.type == DEVICE.type
    after = _heldout_loss(model.eval(), data)
    assert after < before - 0.5, (before, after)
    if CUDA:
        assert str(trainer.precision) == "bf16-mixed"
        assert trainer.callback_metrics["train/peak_memory_mb"] > 0


class _StopAt(L.Callback):
    """A kill right after the checkpoint of step ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step > self.step:
            raise KeyboardInterrupt


def _two_four_masks(model) -> dict[str, torch.Tensor]:
    masks = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            g = mod.weight.detach().reshape(mod.weight.shape[0], -1, 4)  # (out, in / 4, 4)
            keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.abs().topk(2, dim=-1).indices, True)
            masks[name] = keep.reshape_as(mod.weight)
            with torch.no_grad():
                mod.weight.mul_(masks[name])
    return masks


def _pruned_fit(tokenizer, data, run_dir, hardware, callbacks=(), resume=False):
    L.seed_everything(0)
    model = tiny(tokenizer)
    masks = _two_four_masks(model)
    cfg = TrainConfig(max_steps=8, lr=1e-3, warmup_steps=2, val_every=4, checkpoint_every=4)
    trainer = build_trainer(hardware, cfg, run_dir, callbacks=[MaskKeeper(model, masks), *callbacks])
    resumed_from = fit(trainer, CausalLMModule(model, cfg), _datamodule(data), run_dir, resume=resume)
    return model, masks, trainer, resumed_from


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_interrupted_masked_fit_resumes_to_the_same_weights(tokenizer, tmp_path, strategy):
    """Recovery fine-tuning's loop: masks kept through training, an atomic last.ckpt, exact resume."""
    if strategy == "fsdp":
        needs_cuda("Lightning's FSDP strategy")
    data = text_data(tokenizer)
    hardware = _hardware(strategy)
    straight, masks, _, _ = _pruned_fit(tokenizer, data, tmp_path / "a", hardware)
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit status 1
        _pruned_fit(tokenizer, data, tmp_path / "b", hardware, callbacks=[_StopAt(4)])
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert not list(ckpt.parent.glob(".last.ckpt.*.tmp"))  # written to a temporary name, then renamed
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    resumed, _, trainer, resumed_from = _pruned_fit(tokenizer, data, tmp_path / "b", hardware, resume=True)
    assert resumed_from == ckpt and trainer.global_step == 8
    for name, mask in masks.items():
        for model in (straight, resumed):
            w = model.get_submodule(name).weight.detach().cpu()
            assert torch.count_nonzero(w[~mask.cpu()]) == 0, f"{name}: a pruned weight moved"
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


DISTILL = ["model=tiny_llama", "technique=distill", "technique.train.seq_len=32", "technique.train.batch_size=4",
           "technique.train.warmup_steps=2", "technique.train.val_batches=2", "technique.train.checkpoint_every=0",
           "technique.train.max_steps=6", "technique.train.val_every=6", "technique.student.layers=[1]",
           "technique.data.train_docs=30", "technique.save_student=false"]  # fmt: skip


@pytest.mark.parametrize("hardware", ["gpu", "multi_gpu", "fsdp"])
def test_short_distillation_trains_under_each_strategy(tmp_path, hardware):
    """One device each: auto, DDP (ddp_spawn, one worker process), FSDP."""
    if CUDA:
        hw = [f"hardware={hardware}", "hardware.devices=1", "model.dtype=bfloat16"]
    elif hardware == "fsdp":
        needs_cuda("Lightning's FSDP strategy")
    else:
        hw = ["hardware=cpu"] + (["hardware.strategy=ddp_spawn"] if hardware == "multi_gpu" else [])
    record = run_main([*DISTILL, *RUN, *hw], tmp_path)
    metrics = record["technique"]["metrics"]
    assert metrics["train_steps"] == 6
    assert math.isfinite(metrics["val_loss"])
    assert metrics["train_tokens_per_s"] > 0
    if CUDA:
        assert metrics["train_peak_memory_mb"] > 0
    assert record["result"]["bench"]["decode_tokens_per_s_b1"] > 0  # the student runs on the device
    assert HW  # the device overrides these runs replace
