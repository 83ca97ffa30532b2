"""Where numbers go besides results.json: W&B (offline by default), CSV, TensorBoard, or nowhere.

One ``RunLogger`` per job. W&B runs are created with ``reinit`` semantics and always finished,
so sequential multirun jobs never merge into one run. ``lightning_logger()`` gives training loops
a Lightning logger that writes into the same run.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from infopt.config.schema import LoggerConfig

log = logging.getLogger(__name__)


class RunLogger:
    """No-op base: the ``none`` logger."""

    def __init__(self, cfg: LoggerConfig, output_dir: Path) -> None:
        self.cfg = cfg
        self.output_dir = output_dir

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def log_image(self, key: str, path: Path) -> None:
        pass

    def lightning_logger(self):
        return False

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(RunLogger):
    def __init__(
        self,
        cfg: LoggerConfig,
        output_dir: Path,
        *,
        name: str,
        group: str | None,
        tags: list[str],
        config: dict[str, Any],
    ) -> None:
        super().__init__(cfg, output_dir)
        import wandb

        from infopt.secrets import redacted_argv

        self._wandb = wandb
        with redacted_argv():  # W&B copies sys.argv into its run metadata
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                mode=cfg.mode,
                dir=str(output_dir),
                name=name,
                group=group,
                tags=tags,
                config=config,
                reinit="finish_previous",
                # W&B buffers its offline transaction log (15 s by default); a SIGKILL loses the
                # buffer. Flushing every second bounds what a kill can lose to the last second.
                settings=wandb.Settings(silent=True, console="off", x_transaction_log_flush_interval=1.0),
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({key: self._wandb.Table(columns=columns, data=rows)})

    def log_image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def lightning_logger(self):
        from lightning.pytorch.loggers import WandbLogger as LightningWandb

        return LightningWandb(experiment=self.run)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir).parent

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class CsvLogger(RunLogger):
    """metrics.csv (step, key, value) and summary.csv in the run dir."""

    def __init__(self, cfg: LoggerConfig, output_dir: Path) -> None:
        super().__init__(cfg, output_dir)
        self.path = output_dir / "metrics.csv"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            for k, v in metrics.items():
                w.writerow([step, k, v])

    def log_summary(self, summary: dict[str, Any]) -> None:
        with open(self.output_dir / "summary.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "value"])
            for k, v in summary.items():
                w.writerow([k, v])

    def lightning_logger(self):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(self.output_dir), name="train")


class TensorboardLogger(RunLogger):
    def __init__(self, cfg: LoggerConfig, output_dir: Path) -> None:
        super().__init__(cfg, output_dir)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step or 0)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, global_step=0)
        self.writer.flush()

    def lightning_logger(self):
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(self.output_dir / "tensorboard"), name="train")

    def finish(self, exit_code: int = 0) -> None:
        self.writer.close()


def make_logger(
    cfg: LoggerConfig,
    output_dir: Path,
    *,
    name: str,
    group: str | None,
    tags: list[str],
    config: dict[str, Any],
) -> RunLogger:
    if cfg.name == "wandb" and cfg.mode != "disabled":
        return WandbLogger(cfg, output_dir, name=name, group=group, tags=tags, config=config)
    if cfg.name == "csv":
        return CsvLogger(cfg, output_dir)
    if cfg.name == "tensorboard":
        return TensorboardLogger(cfg, output_dir)
    return RunLogger(cfg, output_dir)
