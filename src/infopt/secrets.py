"""Keep secrets out of every record: results.json, Hydra's saved configs, W&B config and logs.

A value is secret when its key names a credential (``token``, ``hf_token``, ``api_key``,
``password``, ``secret``, ...: matched on the whole key, so ``tokenizer``, ``num_tokens`` or
``pad_token`` are not), when it looks like a credential (``hf_...``, ``sk-...``, ``ghp_...``,
``xoxb-...``, a bare 40-hex W&B key), or when it is the value of a secret environment variable
(``WANDB_API_KEY``, ``HF_TOKEN``, anything whose name matches the key pattern).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REDACTED = "***redacted***"

# The whole key (or its last dotted/underscored part) names a credential.
_SECRET_KEY = re.compile(
    r"^(?:.*[_.-])?(?:token|api[_-]?key|apikey|password|passwd|secret|private[_-]?key|access[_-]?key|auth|authorization|credentials?)$",
    re.I,
)
# Tokenizer special tokens are vocabulary, not credentials.
_NOT_SECRET_KEY = re.compile(r"^(?:.*[_.-])?(?:pad|eos|bos|unk|sep|cls|mask|start|end|special|chat)_token$", re.I)
# Keys whose 40-hex values are commits or hashes, not W&B keys.
_HEX_OK_KEYS = re.compile(r"(?:revision|commit|sha|hash|key_hash|baseline_key)$", re.I)
# Credential formats, found anywhere in a string.
_SECRET_TEXT = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})"
)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
# key=value and key: value pairs in free text (command lines, overrides.yaml, log lines).
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z0-9_.\-+~/]+)(?P<sep>=|:\s+)(?P<quote>['\"]?)(?P<value>[^\s,'\"\]}]+)")
_NOT_A_VALUE = (REDACTED, "null", "None", "~", "true", "false", "True", "False")
_MIN_ENV_SECRET = 8  # shorter env values ("1", "true") are flags, not credentials


def is_secret_key(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lstrip("+~")
    return bool(_SECRET_KEY.match(last)) and not _NOT_SECRET_KEY.match(last)


def env_secrets() -> list[str]:
    """Values of environment variables whose names say they are credentials (longest first)."""
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with credentials replaced: env secret values, credential formats, key=secret pairs."""
    for value in env_secrets() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    text = _SECRET_TEXT.sub(REDACTED, text)

    def assignment(m: re.Match) -> str:
        if is_secret_key(m.group("key")) and m.group("value") not in _NOT_A_VALUE:
            return f"{m.group('key')}{m.group('sep')}{m.group('quote')}{REDACTED}"
        return m.group(0)

    return _ASSIGNMENT.sub(assignment, text)


def redact(obj: Any, key: str | None = None, secrets: list[str] | None = None) -> Any:
    """Copy of ``obj`` (dicts, lists, strings) with secret keys' values and secret-looking strings replaced."""
    secrets = env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_key(k) and isinstance(v, str) and v:
                out[k] = REDACTED
            else:
                out[k] = redact(v, k if isinstance(k, str) else None, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, key, secrets) for v in obj]
    if isinstance(obj, str):
        if _HEX40.match(obj.strip()) and not (key and _HEX_OK_KEYS.search(key)):
            return REDACTED
        return redact_text(obj, secrets)
    return obj


def redact_file(path: Path) -> bool:
    """Rewrite a text file (YAML, logs) with secrets redacted, atomically; True if it changed."""
    from infopt.io import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text()
    secrets = env_secrets()
    lines = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*-?\s*)([A-Za-z0-9_.\-]+):(\s+)(.+?)(\r?\n?)$", line)
        if m and is_secret_key(m.group(2)) and m.group(4) not in ("null", "''", '""', REDACTED):
            line = f"{m.group(1)}{m.group(2)}:{m.group(3)}{REDACTED}{m.group(5)}"
        elif m and _HEX40.match(m.group(4).strip("'\"")) and not _HEX_OK_KEYS.search(m.group(2)):
            line = f"{m.group(1)}{m.group(2)}:{m.group(3)}{REDACTED}{m.group(5)}"
        lines.append(redact_text(line, secrets))
    new = "".join(lines)
    if new == text:
        return False
    atomic_write_text(path, new)
    return True


def redact_hydra_outputs(output_dir: Path, output_subdir: str | None, sweep_dir: Path | None = None) -> list[Path]:
    """Redact what Hydra saved before the job started: .hydra/{config,hydra,overrides}.yaml, multirun.yaml."""
    candidates: list[Path] = []
    if output_subdir:
        candidates += [Path(output_dir) / output_subdir / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if sweep_dir is not None:
        candidates.append(Path(sweep_dir) / "multirun.yaml")
    return [p for p in candidates if redact_file(p)]


def install_log_redaction() -> None:
    """Every log record's message passes through ``redact_text`` (all loggers, all handlers). Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_infopt_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if record.exc_info and record.exc_info[0] is not None:  # tracebacks carry paths and overrides too
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: let logging report it as usual
            return record
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    redacting_factory._infopt_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


class RedactingStream:
    """A text stream that redacts what passes through it, a line at a time (a secret is never split
    across two writes of one line). Hydra prints a failed job's overrides and traceback straight to
    ``sys.stderr``, not through logging, so the console itself has to redact. Everything else
    (``isatty``, ``fileno``, ``encoding``) is the wrapped stream's, so rich still sees a terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._pending = stream, ""

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r"))  # \r: spinners redraw a line
        if cut >= 0:
            self._stream.write(redact_text(self._pending[: cut + 1]))
            self._pending = self._pending[cut + 1 :]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(redact_text(self._pending))
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def redacted_stderr() -> Iterator[None]:
    """``sys.stderr`` redacted for the duration (the whole Hydra app: its error lines and tracebacks)."""
    saved = sys.stderr
    if isinstance(saved, RedactingStream):
        yield
        return
    sys.stderr = RedactingStream(saved)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = saved


@contextmanager
def redacted_argv() -> Iterator[None]:
    """``sys.argv`` with secrets redacted for the duration (W&B copies it into its run metadata)."""
    saved = list(sys.argv)
    sys.argv[:] = [saved[0], *(redact_text(a) for a in saved[1:])]
    try:
        yield
    finally:
        sys.argv[:] = saved
