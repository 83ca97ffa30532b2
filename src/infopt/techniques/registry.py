"""Explicit technique registry: name -> (config schema, implementation, family).

Names map to import paths so ``--help`` stays fast, but a broken import fails loudly when the
technique is used, never as "technique not found". A lookup miss names every registered technique.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infopt.errors import ConfigError

if TYPE_CHECKING:
    from infopt.config.schema import TechniqueConfig
    from infopt.techniques.base import Technique

# The review's four families, plus the untouched baseline and studies that wrap other techniques.
FAMILIES = ("baseline", "quantization", "pruning", "distillation", "architecture", "study")


@dataclass(frozen=True)
class TechniqueSpec:
    name: str
    config: str  # "module:ConfigClass"
    impl: str  # "module:TechniqueClass"
    family: str  # one of FAMILIES
    wraps_techniques: bool = False  # its config holds other technique nodes (cannot itself be a stage)


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_SPECS: dict[str, TechniqueSpec] = {}


def register(name: str, *, config: str, impl: str, family: str, wraps_techniques: bool = False) -> None:
    if name in _SPECS:
        raise ValueError(f"technique {name!r} registered twice")
    if family not in FAMILIES:
        raise ValueError(f"technique {name!r}: family={family!r}; valid: {FAMILIES}")
    _SPECS[name] = TechniqueSpec(name, config, impl, family, wraps_techniques)


# One line per technique. Keep config modules light: they are imported at start-up.
# fmt: off
register("baseline", config="infopt.techniques.baseline:BaselineConfig", impl="infopt.techniques.baseline:Baseline", family="baseline")
register("quantize", config="infopt.techniques.quantize.config:QuantizeConfig", impl="infopt.techniques.quantize.technique:Quantize", family="quantization")
register("prune", config="infopt.techniques.prune.config:PruneConfig", impl="infopt.techniques.prune.technique:Prune", family="pruning")
register("distill", config="infopt.techniques.distill.config:DistillConfig", impl="infopt.techniques.distill.technique:Distill", family="distillation")
register("attention", config="infopt.techniques.architecture.config:AttentionConfig", impl="infopt.techniques.architecture.attention:Attention", family="architecture")
register("kv_cache", config="infopt.techniques.architecture.config:KVCacheConfig", impl="infopt.techniques.architecture.kv_cache:KVCache", family="architecture")
register("compile", config="infopt.techniques.architecture.config:TorchCompileConfig", impl="infopt.techniques.architecture.compile:Compile", family="architecture")
register("speculative", config="infopt.techniques.architecture.config:SpeculativeConfig", impl="infopt.techniques.architecture.speculative:Speculative", family="architecture")
register("pipeline", config="infopt.techniques.pipeline_config:PipelineConfig", impl="infopt.techniques.pipeline:Pipeline", family="study", wraps_techniques=True)
register("layer_sensitivity", config="infopt.studies.layer_sensitivity_config:LayerSensitivityConfig", impl="infopt.studies.layer_sensitivity:LayerSensitivity", family="study", wraps_techniques=True)
# fmt: on


def names() -> list[str]:
    return sorted(_SPECS)


def spec(name: str) -> TechniqueSpec:
    if name not in _SPECS:
        raise ConfigError(f"technique.name={name!r} is not a registered technique; choose one of: {', '.join(names())}")
    return _SPECS[name]


def config_class(name: str) -> type[TechniqueConfig]:
    return _load(spec(name).config)


def technique_class(name: str) -> type[Technique]:
    return _load(spec(name).impl)


def build(config: TechniqueConfig) -> Technique:
    return technique_class(config.name)(config)
