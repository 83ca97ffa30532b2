"""Schema of ``technique=pipeline`` (light: imported at start-up to register the Hydra schema).

A pipeline is a list of technique nodes applied in order to the same model. Each node is checked
against its own technique's schema (from the registry) when the config is composed, so a typo in
stage 2 is reported as ``technique.stages[2] (quantize): Key 'bitz' not in 'QuantizeConfig'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from infopt.config.schema import TechniqueConfig
from infopt.errors import ConfigError


def build_stage_config(stage: Any, where: str) -> TechniqueConfig:
    """A stage's node (a dict with ``name``) merged onto its technique's schema and validated."""
    from infopt.techniques.registry import config_class, names, spec

    if not isinstance(stage, dict) or not stage.get("name"):
        raise ConfigError(
            f"{where}={stage!r} is not a technique node; give a mapping with a name, e.g. "
            f"{{name: quantize, ...}}; registered techniques: {', '.join(names())}"
        )
    name = stage["name"]
    cls = config_class(name)  # unknown names raise ConfigError with the valid ones
    if spec(name).wraps_techniques:  # no nesting
        raise ConfigError(f"{where}.name={name!r}: a {name} cannot be a stage; list its stages directly")
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), stage)
        obj = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        import dataclasses

        msg = str(err).splitlines()[0]
        valid = ""
        if "not in" in msg:
            valid = f" (valid keys: {', '.join(f.name for f in dataclasses.fields(cls))})"
        raise ConfigError(f"{where} ({name}): {msg}{valid}") from None
    try:
        obj.validate()
    except ConfigError as err:
        # The stage's own validate() names keys as technique.<key>; say which stage.
        raise ConfigError(f"{where} ({name}): {err}") from None
    return obj


@dataclass
class PipelineConfig(TechniqueConfig):
    name: str = "pipeline"
    # Technique nodes applied in order to the same model, e.g. [{name: prune, ...}, {name: quantize, ...}].
    stages: list[dict[str, Any]] = field(default_factory=list)
    reverse: bool = False  # apply the stages in reverse order (order-effects studies)
    measure_stages: bool = True  # eval + bench after every stage (false: only after the last)

    def stage_configs(self) -> list[tuple[int, TechniqueConfig]]:
        """(index in ``stages``, validated config) in the order the stages are applied."""
        built = [
            (i, build_stage_config(s, f"technique.stages[{i}]")) for i, s in enumerate(self.stages)
        ]
        return list(reversed(built)) if self.reverse else built

    def validate(self) -> None:
        super().validate()
        if not self.stages:
            raise ConfigError(
                "technique.stages is empty; give a list of technique nodes, e.g. "
                "technique.stages='[{name: prune}, {name: quantize}]', or pick a named pipeline "
                "(technique=prune_recover_quantize)"
            )
        self.stage_configs()
