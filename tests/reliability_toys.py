"""Test-only ``toy_finetune``: a few Lightning steps of next-token training on the run's data.

It goes through the same trainer as real training stages (``infopt.training``: checkpoints in the
run dir, resume from ``last.ckpt``, atomic checkpoint writes, the fault-injection hook), so the
kill tests exercise the code the distillation and recovery stages use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infopt.config.schema import TechniqueConfig
from infopt.techniques.base import Applied, Technique
from infopt.training.config import TrainConfig


def _small_train() -> TrainConfig:
    return TrainConfig(
        max_steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, val_every=4, val_batches=2, checkpoint_every=3
    )


@dataclass
class ToyFinetuneConfig(TechniqueConfig):
    name: str = "toy_finetune"
    train: TrainConfig = field(default_factory=_small_train)

    def validate(self) -> None:
        super().validate()
        self.train.validate()


class ToyFinetune(Technique):
    needs_data = True
    needs_float_weights = True

    def apply(self, model, ctx) -> Applied:
        import lightning as L

        from infopt.training.data import BlockDataModule, BlockDataset
        from infopt.training.module import CausalLMModule
        from infopt.training.trainer import build_trainer, fit

        t: TrainConfig = self.config.train
        L.seed_everything(t.seed, verbose=False)
        train = BlockDataset(ctx.data.train_blocks(t.seq_len)[:64])
        val = BlockDataset(ctx.data.heldout_blocks(t.seq_len)[:8])
        dm = BlockDataModule(train, val, batch_size=t.batch_size, seed=t.seed, accumulate=t.accumulate)
        trainer = build_trainer(ctx.cfg.hardware, t, ctx.output_dir, logger=ctx.logger.lightning_logger())
        module = CausalLMModule(model, t)
        resumed = fit(trainer, module, dm, ctx.output_dir, resume=t.resume)
        model.eval()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/loss", "val/"))}
        metrics["steps"] = float(trainer.global_step)
        notes = [f"resumed from {resumed.name}"] if resumed else []
        return Applied(model=model, execution="dense", metrics=metrics, notes=notes)


def register() -> None:
    """Register ``toy_finetune`` in the technique registry and Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from infopt.composition.store import register_configs
    from infopt.techniques import registry

    register_configs()
    if "toy_finetune" not in registry.names():
        registry.register(
            "toy_finetune",
            config="reliability_toys:ToyFinetuneConfig",
            impl="reliability_toys:ToyFinetune",
            family="study",
        )
    cs = ConfigStore.instance()
    cs.store(group="schema/technique", name="toy_finetune", node=ToyFinetuneConfig)
    cs.store(group="technique", name="toy_finetune", node=ToyFinetuneConfig)
