"""The shared Lightning loop: it learns, and an interrupted fit resumes to the same weights."""

from __future__ import annotations

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


def test_interrupted_fit_resumes_to_the_same_weights(tokenizer, text_data, tmp_path):
    from conftest import _tiny

    cfg = TrainConfig(max_steps=8, lr=1e-3, warmup_steps=2, val_every=4, checkpoint_every=4)

    L.seed_everything(0)
    straight = _tiny(tokenizer, "llama")
    fit(
        build_trainer(CPU, cfg, tmp_path / "a"),
        CausalLMModule(straight, cfg),
        _datamodule(text_data),
        tmp_path / "a",
        resume=False,
    )

    L.seed_everything(0)
    interrupted = _tiny(tokenizer, "llama")
    trainer = build_trainer(CPU, cfg, tmp_path / "b", callbacks=[_StopAt(4)])
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit status 1
        fit(
            trainer,
            CausalLMModule(interrupted, cfg),
            _datamodule(text_data),
            tmp_path / "b",
            resume=False,
        )
    assert trainer.global_step == 5
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()

    L.seed_everything(0)
    resumed = _tiny(tokenizer, "llama")  # fresh process state: weights come from the checkpoint
    resumed_from = fit(
        build_trainer(CPU, cfg, tmp_path / "b"),
        CausalLMModule(resumed, cfg),
        _datamodule(text_data),
        tmp_path / "b",
        resume=True,
    )
    assert resumed_from is not None
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
