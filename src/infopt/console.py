"""What a user's terminal shows: infopt's phases, its own log lines and the summary; nothing else.

Other libraries (transformers, lm-eval, Lightning, torchao, datasets, W&B) log and warn a lot. Their
records and Python warnings go to the run's log file (Hydra's ``cli.log`` in the run dir, through
the root logger's file handler) and never to the console: ``OwnRecords`` is the console handler's
filter, ``quiet_libraries`` routes the libraries' own handlers and warnings through logging, and
``TQDM_DISABLE`` turns off their per-batch progress bars. Nothing is dropped: ``cli.log`` has it all.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("infopt")

# Libraries that install their own console handlers; their records go through the root logger instead.
_LIBRARY_LOGGERS = ("transformers", "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
                    "pytorch_lightning", "lm-eval", "lm_eval", "datasets", "evaluate", "torchao", "wandb",
                    "accelerate", "peft", "hydra", "torch")  # fmt: skip


class OwnRecords(logging.Filter):
    """Console filter: infopt's records, and errors from anyone (a failure must be seen)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):  # already shown on the console by rich (phases)
            return False
        return record.name == "infopt" or record.name.startswith("infopt.") or record.levelno >= logging.ERROR


# Records logged before Hydra sets up the run's log file (config checks import torch, transformers and
# torchao, which warn at import): held here and written into cli.log when the job starts.
_EARLY = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)


def quiet_libraries() -> None:
    """Route third-party console output into logging (and so into ``cli.log``). Idempotent; call early
    and again after heavy imports (libraries install their console handlers when first imported)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of libraries that leave the default alone
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    root = logging.getLogger()
    if not root.handlers:  # before Hydra configures logging: keep everything for cli.log, show only ours
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(logging.Formatter("infopt: %(message)s"))
        console_handler.addFilter(OwnRecords())
        root.addHandler(console_handler)
        root.addHandler(_EARLY)
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the log file
    warnings.filterwarnings("default")  # each distinct warning once per location, as Python does
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    try:  # transformers re-installs its handler on first use unless told not to
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass


def flush_early_records() -> None:
    """Write the records held since start-up into the run's log file (Hydra's file handler)."""
    target = next((h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
    if target is not None:
        _EARLY.setTarget(target)
        _EARLY.flush()
        _EARLY.setTarget(None)


class Phase:
    """One step of a run as the user sees it: started, optionally updated, finished with its time."""

    def __init__(self, name: str, status: Any) -> None:
        self.name, self._status, self.t0 = name, status, time.perf_counter()
        self.seconds: float | None = None  # set when the phase ends

    def update(self, text: str) -> None:
        """Progress inside the phase (``gptq: block 3/30``): the spinner's text on a terminal."""
        if self._status is not None:
            self._status.update(literal(f"{self.name}: {text}"))

    @property
    def elapsed(self) -> float:
        return self.seconds if self.seconds is not None else time.perf_counter() - self.t0


_current: list[Phase] = []  # the phase now running (innermost last)


def progress(text: str) -> None:
    """Progress inside the running phase: the spinner's text on a terminal, a DEBUG line in cli.log."""
    log.debug(text)
    if _current:
        _current[-1].update(text)


def literal(text: Any, style: str = ""):
    """User text for rich (names, paths, notes): a ``Text``, never parsed as markup, so ``[/abs/path]``
    or ``[bold]`` print as typed. (``rich.markup.escape`` in an f-string is not enough: a trailing
    backslash comes out doubled.)"""
    from rich.text import Text

    return Text(str(text), style=style)


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextmanager
def phase(name: str) -> Iterator[Phase]:
    """``with phase("baseline"):`` shows a spinner on a terminal, then one line with the elapsed time."""
    quiet_libraries()  # libraries imported since the last phase may have installed console handlers
    term = console()
    status = term.status(literal(name)) if term.is_terminal else None
    current = Phase(name, status)
    if status is not None:
        status.start()
    _current.append(current)
    ok = False
    try:
        yield current
        ok = True
    finally:
        _current.remove(current)
        current.seconds = time.perf_counter() - current.t0
        if status is not None:
            status.stop()
        mark = literal("done", "green") if ok else literal("failed", "red")
        term.print(literal(f"infopt: {name} ").append_text(mark).append(f" ({current.elapsed:.1f} s)"))
        log.info("%s %s (%.1f s)", name, "done" if ok else "failed", current.elapsed, extra={"file_only": True})
        sys.stderr.flush()
