"""Turn a composed DictConfig into a validated ``InfoptConfig`` before anything expensive runs."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from infopt.composition.limits import check_context
from infopt.config.checks import finite_tree
from infopt.config.schema import InfoptConfig
from infopt.errors import ConfigError


def to_object(cfg: DictConfig) -> InfoptConfig:
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    assert isinstance(obj, InfoptConfig)
    return obj


def validate_config(cfg: DictConfig, *, check_technique: bool = True) -> InfoptConfig:
    """Types (schema), finite floats, ranges (``validate``), lengths against the model's context, the
    bench backend, and the technique's cross-group checks."""
    obj = to_object(cfg)
    finite_tree("", obj)  # before validate(): NaN passes every range check
    obj.validate()
    check_context(obj)  # from the architecture config: no weights are read
    if obj.bench.enabled and obj.bench.backend != "transformers":
        from infopt.bench.backends import check_backend

        check_backend(obj)
    if check_technique:
        from infopt.techniques.registry import build, config_class

        # technique.name=x set over another technique's group (found by the property test).
        expected = config_class(obj.technique.name)
        if not isinstance(obj.technique, expected):
            raise ConfigError(
                f"technique.name={obj.technique.name} does not match the selected technique's config "
                f"({type(obj.technique).__name__}); choose it with technique={obj.technique.name}"
            )
        build(obj.technique).check(obj)
    return obj
