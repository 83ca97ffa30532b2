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
from infopt.errors import ConfigError
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
    assert validate_config(cfg) is not None


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
            error = _bind_error(node)
            assert error is None, f"{path.relative_to(CONF_DIR)}:{where}: {error}"
            checked += 1
    assert checked >= 1  # conf/config.yaml's sweep-summary callback at least


def _bind_error(node) -> str | None:
    target = get_method(node["_target_"])
    try:
        inspect.signature(target).bind_partial(**{k: v for k, v in node.items() if not k.startswith("_")})
    except TypeError as err:
        return str(err)
    return None


def test_target_check_catches_a_misspelt_argument():
    node = {"_target_": "infopt.io.atomic_write_text", "path": "x", "txet": "y"}
    assert "txet" in (_bind_error(node) or "")


def test_structured_schema_rejects_unknown_key():
    from infopt.composition.precheck import one_line

    with pytest.raises(Exception) as err:
        compose_config(["model.bitz=4"])
    assert "Key 'bitz' not in 'ModelConfig'" in one_line(err.value)


def test_unknown_technique_names_the_registered_ones():
    with pytest.raises(ConfigError, match="technique.name='future' is not a registered technique; choose one of: .*baseline"):
        registry.technique_class("future")


def test_a_family_outside_the_fixed_set_is_refused():
    with pytest.raises(ValueError, match="family='misc'"):
        registry.register("odd", config="x:Y", impl="x:Z", family="misc")


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


# --- one source of defaults ---------------------------------------------------------------------------


STAGE_TECHNIQUES = [n for n in registry.names() if not registry.spec(n).wraps_techniques]


@pytest.mark.parametrize("name", STAGE_TECHNIQUES)
def test_a_stage_composes_to_the_same_config_as_its_technique_group(name, tmp_path):
    """`{name: X}` in a pipeline and `technique=X` are the same experiment: the dataclass is the only default."""
    import dataclasses

    from infopt.techniques.pipeline_config import build_stage_config

    via_group = validate_config(compose_config(["model=smollm2_135m", f"technique={name}"], tmp_path)).technique
    via_stage = build_stage_config({"name": name}, "technique.stages[0]")
    assert dataclasses.asdict(via_group) == dataclasses.asdict(via_stage)


@pytest.mark.parametrize("name", registry.names())
def test_a_technique_group_file_restates_no_default(name):
    """conf/technique/<name>.yaml names its schema and nothing else; variants state only deviations."""
    node = yaml.safe_load((CONF_DIR / "technique" / f"{name}.yaml").read_text())
    assert set(node) == {"defaults", "name"}, sorted(set(node) - {"defaults", "name"})
