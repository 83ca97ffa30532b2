"""Model size as actually stored, and the bytes and FLOPs each decoded token costs.

Counts every unique parameter and persistent buffer at its real element size, so packed int4
buffers count as packed, a tensor subclass (torchao, quanto) as the inner tensors it holds, and a
simulated (de-quantized) model as the floats it holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infopt.models.surgery import inner_tensors, parameter_count, storage_key


def _unique_tensors(model: nn.Module) -> dict[object, tuple[str, torch.Tensor]]:
    seen: dict[object, tuple[str, torch.Tensor]] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is None:
            continue
        seen.setdefault(storage_key(t), (name, t))
    return seen


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        for buf in getattr(mod, "_non_persistent_buffers_set", ()):
            names.add(f"{mod_name}.{buf}" if mod_name else buf)
    return names


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from ``obj``: a tensor (a subclass by its inner tensors),
    lists, tuples, dicts and plain objects (e.g. a KV cache's layers), each tensor counted once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return sum(x.numel() * x.element_size() for x in inner_tensors(obj))
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o, seen) for o in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
        return sum(tensor_bytes(v, seen) for k, v in vars(obj).items() if not k.startswith("__"))
    return 0


def _packed_params_bytes(model: nn.Module) -> int:
    """torch.ao quantized modules hold weight and bias in packed params (neither parameters nor
    buffers): count their int8 weights, per-channel scales/zero points and biases."""
    total = 0
    for mod in model.modules():
        weight_bias = getattr(mod, "_weight_bias", None)
        if not (callable(weight_bias) and hasattr(mod, "_packed_params")):
            continue
        w, b = weight_bias()
        total += w.numel() * w.element_size()
        if w.is_quantized and w.qscheme() in (
            torch.per_channel_affine,
            torch.per_channel_symmetric,
        ):
            total += (
                w.q_per_channel_scales().numel() * 4 + w.q_per_channel_zero_points().numel() * 4
            )
        if b is not None:
            total += tensor_bytes(b)
    return total


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the state a checkpoint of this model holds (tied weights once)."""
    skip = _non_persistent_buffers(model)
    own = sum(tensor_bytes(t) for name, t in _unique_tensors(model).values() if name not in skip)
    return own + _packed_params_bytes(model)


def _input_embedding(model: nn.Module) -> torch.Tensor | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return getattr(emb, "weight", None)


def _output_embedding(model: nn.Module) -> torch.Tensor | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return getattr(head, "weight", None)


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights read to decode one token at batch 1.

    Everything is read once, except the input embedding table (one row per token) and position
    tables, unless the table is tied to the output head (then the head reads all of it).
    """
    total = stored_bytes(model)
    inp, out = _input_embedding(model), _output_embedding(model)
    tied = inp is not None and out is not None and inp.data_ptr() == out.data_ptr()
    if inp is not None and not tied:
        total -= tensor_bytes(inp) - inp.shape[-1] * inp.element_size()
    for name, module in model.named_modules():  # GPT-2 learned positions: one row per token
        if name.endswith("wpe") and isinstance(module, nn.Embedding):
            w = module.weight
            total -= tensor_bytes(w) - w.shape[-1] * w.element_size()
    return total


def flops_per_token(model: nn.Module) -> int:
    """2 FLOPs per multiply-accumulate over the parameters that a token multiplies (no attention term)."""
    params = parameter_count(model)
    inp, out = _input_embedding(model), _output_embedding(model)
    tied = inp is not None and out is not None and inp.data_ptr() == out.data_ptr()
    if inp is not None and not tied:
        params -= inp.numel()
    return 2 * params
