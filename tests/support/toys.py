"""Test-only techniques, registered at test time, to exercise pipelines, studies and training with any technique.

- ``toy_scale``: multiplies every Linear/Conv1D weight by ``factor`` and can cast to bfloat16
  (stored size halves), so it changes quality and size in known ways. Modifies float weights.
- ``toy_freeze``: pretends to leave real low-bit kernels (``keeps_float_weights = False``).
- ``toy_train``: needs training text (``needs_data = True``); no-op.
- ``toy_crash``: fails like a library bug would, with an ``OSError`` naming ``technique.path`` (a user
  value, so a secret in it must not reach the console or ``cli.log``).
- ``toy_finetune``: a few Lightning steps of next-token training on the run's data, through the same
  trainer as the real training stages (checkpoints in the run dir, resume from ``last.ckpt``, atomic
  checkpoint writes, the fault-injection hook), so the kill tests exercise the code distillation and
  recovery use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infopt.config.checks import positive
from infopt.config.schema import TechniqueConfig
from infopt.techniques.base import Applied, Technique
from infopt.training.config import TrainConfig


@dataclass
class ToyScaleConfig(TechniqueConfig):
    name: str = "toy_scale"
    factor: float = 0.5  # multiplies every Linear/Conv1D weight
    half: bool = True  # cast the model to bfloat16 (stored size halves)

    def validate(self) -> None:
        super().validate()
        positive("technique.factor", self.factor)


class ToyScale(Technique):
    needs_float_weights = True

    def apply(self, model, ctx) -> Applied:
        import torch

        n = 0
        with torch.no_grad():
            for module in model.modules():
                if type(module).__name__ in ("Linear", "Conv1D") and module is not model.get_output_embeddings():
                    module.weight.mul_(self.config.factor)
                    n += 1
        if self.config.half:
            model = model.to(torch.bfloat16)
        return Applied(
            model=model,
            execution="dense",
            metrics={"scaled_modules": float(n)},
            notes=[f"scaled {n} modules"],
        )


@dataclass
class ToyFreezeConfig(TechniqueConfig):
    name: str = "toy_freeze"


class ToyFreeze(Technique):
    keeps_float_weights = False

    def apply(self, model, ctx) -> Applied:
        return Applied(model=model, execution="real")


@dataclass
class ToyCrashConfig(TechniqueConfig):
    name: str = "toy_crash"
    path: str = "/nonexistent/weights.bin"


class ToyCrash(Technique):
    def apply(self, model, ctx) -> Applied:
        raise OSError(f"[Errno 2] No such file or directory: '{self.config.path}'")


@dataclass
class ToyTrainConfig(TechniqueConfig):
    name: str = "toy_train"


class ToyTrain(Technique):
    needs_data = True

    def apply(self, model, ctx) -> Applied:
        return Applied(model=model)


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
        from infopt.training.module import CausalLMModule, mean_lm_loss
        from infopt.training.trainer import build_trainer, fit, train_metrics

        t: TrainConfig = self.config.train
        L.seed_everything(t.seed, verbose=False)
        train = BlockDataset(ctx.data.train_blocks(t.seq_len)[:64])
        val = BlockDataset(ctx.data.heldout_blocks(t.seq_len)[:8])
        dm = BlockDataModule(train, val, batch_size=t.batch_size, seed=t.seed, accumulate=t.accumulate)
        trainer = build_trainer(ctx.cfg.hardware, t, ctx.output_dir, logger=ctx.logger.lightning_logger())
        module = CausalLMModule(model, t)
        resumed = fit(trainer, module, dm, ctx.output_dir, resume=t.resume)
        if resumed is not None:
            ctx.resumed_from.append(str(resumed))
        model.eval()
        metrics = {k: v for k, v in train_metrics(trainer).items() if k == "train/loss"}
        metrics["val/loss"] = mean_lm_loss(model, val.blocks, t.batch_size)
        metrics["steps"] = float(trainer.global_step)
        notes = [f"resumed from {resumed.name}"] if resumed else []
        return Applied(model=model, execution="dense", metrics=metrics, notes=notes)


TOYS = {
    "toy_scale": ("ToyScaleConfig", "ToyScale"),
    "toy_freeze": ("ToyFreezeConfig", "ToyFreeze"),
    "toy_train": ("ToyTrainConfig", "ToyTrain"),
    "toy_crash": ("ToyCrashConfig", "ToyCrash"),
    "toy_finetune": ("ToyFinetuneConfig", "ToyFinetune"),
}


def register_toys() -> None:
    """Register the toys in the technique registry and in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from infopt.composition.store import register_configs
    from infopt.techniques import registry

    register_configs()
    cs = ConfigStore.instance()
    for name, (config, impl) in TOYS.items():
        if name not in registry.names():
            registry.register(
                name,
                config=f"support.toys:{config}",
                impl=f"support.toys:{impl}",
                family="study",
            )
        node = registry.config_class(name)
        cs.store(group="schema/technique", name=name, node=node)
        cs.store(group="technique", name=name, node=node)
