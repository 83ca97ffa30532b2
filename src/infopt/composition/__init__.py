"""Turning a command line into a validated config: the schemas registered with Hydra (``store``),
every override composed and checked before Hydra starts a run or a sweep (``precheck``), and the
composed config validated against the schemas, the techniques and the bench backends (``validate``).

This layer sits above ``config`` (plain schemas), the techniques and the backends, and imports them;
nothing below imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def compose(overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None,
            cache_dir: str | Path | None = None) -> Any:  # fmt: skip
    """The real config composed with ``overrides`` outside ``run.py`` (scripts, notebooks, tests).

    ``${hydra:runtime.output_dir}`` only resolves inside a Hydra run, so ``paths.output_dir`` is set
    here (a temporary directory when None); ``cache_dir`` overrides ``paths.cache_dir`` when given.
    """
    import tempfile

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from infopt.composition.store import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or tempfile.mkdtemp(prefix="infopt-"))
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
    return cfg
