"""infopt's SLURM launcher (``hydra/launcher=slurm``). Hydra instantiates launchers only from the
``hydra_plugins`` namespace, so the class lives here; what it does is in ``infopt.studies.slurm``.
Imports stay light: Hydra imports this module on every start while it scans for plugins.
"""

from __future__ import annotations

from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class InfoptSlurmLauncher(SlurmLauncher):
    """submitit's SLURM launcher that waits for every job and reports each failure in one line."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs inside the SLURM job. A failed task raises, so the job exits non-zero: submitit
        would otherwise store the failed Hydra job as a result and SLURM would record a success."""
        ret = super().__call__(*args, **kwargs)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        from infopt.studies.slurm import launch

        return launch(self, job_overrides, initial_job_idx)
