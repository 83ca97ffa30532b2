"""Register the schemas in Hydra's ConfigStore (before @hydra.main composes)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from infopt.config import schema
from infopt.techniques import registry

_done = False


def register_configs() -> None:
    global _done
    if _done:
        return
    cs = ConfigStore.instance()
    cs.store(name="infopt_schema", node=schema.InfoptConfig)
    # Group YAMLs pull these in with `defaults: [/schema/<group>@_here_]` (or /schema/technique/<name>).
    cs.store(group="schema", name="model", node=schema.ModelConfig)
    cs.store(group="schema", name="data", node=schema.DataConfig)
    cs.store(group="schema", name="eval", node=schema.EvalConfig)
    cs.store(group="schema", name="bench", node=schema.BenchConfig)
    cs.store(group="schema", name="hardware", node=schema.HardwareConfig)
    cs.store(group="schema", name="logger", node=schema.LoggerConfig)
    for name in registry.names():
        cs.store(group="schema/technique", name=name, node=registry.config_class(name))
    _done = True
