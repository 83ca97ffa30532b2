"""Schema of ``technique=layer_sensitivity`` (light: imported at start-up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infopt.config.checks import choice, positive
from infopt.config.schema import TechniqueConfig
from infopt.errors import ConfigError

PARTS = ("block", "attn", "mlp")


@dataclass
class LayerSensitivityConfig(TechniqueConfig):
    name: str = "layer_sensitivity"
    # The technique applied one layer at a time: a technique node, e.g. {name: quantize, bits: 4}.
    inner: Any = None
    # What is swapped in per layer: block (the whole decoder layer), attn, mlp (its sub-modules).
    parts: list[str] = field(default_factory=lambda: ["block"])
    eval_blocks: int = (
        8  # held-out windows scored per layer (the loss is the mean token NLL over them)
    )
    seq_len: int = 256  # tokens per window
    top_k: int = 3  # how many most-sensitive layers the result names

    def inner_config(self) -> TechniqueConfig:
        from infopt.techniques.pipeline_config import build_stage_config

        return build_stage_config(self.inner, "technique.inner")

    def validate(self) -> None:
        super().validate()
        if not self.inner:
            raise ConfigError(
                "technique.inner is empty; give the technique to apply per layer, e.g. technique.inner='{name: quantize}'"
            )
        if not self.parts:
            raise ConfigError(f"technique.parts is empty; choose from: {', '.join(PARTS)}")
        for part in self.parts:
            choice("technique.parts[]", part, PARTS)
        positive("technique.eval_blocks", self.eval_blocks)
        positive("technique.seq_len", self.seq_len)
        positive("technique.top_k", self.top_k)
        self.inner_config()
