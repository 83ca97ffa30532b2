"""Explicit technique registry: name -> (config schema, implementation).

Names map to import paths so ``--help`` stays fast, but a broken import fails loudly when the
technique is used, never as "technique not found". A technique listed with ``impl=None`` has a
config (so it composes) and no implementation yet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infopt.errors import ConfigError, NotImplementedTechnique

if TYPE_CHECKING:
    from infopt.config.schema import TechniqueConfig
    from infopt.techniques.base import Technique


@dataclass(frozen=True)
class TechniqueSpec:
    name: str
    config: str  # "module:ConfigClass"
    impl: str | None  # "module:TechniqueClass", None = not implemented yet
    family: str  # baseline | quantization | pruning | distillation | architecture | study


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_SPECS: dict[str, TechniqueSpec] = {}


def register(name: str, *, config: str, impl: str | None, family: str) -> None:
    if name in _SPECS:
        raise ValueError(f"technique {name!r} registered twice")
    _SPECS[name] = TechniqueSpec(name, config, impl, family)


# One line per technique. Keep config modules light: they are imported at start-up.
# fmt: off
register("baseline", config="infopt.techniques.baseline:BaselineConfig", impl="infopt.techniques.baseline:Baseline", family="baseline")
register("quantize", config="infopt.techniques.quantize.config:QuantizeConfig", impl="infopt.techniques.quantize.technique:Quantize", family="quantization")
register("prune", config="infopt.techniques.prune.config:PruneConfig", impl="infopt.techniques.prune.technique:Prune", family="pruning")
register("distill", config="infopt.techniques.distill.config:DistillConfig", impl="infopt.techniques.distill.technique:Distill", family="distillation")
register("attention", config="infopt.techniques.decode.config:AttentionConfig", impl="infopt.techniques.decode.attention:Attention", family="architecture")
register("kv_cache", config="infopt.techniques.decode.config:KVCacheConfig", impl="infopt.techniques.decode.kv_cache:KVCache", family="architecture")
register("compile", config="infopt.techniques.decode.config:TorchCompileConfig", impl="infopt.techniques.decode.compile:Compile", family="architecture")
register("speculative", config="infopt.techniques.decode.config:SpeculativeConfig", impl="infopt.techniques.decode.speculative:Speculative", family="architecture")
register("pipeline", config="infopt.techniques.pipeline_config:PipelineConfig", impl="infopt.techniques.pipeline:Pipeline", family="study")
register("layer_sensitivity", config="infopt.studies.layer_sensitivity_config:LayerSensitivityConfig", impl="infopt.studies.layer_sensitivity:LayerSensitivity", family="study")
# fmt: on


def names() -> list[str]:
    return sorted(_SPECS)


def implemented() -> list[str]:
    return sorted(n for n, s in _SPECS.items() if s.impl is not None)


def spec(name: str) -> TechniqueSpec:
    if name not in _SPECS:
        raise ConfigError(f"technique.name={name!r} is not a registered technique; choose one of: {', '.join(names())}")
    return _SPECS[name]


def config_class(name: str) -> type[TechniqueConfig]:
    return _load(spec(name).config)


def technique_class(name: str) -> type[Technique]:
    s = spec(name)
    if s.impl is None:
        raise NotImplementedTechnique(
            f"technique={name} is not implemented yet; implemented techniques: {', '.join(implemented())}"
        )
    return _load(s.impl)


def build(config: TechniqueConfig) -> Technique:
    return technique_class(config.name)(config)
