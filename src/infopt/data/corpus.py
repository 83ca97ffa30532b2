"""Text corpora split by document into train / calibration / held-out, deterministically.

The held-out documents are the last ``heldout_docs`` of the corpus, the calibration documents the
``calibration_docs`` before them, and the rest train. No document is in two splits.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from infopt.config.schema import DataConfig
from infopt.errors import ConfigError, ResourceError

GENSIM_TEST_DATA = ("gensim", "test", "test_data")


def gensim_test_file(name: str) -> Path:
    """A file from the gensim wheel's test data (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError("the embedded corpora need the gensim package: pip install gensim")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*GENSIM_TEST_DATA[1:], name)
    if not path.is_file():
        raise ResourceError(f"{path} is missing from the gensim package; reinstall gensim")
    return path


@dataclass(frozen=True)
class Corpus:
    name: str
    train: tuple[str, ...]
    calibration: tuple[str, ...]
    heldout: tuple[str, ...]


_TEXT_SUFFIXES = (".txt", ".md", ".cor", ".jsonl")


def _read_utf8(path: Path) -> str:
    """The file's text, or a one-line error naming it: missing, a directory, binary, not UTF-8."""
    if path.is_dir():
        raise ResourceError(f"data.files: {path} is a directory; list its files, e.g. data.files=[{path}/a.txt]")
    if not path.is_file():
        raise ResourceError(f"data.files: {path} does not exist")
    if path.suffix not in _TEXT_SUFFIXES:
        raise ConfigError(f"data.files: {path.name} has suffix {path.suffix!r}; supported: .txt, .md, .jsonl")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise ResourceError(f"data.files: {path} looks binary (it holds NUL bytes); give UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ResourceError(
            f"data.files: {path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from None


def _read_text_file(path: Path, text_field: str) -> list[str]:
    text = _read_utf8(path)
    if path.suffix != ".jsonl":
        return [block.strip() for block in text.split("\n\n") if block.strip()]
    docs = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            value = json.loads(line)[text_field]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
            raise ResourceError(f"{path}:{i + 1}: expected a JSON object with a {text_field!r} field ({err})") from None
        if not isinstance(value, str):
            raise ResourceError(
                f"{path}:{i + 1}: {text_field!r} holds {type(value).__name__}, not a string (data.text_field)"
            )
        docs.append(value)
    return docs


def preload_text_files(cfg: DataConfig) -> Corpus | None:
    """The user's files read before the model loads (a bad file fails in a second, not after the load);
    the corpus is returned for the run to use, so nothing is read twice. None for the other sources."""
    return load_corpus(cfg) if cfg.source == "text_files" else None


def review_documents() -> list[str]:
    """Short English movie reviews shipped in the gensim wheel (Pang & Lee's polarity sentences and ten
    IMDB reviews), without their labels: a second source, unlike the news, for data-diversity ablations."""
    docs = []
    for name, prefix in (("pang_lee_polarity.cor", "__label__"), ("alldata-id-10.txt", "_*")):
        for line in gensim_test_file(name).read_text(encoding="utf-8", errors="replace").splitlines():
            text = line.split(" ", 1)[1] if line.startswith(prefix) and " " in line else line
            if text.strip():
                docs.append(text.strip())
    return docs


EXTRA_SOURCES = {"reviews": review_documents}  # embedded corpora a training stage may mix in


def load_documents(cfg: DataConfig) -> list[str]:
    if cfg.source == "lee_news":
        text = gensim_test_file("lee_background.cor").read_text(encoding="utf-8", errors="replace")
        docs = [line.strip() for line in text.splitlines() if line.strip()]
    elif cfg.source == "text_files":
        docs = [d for f in cfg.files for d in _read_text_file(Path(f).expanduser(), cfg.text_field)]
    else:
        docs = _load_hub_documents(cfg)
    if cfg.max_docs is not None:
        docs = docs[: cfg.max_docs]
    return docs


def _load_hub_documents(cfg: DataConfig) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise ResourceError(
            "data.source=hub needs the `datasets` package: pip install datasets"
        ) from err
    try:
        ds = datasets.load_dataset(
            cfg.hub_path, cfg.hub_name, split="train", streaming=cfg.max_docs is not None
        )
    except Exception as err:
        raise ResourceError(
            f"dataset {cfg.hub_path}/{cfg.hub_name} could not be loaded ({type(err).__name__}: {str(err)[:200]}); offline, "
            "use data=lee_news (embedded) or data=text_files data.files=[your.txt]"
        ) from None
    docs = []
    for row in ds:
        text = row[cfg.text_field].strip()
        if text:
            docs.append(text)
        if cfg.max_docs is not None and len(docs) >= cfg.max_docs:
            break
    return docs


def split_corpus(cfg: DataConfig, docs: list[str]) -> Corpus:
    need = cfg.heldout_docs + cfg.calibration_docs + 1
    if len(docs) < need:
        raise ConfigError(
            f"data {cfg.name!r} has {len(docs)} documents; heldout_docs={cfg.heldout_docs} + "
            f"calibration_docs={cfg.calibration_docs} + at least 1 training document do not fit"
        )
    n_train = len(docs) - cfg.heldout_docs - cfg.calibration_docs
    return Corpus(
        name=cfg.name,
        train=tuple(docs[:n_train]),
        calibration=tuple(docs[n_train : n_train + cfg.calibration_docs]),
        heldout=tuple(docs[n_train + cfg.calibration_docs :]),
    )


def load_corpus(cfg: DataConfig) -> Corpus:
    return split_corpus(cfg, load_documents(cfg))
