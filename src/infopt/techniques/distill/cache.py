"""Teacher outputs computed once and stored on disk: top-k logits (cached mode) and generated
sequences (sequence mode).

Files are safetensors (no pickle: loading runs no code), written to a temporary name and renamed
(a killed run leaves no half file), under ``<cache_dir>/distill/`` with a name that hashes the
teacher's weights, the exact training tokens and the settings, so every later run of a sweep with
the same teacher and data reuses them and a different teacher never does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from infopt.techniques.distill.losses import teacher_topk

log = logging.getLogger(__name__)


def teacher_fingerprint(model: nn.Module) -> str:
    """A hash of the teacher's architecture and weights (names, shapes, dtypes and two moments of
    every tensor): a quantized or pruned teacher gets another key than the dense one."""
    h = hashlib.sha256()
    h.update(type(model).__name__.encode())
    h.update(model.config.to_json_string(use_diff=False).encode() if hasattr(model, "config") else b"")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not torch.is_tensor(t) or not t.is_floating_point():
                continue
            t64 = t.detach().double()
            h.update(
                f"{name}:{tuple(t.shape)}:{t.dtype}:{t64.sum().item():.10e}:{t64.abs().sum().item():.10e}".encode()
            )
    return h.hexdigest()[:16]


def tokens_fingerprint(blocks: torch.Tensor) -> str:
    return hashlib.sha256(blocks.contiguous().numpy().tobytes() + str(tuple(blocks.shape)).encode()).hexdigest()[:16]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception as err:  # a corrupt file is rebuilt, not trusted
        log.warning("distill cache %s unreadable (%s): recomputing", path, err)
        return None


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def topk_logits(
    teacher: nn.Module, blocks: torch.Tensor, k: int, cache_dir: Path, batch_size: int = 8
) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Teacher top-k logits over ``blocks`` (N, T): {"topk_values" (N, T, k) f32, "topk_indices"
    (N, T, k) i32, "topk_rest" (N, T) f32: log of the mass outside the top k}, the file, and whether it was already cached."""
    key = f"topk-{teacher_fingerprint(teacher)}-{tokens_fingerprint(blocks)}-k{k}"
    path = Path(cache_dir) / "distill" / f"{key}.safetensors"
    cached = _load(path)
    if cached is not None and cached["topk_values"].shape[:2] == blocks.shape:
        return cached, path, True
    was_training = teacher.training
    teacher.eval()
    device = _device_of(teacher)
    values, indices, lses = [], [], []
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start : start + batch_size].to(device)
        v, i, lse = teacher_topk(teacher(input_ids=batch).logits, k)
        values.append(v.cpu())
        indices.append(i.to(torch.int32).cpu())
        lses.append(lse.cpu())
    teacher.train(was_training)
    out = {"topk_values": torch.cat(values), "topk_indices": torch.cat(indices), "topk_rest": torch.cat(lses)}
    _save_atomic(out, path, {"kind": "teacher_topk", "k": str(k), "blocks": str(tuple(blocks.shape))})
    return out, path, False


@torch.no_grad()
def teacher_sequences(
    teacher: nn.Module,
    blocks: torch.Tensor,
    prompt_len: int,
    seq_len: int,
    cache_dir: Path,
    *,
    count: int | None = None,
    sample: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, Path, bool]:
    """Sequence-level KD data (Kim & Rush 2016): the first ``prompt_len`` tokens of each training
    block as a prompt, continued by the teacher to ``seq_len`` tokens. Returns (N, seq_len)."""
    prompts = blocks[: count or blocks.shape[0], :prompt_len].contiguous()
    key = (
        f"seq-{teacher_fingerprint(teacher)}-{tokens_fingerprint(prompts)}-L{seq_len}"
        f"-{'sample' if sample else 'greedy'}-s{seed}"
    )
    path = Path(cache_dir) / "distill" / f"{key}.safetensors"
    cached = _load(path)
    if cached is not None and tuple(cached["sequences"].shape) == (prompts.shape[0], seq_len):
        return cached["sequences"], path, True
    was_training = teacher.training
    teacher.eval()
    device = _device_of(teacher)
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, prompts.shape[0], batch_size):
        batch = prompts[start : start + batch_size].to(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            seqs = teacher.generate(
                input_ids=batch,
                attention_mask=torch.ones_like(batch),
                max_new_tokens=seq_len - prompt_len,
                min_new_tokens=seq_len - prompt_len,
                do_sample=sample,
                top_k=0 if sample else None,
                top_p=1.0 if sample else None,
                temperature=1.0 if sample else None,
                pad_token_id=pad_token_id,
            )
        out.append(seqs[:, :seq_len].cpu())
    teacher.train(was_training)
    sequences = torch.cat(out).long()
    _save_atomic({"sequences": sequences}, path, {"kind": "teacher_sequences", "prompt_len": str(prompt_len)})
    return sequences, path, False
