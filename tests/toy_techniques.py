"""Test-only techniques, registered at test time, to exercise pipelines and studies with any technique.

- ``toy_scale``: multiplies every Linear/Conv1D weight by ``factor`` and can cast to bfloat16
  (stored size halves), so it changes quality and size in known ways. Modifies float weights.
- ``toy_freeze``: pretends to leave real low-bit kernels (``keeps_float_weights = False``).
- ``toy_train``: needs training text (``needs_data = True``); no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from infopt.config.checks import positive
from infopt.config.schema import TechniqueConfig
from infopt.techniques.base import Applied, Technique


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
                if (
                    type(module).__name__ in ("Linear", "Conv1D")
                    and module is not model.get_output_embeddings()
                ):
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
class ToyTrainConfig(TechniqueConfig):
    name: str = "toy_train"


class ToyTrain(Technique):
    needs_data = True

    def apply(self, model, ctx) -> Applied:
        return Applied(model=model)


TOYS = {
    "toy_scale": ("ToyScaleConfig", "ToyScale"),
    "toy_freeze": ("ToyFreezeConfig", "ToyFreeze"),
    "toy_train": ("ToyTrainConfig", "ToyTrain"),
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
                config=f"toy_techniques:{config}",
                impl=f"toy_techniques:{impl}",
                family="study",
            )
        node = registry.config_class(name)
        cs.store(group="schema/technique", name=name, node=node)
        cs.store(group="technique", name=name, node=node)
