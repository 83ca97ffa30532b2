"""Writes that a kill cannot leave half done: temporary name, fsync, rename."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """A file that appears at ``path`` only when the block ends without an error (temporary sibling,
    fsync, rename): a kill leaves the old file or nothing, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def non_finite(data: Any, prefix: str = "") -> list[str]:
    """Keys (``result.eval.x``, ``a[0]``) of the NaN and +-inf floats in ``data``."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [prefix]
    if isinstance(data, dict):
        return [k for key, v in data.items() for k in non_finite(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(data, (list, tuple)):
        return [k for i, v in enumerate(data) for k in non_finite(v, f"{prefix}[{i}]")]
    return []


def strict(data: Any) -> Any:
    """``data`` with NaN and +-inf as None: strict JSON (bare ``NaN`` is not JSON, and most readers
    outside Python refuse it)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict(v) for v in data]
    return data


def atomic_write_json(path: Path | str, data: Any) -> None:
    text = json.dumps(strict(data), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: Path | str) -> Any | None:
    """The parsed file, or None when it is missing or not valid JSON (a corrupt cache is rebuilt)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


CHECKSUM_KEY = "sha256"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_checked_json(path: Path | str, data: dict[str, Any]) -> None:
    """A cache entry with the sha256 of its own content, written atomically."""
    data = strict(data)  # the digest of what is written, so the entry reads back as intact
    atomic_write_json(path, {**data, CHECKSUM_KEY: _digest(data)})


def read_checked_json(path: Path | str) -> dict[str, Any] | None:
    """The entry without its checksum, or None when missing, not JSON, or altered since written."""
    data = read_json(path)
    if not isinstance(data, dict) or CHECKSUM_KEY not in data:
        return None
    body = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    return body if data[CHECKSUM_KEY] == _digest(body) else None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MANIFEST = "infopt_manifest.json"


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Record size and sha256 of every file in ``directory`` (call last, inside ``atomic_dir``)."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(directory / MANIFEST, {**(extra or {}), "files": files})


def verify_manifest(directory: Path, *, hashes: bool = True) -> str | None:
    """None if every file the manifest lists is there with its size (and hash); else what is wrong."""
    manifest = read_json(Path(directory) / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "no readable manifest"
    for name, want in manifest["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, expected {want.get('bytes')}"
        if hashes and file_digest(path) != want.get("sha256"):
            return f"{name} does not match its sha256"
    return None


@contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
