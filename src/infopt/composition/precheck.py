"""Compose and validate the command line's overrides before Hydra starts a run or a sweep.

Hydra's own errors span several lines; these are condensed to one line that names the key or
value and what is allowed. Sweep axes (``a=1,2``) are checked one value at a time.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from infopt.errors import InfoptError

# Flags after which Hydra does not run the task (help, config printing) or that we leave alone.
_NO_TASK_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
    "--resolve",
    "--package",
    "-p",
    "--experimental-rerun",
)
_MAX_COMBINATIONS = 64
# Hydra raises plain ValueError/TypeError for some malformed group overrides (model=1.5,
# experiment=[1,2]); found by the property test in tests/test_reliability_inputs.py.
_COMPOSE_ERRORS = (HydraException, OmegaConfBaseException, ValueError, TypeError)


def _compose_error(err: BaseException, overrides: list[str]) -> str:
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return one_line(err)
    head = (str(err).splitlines() or [type(err).__name__])[0]
    return f"{head} (in overrides: {' '.join(overrides)})"


def _hydra_args(argv: list[str]) -> list[str]:
    """The command line's Hydra overrides (hydra/sweeper=..., hydra.sweeper.params.x=...)."""
    return [a for a in argv if a.startswith(("hydra.", "hydra/", "+hydra"))]


def _config_sweep_axes(first: list[str], hydra_args: list[str], multirun: bool, conf_dir: Path) -> list[str]:
    """Sweep axes set in config files (an experiment's ``hydra.sweeper.params``), as overrides.

    Only when the run is a multirun (``-m`` or ``hydra.mode: MULTIRUN`` in the config); axes the
    command line sets itself are left to the command line.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*first, *hydra_args], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    _FIRST_COMPOSED[tuple(first)] = cfg  # reused for the first combination: one compose, not two
    mode = OmegaConf.select(cfg, "hydra.mode", default=None)
    if not multirun and str(mode) not in ("MULTIRUN", "RunMode.MULTIRUN"):
        return []
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    cli_keys = {o.split("=", 1)[0].lstrip("+~") for o in first}
    return [f"{k}={v}" for k, v in params.items() if k not in cli_keys]


_FIRST_COMPOSED: dict = {}


def _split_argv(argv: list[str]) -> tuple[list[str], bool, bool]:
    overrides, multirun, runs_task = [], False, True
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _NO_TASK_FLAGS or arg.startswith(("--cfg=", "--info=", "--package=")):
            runs_task = False
            if arg in ("--cfg", "-c", "--info", "-i", "--package", "-p", "--experimental-rerun"):
                skip_next = arg in ("--package", "-p", "--experimental-rerun")
        elif arg.startswith("--config-") or arg in ("-cp", "-cn", "-cd"):
            runs_task = False  # alternative config dirs: let Hydra handle them
        elif arg.startswith("hydra.") or arg.startswith("hydra/") or arg.startswith("+hydra"):
            continue  # launcher/sweeper settings are Hydra's business
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun, runs_task


def runs_task(argv: list[str]) -> bool:
    """Whether this command line runs a job (not --help, --cfg, --info, ...)."""
    return _split_argv(argv)[2]


def _expand(overrides: list[str]) -> list[list[str]]:
    """Combinations of simple sweep values to check: all of them up to ``_MAX_COMBINATIONS``, else every
    value of every axis once (range/interval sweeps are left to the sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[str]] = []
    for ov in parsed:
        if ov.is_sweep_override():
            try:
                values = list(ov.sweep_string_iterator())
            except Exception:  # interval()/range over floats: checked by the sweeper
                continue
            key = ov.get_key_element()
            axes.append([f"{key}={v}" for v in values])
        else:
            axes.append([ov.input_line])
    if math.prod(len(a) for a in axes) <= _MAX_COMBINATIONS:
        return [list(c) for c in itertools.product(*axes)]
    # Too many to compose one by one: every value of every axis, the other axes at their first value.
    first = [a[0] for a in axes]
    return [first] + [[*first[:i], v, *first[i + 1 :]] for i, axis in enumerate(axes) for v in axis[1:]]


def one_line(err: BaseException) -> str:
    """Condense a Hydra/OmegaConf composition error into one line with the valid choices."""
    if isinstance(err, MissingConfigException):
        options = getattr(err, "options", None) or []
        missing = getattr(err, "missing_cfg_file", "") or ""
        group = missing.rsplit("/", 1)[0] if "/" in missing else missing
        msg = str(err).splitlines()[0]
        if options:
            return f"{msg.rstrip('.')}; valid {group} options: {', '.join(sorted(options))}"
        return msg
    cause = err.__cause__ or err.__context__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    head = lines[0] if lines else type(err).__name__
    if isinstance(cause, OmegaConfBaseException):
        detail = str(cause).splitlines()[0]
        valid = _valid_keys(cause)
        return f"{head} {detail}{valid}".strip()
    detail = next(
        (
            ln
            for ln in lines[1:]
            if not ln.startswith(
                ("full_key", "reference_type", "object_type", "To append", "Set the environment")
            )
        ),
        "",
    )
    return f"{head} {detail}".strip()


def _valid_keys(err: OmegaConfBaseException) -> str:
    import dataclasses

    obj_type = getattr(err, "object_type", None)
    if "not in" in str(err) and obj_type is not None and dataclasses.is_dataclass(obj_type):
        return f" (valid keys: {', '.join(f.name for f in dataclasses.fields(obj_type))})"
    return ""


def precheck(argv: list[str], conf_dir: Path) -> str | None:
    """None if every combination composes and validates, else a one-line error message."""
    overrides, _multirun, runs_task = _split_argv(argv)
    if not runs_task:
        return None
    from hydra import compose, initialize_config_dir

    from infopt.composition.store import register_configs

    register_configs()  # the schemas the group YAMLs extend (the CLI has done it; a library caller may not)

    _FIRST_COMPOSED.clear()
    try:
        combos = _expand(overrides)
        extra = _config_sweep_axes(combos[0], _hydra_args(argv), _multirun, conf_dir) if combos else []
        if extra:
            combos = _expand([*overrides, *extra])
    except _COMPOSE_ERRORS as err:
        return _compose_error(err, overrides)
    GlobalHydra.instance().clear()
    composer = _Composer(compose, {p.name for p in conf_dir.iterdir() if p.is_dir()})
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):  # one Hydra context for all
            for combo in combos:
                message = _check_combination(combo, len(combos), composer)
                if message:
                    return message
            cache_dir = composer(combos[0]).paths.cache_dir if combos else None
    finally:
        GlobalHydra.instance().clear()
    return _unusable_dir(argv, cache_dir)


def _unusable_dir(argv: list[str], cache_dir: str | None) -> str | None:
    """The run (or sweep) dir given on the command line and the cache dir must be creatable directories:
    Hydra makes the run dir before any infopt code runs, and its error there is a traceback. Both are
    created now, as Hydra and the run would a moment later (only once everything else checked out)."""
    wanted = [(k, v) for a in argv for k, _, v in [a.lstrip("+").partition("=")]
              if k in ("hydra.run.dir", "hydra.sweep.dir") and v]  # fmt: skip
    if cache_dir:
        wanted.append(("paths.cache_dir", cache_dir))
    for key, value in wanted:
        if "${" in value:
            continue  # interpolated by Hydra per job
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            return f"{key}={value} is a file, not a directory; choose a directory"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return f"{key}={value}: cannot create that directory ({err.strerror or err}); choose a writable directory"
    return None


class _Composer:
    """Compose a combination the way Hydra does, but once per distinct set of config-group choices: key
    overrides (``technique.bits=3``) are then applied to a copy, as Hydra applies them after composing."""

    def __init__(self, compose, groups: set[str]) -> None:
        self.compose, self.groups, self.cache = compose, groups, {}

    def __call__(self, combo: list[str]):
        import copy

        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        def is_group(o: str) -> bool:
            return o.split("=", 1)[0].lstrip("+~").split("@", 1)[0] in self.groups

        choices = tuple(o for o in combo if is_group(o))
        if choices not in self.cache:
            self.cache[choices] = self.compose(config_name="config", overrides=list(choices))
        cfg = copy.deepcopy(self.cache[choices])
        keys = [o for o in combo if not is_group(o)]
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(keys), cfg)
        return cfg


def _check_combination(combo: list[str], total: int, compose) -> str | None:
    from omegaconf import open_dict

    from infopt.composition.validate import validate_config

    cfg = _FIRST_COMPOSED.pop(tuple(combo), None)
    if cfg is not None:  # composed above with Hydra's own node, which validation does not want
        with open_dict(cfg):
            del cfg["hydra"]
    else:
        try:
            cfg = compose(combo)
        except _COMPOSE_ERRORS as err:
            return _compose_error(err, combo)
    with open_dict(cfg):
        cfg.paths.output_dir = "<precheck>"  # ${hydra:...} does not resolve outside a run
    try:
        validate_config(cfg)
    except InfoptError as err:
        where = f" (in sweep combination: {' '.join(combo)})" if total > 1 else ""
        return f"{err}{where}"
    return None
