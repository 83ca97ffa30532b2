"""Hydra entry point: compose, validate, run; user errors become one line and exit status 2.

Before Hydra creates any output directory, every override (every value of every sweep axis) is
composed and validated here, so a typo in a 20-job sweep fails in a second, not at job 7.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from infopt.composition import CONF_DIR
from infopt.composition.store import register_configs
from infopt.errors import InfoptError

EXIT_USER_ERROR = 2

register_configs()


def _fail(message: str) -> None:
    from infopt.secrets import redact_text

    print(f"infopt: error: {redact_text(message)}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _job_info():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from infopt.experiment import JobInfo
    from infopt.secrets import redact, redact_hydra_outputs, redact_text

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    # Hydra saved .hydra/*.yaml (and multirun.yaml) before the job started: redact them now.
    redact_hydra_outputs(Path(hc.runtime.output_dir), hc.output_subdir, Path(hc.sweep.dir) if multirun else None)
    overrides = redact(list(hc.overrides.task))
    name = redact_text(hc.job.override_dirname) or None
    return JobInfo(
        name=name,
        group=Path(hc.sweep.dir).name if multirun else None,
        overrides=overrides,
        job_num=hc.job.num if multirun else None,
    )


def _task(cfg: DictConfig) -> float | None:
    from infopt.console import flush_early_records, quiet_libraries
    from infopt.experiment import run_experiment
    from infopt.faults import at_job_start

    quiet_libraries()
    flush_early_records()
    job = _job_info()
    at_job_start(job.job_num)
    try:
        record = run_experiment(cfg, job)
    except InfoptError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _fail(str(err))
    # Hydra sweepers (Optuna) optimise the returned value.
    return record.get("objective")


def main() -> None:
    """`python run.py [overrides]`: the Hydra app."""
    if not CONF_DIR.is_dir():
        _fail(
            f"config directory {CONF_DIR} not found; run infopt from its repository (pip install -e .)"
        )
    from infopt.composition.precheck import precheck, runs_task
    from infopt.console import quiet_libraries
    from infopt.secrets import install_log_redaction

    install_log_redaction()  # every log line, W&B's and Hydra's job log included
    if runs_task(sys.argv[1:]):
        quiet_libraries()  # other libraries' output goes to the run's cli.log, not the console
        import torch  # noqa: F401 - torch installs its log handler on import: quiet it before the checks

        quiet_libraries()

    message = precheck(sys.argv[1:], CONF_DIR)
    if message:
        if os.environ.get("HYDRA_FULL_ERROR") != "1":
            _fail(message)
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)()


def console_main() -> None:
    """The `infopt` console script: the same as `python run.py`."""
    main()
