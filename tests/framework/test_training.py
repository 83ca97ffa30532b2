"""The shared Lightning loop: it learns, and an interrupted fit resumes to the same weights."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from infopt.config.schema import HardwareConfig
from infopt.training.config import TrainConfig
from infopt.training.data import BlockDataModule, BlockDataset
from infopt.training.module import CausalLMModule, lm_loss
from infopt.training.trainer import build_trainer, fit

CPU = HardwareConfig(name="cpu")


def _datamodule(text_data, seq_len=32, batch_size=4):
    train = BlockDataset(text_data.train_blocks(seq_len)[:64])
    val = BlockDataset(text_data.heldout_blocks(seq_len)[:8])
    return BlockDataModule(train, val, batch_size=batch_size, seed=0)


@torch.no_grad()
def _heldout_loss(model, text_data) -> float:
    blocks = text_data.heldout_blocks(32)[:8]
    return lm_loss(model(input_ids=blocks).logits, blocks).item()


def test_short_fit_lowers_heldout_loss(tiny_llama, text_data, tmp_path):
    before = _heldout_loss(tiny_llama, text_data)
    cfg = TrainConfig(max_steps=30, lr=3e-3, warmup_steps=2, val_every=10, checkpoint_every=0)
    module = CausalLMModule(tiny_llama, cfg)
    fit(build_trainer(CPU, cfg, tmp_path), module, _datamodule(text_data), tmp_path, resume=False)
    after = _heldout_loss(tiny_llama.eval(), text_data)
    assert after < before - 0.5, (before, after)


class _StopAt(L.Callback):
    """Simulates a kill after the checkpoint of step ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if (
            trainer.global_step > self.step
        ):  # checkpoint callbacks run last: step `step` is saved by now
            raise KeyboardInterrupt


class _Seen(L.Callback):
    """Records, per optimizer step, the first token of every sample the step trained on."""

    def __init__(self) -> None:
        self.batches: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.setdefault(trainer.global_step, []).extend(batch["input_ids"][:, 0].tolist())


class _WarnAt(L.Callback):
    """Sends this process SIGUSR2 (SLURM's warning before a time limit) as step ``step`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


@pytest.mark.parametrize(
    "arch, blocks, accumulate, warn_at, stop_after, resumed_at",
    [
        # GPT-2 has dropout (RNG state restored); 3 micro-batches an epoch, 2 per optimizer step
        # (Lightning steps at the epoch's end); checkpoint of step 3 mid-epoch, validation at that step.
        ("gpt2", 12, 2, None, 4, 3),
        # 2 batches an epoch. SIGUSR2 during step 3: a checkpoint at its end (step 4, an epoch's end)
        # besides the regular one of step 3, and training goes on; stopped after step 5.
        ("llama", 8, 1, 3, 4, 4),
    ],
)
def test_resume_is_bit_identical_across_epochs_accumulation_and_dropout(
    tokenizer, text_data, tmp_path, arch, blocks, accumulate, warn_at, stop_after, resumed_at
):
    from conftest import _tiny
    from infopt.interrupt import signals_interrupt

    cfg = TrainConfig(
        max_steps=6, lr=1e-3, warmup_steps=2, val_every=3, val_batches=1, checkpoint_every=3, accumulate=accumulate
    )

    def datamodule():
        train = BlockDataset(text_data.train_blocks(16)[:blocks])
        val = BlockDataset(text_data.heldout_blocks(16)[:4])
        return BlockDataModule(train, val, batch_size=4, seed=0, accumulate=accumulate)

    def run(out, extra=(), resume=False):
        L.seed_everything(0)
        model = _tiny(tokenizer, arch)
        seen = _Seen()
        trainer = build_trainer(CPU, cfg, out, callbacks=[seen, *extra])
        with signals_interrupt():  # as in a run: SIGUSR2 asks for a checkpoint
            fit(trainer, CausalLMModule(model, cfg), datamodule(), out, resume=resume)
        return model, seen.batches

    straight, straight_seen = run(tmp_path / "a")
    with pytest.raises(SystemExit):
        run(tmp_path / "b", extra=[_StopAt(stop_after), *([_WarnAt(warn_at)] if warn_at else [])])
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == resumed_at
    resumed, resumed_seen = run(tmp_path / "b", resume=True)
    assert resumed_seen == {s: b for s, b in straight_seen.items() if s >= resumed_at}
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
