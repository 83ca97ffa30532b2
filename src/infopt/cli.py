"""Hydra entry point: compose, validate, run; user errors become one line and exit status 2.

Before Hydra creates any output directory, every override (every value of every sweep axis) is
composed and validated here, so a typo in a 20-job sweep fails in a second, not at job 7.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from infopt.composition import CONF_DIR
from infopt.composition.store import register_configs
from infopt.errors import InfoptError, first_line

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
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from infopt.console import flush_early_records, quiet_libraries
    from infopt.experiment import run_experiment
    from infopt.faults import at_job_start
    from infopt.interrupt import Interrupted, clear_incomplete, signals_interrupt, write_incomplete
    from infopt.secrets import redact_text

    quiet_libraries()
    flush_early_records()
    job = _job_info()
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    clear_incomplete(output_dir)  # a new attempt; rewritten below if this one does not complete either
    at_job_start(job.job_num)
    with signals_interrupt():
        try:
            record = run_experiment(cfg, job)
        except InfoptError as err:
            write_incomplete(output_dir, "failed", f"error: {redact_text(str(err))}", EXIT_USER_ERROR)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _fail(str(err))
        except Interrupted as sig:
            _interrupted(sig, output_dir, sweep_dir)
        except SystemExit as exit_:  # Lightning's SIGTERMException (its own handler ran instead of ours)
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if not isinstance(exit_, SIGTERMException):
                raise
            _interrupted(Interrupted(signal.SIGTERM), output_dir, sweep_dir)
        except Exception as err:  # a bug or a library failure: Hydra prints the traceback (redacted)
            write_incomplete(output_dir, "failed", redact_text(first_line(err)), 1)
            logging.getLogger("infopt").error("run failed", exc_info=True, extra={"file_only": True})  # cli.log
            raise
    # Hydra sweepers (Optuna) optimise the returned value.
    return record.get("objective")


def _interrupted(sig, output_dir: Path, sweep_dir: Path | None) -> None:
    """One line saying what stopped the run and how to resume it; exit status 128 + signal."""
    from infopt.interrupt import resume_hint, write_incomplete
    from infopt.secrets import redact_text

    if getattr(sig, "record_written", False):
        message = f"interrupted by {sig.name} ({sig.why}) after results.json was written: the record is complete"
    else:
        message = (
            f"interrupted by {sig.name} ({sig.why}): no results.json written; {resume_hint(output_dir, sweep_dir)}"
        )
        write_incomplete(output_dir, "interrupted", message, sig.exit_code, signal=sig.name)
    print(f"infopt: {redact_text(message)}", file=sys.stderr, flush=True)
    sys.exit(sig.exit_code)


def main() -> None:
    """`python run.py [overrides]`: the Hydra app."""
    if not CONF_DIR.is_dir():
        _fail(f"config directory {CONF_DIR} not found; run infopt from its repository (pip install -e .)")
    from infopt.secrets import install_log_redaction, redacted_stderr

    install_log_redaction()  # every log line, W&B's and Hydra's job log included
    with redacted_stderr():  # and every console line: Hydra prints failed jobs' overrides and tracebacks raw
        _compose_and_run()


def _compose_and_run() -> None:
    from infopt.composition.precheck import precheck, runs_task
    from infopt.console import quiet_libraries

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
