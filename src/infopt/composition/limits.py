"""Lengths bounded by the model's context, checked with the config, before any model loads.

Every length a run feeds the model as one sequence must fit its position table: calibration and
training blocks (``data.seq_len`` and the techniques' own ``seq_len`` / ``calibration_seq_len``), the
token-perplexity and lm-eval windows, a bench prompt with the tokens decoded after it, a technique's
own prompts and windows. Past it GPT-2 fails with an index error after the load and the baseline, a
Llama attends over positions it was never trained on, and ``bench.prompt_tokens=100000`` allocated
until the OOM killer ended the run without a word (issue 18). The context comes from the
architecture config alone (``max_position_embeddings``, ``n_positions`` or ``n_ctx``, the keys
``models.surgery.context_length`` reads at run time), never from weights: tiny models from
``model.tiny.max_positions`` (what ``models.tiny`` builds them with), the embedded SmolLM2 from its
converted config or its GGUF's ``llama.context_length`` (``models.load.architecture_config`` falls back
to transformers' Llama default of 2048 before the conversion), hub and local models from the
``config.json`` on this machine, read as JSON: no network, no transformers import, and no class default
standing in for a value the checkpoint does not state. A model whose config is not on this machine (a
hub model not downloaded yet) or states no context is not checked here.

Lengths the corpus bounds (a block needs that many tokens of text) are checked where blocks are cut,
``infopt.data.blocks``: that needs the tokenizer and the text, not only the config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infopt.config.schema import InfoptConfig, ModelConfig
from infopt.errors import ConfigError
from infopt.models import CONTEXT_KEYS
from infopt.models.embedded import CACHE_NAME, EMBEDDED_CONTEXT

# Keys that name one sequence's length, wherever they sit in a technique's config (pipeline stages too).
LENGTH_KEYS = ("seq_len", "calibration_seq_len", "ppl_window")
# A prompt and the tokens generated after it share one context.
PROMPT_KEYS = (("prompt_tokens", "new_tokens"), ("agreement_prompt_tokens", "agreement_new_tokens"))
_KNOWN: dict[tuple[str, str], tuple[int, str] | None] = {}  # a sweep's precheck asks once per combination


def model_context(model: ModelConfig, cache_dir: str | Path | None) -> tuple[int, str] | None:
    """(the model's context in tokens, the setting or config key it comes from), or None when unknown."""
    if model.source == "tiny":
        return model.tiny.max_positions, "model.tiny.max_positions"
    key = (repr(model), str(cache_dir))
    if key not in _KNOWN:
        _KNOWN[key] = _read_context(model, cache_dir)
    return _KNOWN[key]


def _read_context(model: ModelConfig, cache_dir: str | Path | None) -> tuple[int, str] | None:
    if model.source == "embedded":
        converted = Path(cache_dir).expanduser() / "models" / CACHE_NAME / "config.json" if cache_dir else None
        value = _config_context(converted)[0] if converted else None
        return (value or EMBEDDED_CONTEXT), "max_position_embeddings of SmolLM2-135M"
    value, attr = _config_context(_config_file(model))
    return (value, f"{attr} of its config.json") if value else None


def _config_file(model: ModelConfig) -> Path | None:
    """The checkpoint's config.json on this machine: a local directory's, or the Hugging Face cache's
    (no network: a hub model not cached yet is checked once it is)."""
    name = model.name_or_path
    if not name:
        return None
    try:
        path = Path(name).expanduser()
        if model.source == "local" or path.is_dir():
            return path / "config.json"
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json", revision=model.revision)
    except Exception:  # ~nouser/..., not a valid repo id: resolve() says what is wrong with the name
        return None
    return Path(cached) if isinstance(cached, str) else None


def _config_context(path: Path | None) -> tuple[int | None, str]:
    """(the context a config.json states, its key); (None, "") when it states none or cannot be read
    (a broken config is reported where the model is resolved)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None, ""
    for attr in CONTEXT_KEYS if isinstance(config, dict) else ():
        value = config.get(attr)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, attr
    return None, ""


def check_context(obj: InfoptConfig) -> None:
    """Every sequence length of the run fits the model's context, else one line naming the key, the
    value, the model's limit and what to set."""
    lengths = list(sequence_lengths(obj))
    if not lengths:
        return
    cache_dir = obj.paths.cache_dir if isinstance(obj.paths.cache_dir, str) else None
    known = model_context(obj.model, cache_dir)
    if known is None:
        return
    limit, source = known
    for keys, values in lengths:
        if sum(values) > limit:
            raise ConfigError(_message(keys, values, limit, f"model {obj.model.name}: {limit} tokens ({source})",
                                       obj.model.source == "tiny"))  # fmt: skip


def _message(keys: tuple[str, ...], values: tuple[int, ...], limit: int, context: str, tiny: bool) -> str:
    longer = "; or raise model.tiny.max_positions" if tiny else "; or use a model with a longer context"
    if len(keys) == 1:
        return f"{keys[0]}={values[0]} is longer than the context of {context}; use {keys[0]}<={limit}{longer}"
    (prompt, new), (p, n) = keys, values
    what = f"{prompt}={p} plus {new}={n} ({p + n} tokens) do not fit the context of {context}"
    if n < limit:
        return f"{what}; use {prompt}<={limit - n}{longer}"
    return f"{what}; keep {prompt} + {new} <= {limit}{longer}"


def sequence_lengths(obj: InfoptConfig) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(keys, values) of every length the run feeds the model as one sequence; a pair is a prompt and
    the tokens generated after it."""
    yield ("data.seq_len",), (obj.data.seq_len,)
    if obj.eval.token_perplexity:
        yield ("eval.token_perplexity_window",), (obj.eval.token_perplexity_window,)
    if obj.eval.tasks and obj.eval.max_length is not None:
        yield ("eval.max_length",), (obj.eval.max_length,)
    if obj.bench.enabled and obj.bench.timing:
        yield ("bench.prompt_tokens", "bench.new_tokens"), (obj.bench.prompt_tokens, obj.bench.new_tokens)
    yield from _technique_lengths("technique", obj.technique)


def _fields(node: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    return []


def _is_length(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _technique_lengths(key: str, node: Any) -> Iterator[tuple[tuple[str, ...], tuple[int, ...]]]:
    """The technique's lengths by name, in sub-configs, pipeline stages and a study's inner technique
    (None: the data group's length, already checked)."""
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _technique_lengths(f"{key}[{i}]", item)
        return
    fields = dict(_fields(node))
    for name in LENGTH_KEYS:
        if _is_length(fields.get(name)):
            yield (f"{key}.{name}",), (fields[name],)
    for prompt, new in PROMPT_KEYS:
        if _is_length(fields.get(prompt)) and _is_length(fields.get(new)):
            yield (f"{key}.{prompt}", f"{key}.{new}"), (fields[prompt], fields[new])
    for name, value in fields.items():
        if isinstance(value, (list, tuple, dict)) or dataclasses.is_dataclass(value):
            yield from _technique_lengths(f"{key}.{name}", value)
