"""Save a model so it reloads with plain transformers: safetensors, written atomically."""

from __future__ import annotations

from pathlib import Path

from infopt.io import atomic_dir


def save_hf(model, tokenizer, target: Path) -> Path:
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
