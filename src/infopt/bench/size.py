"""Model size as actually stored, and the bytes and FLOPs each decoded token costs.

Counts every unique parameter and persistent buffer at its real element size, so packed int4
buffers count as packed and a simulated (de-quantized) model counts as the floats it holds.
"""

from __future__ import annotations

import torch
from torch import nn


def inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold ``t``'s data: itself, or a tensor subclass's inner tensors (torchao's
    quantized weights, semi-structured 2:4 sparse weights), whose ``data_ptr()`` is 0 and whose
    ``element_size()`` is that of the logical float dtype."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if callable(flatten) and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        return [x for n in names if (inner := getattr(t, n)) is not None for x in inner_tensors(inner)]
    return [t]


def _storage_key(t: torch.Tensor) -> object:
    """Same key for tensors sharing storage (tied weights), distinct keys otherwise."""
    ptrs = tuple(x.data_ptr() for x in inner_tensors(t))
    return ptrs if t.numel() and all(ptrs) else id(t)


def _unique_tensors(model: nn.Module) -> dict[object, tuple[str, torch.Tensor]]:
    seen: dict[object, tuple[str, torch.Tensor]] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is None:
            continue
        seen.setdefault(_storage_key(t), (name, t))
    return seen


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        for buf in getattr(mod, "_non_persistent_buffers_set", ()):
            names.add(f"{mod_name}.{buf}" if mod_name else buf)
    return names


def tensor_bytes(t: torch.Tensor) -> int:
    return sum(x.numel() * x.element_size() for x in inner_tensors(t))


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


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once); packed buffers are not parameters."""
    seen = {_storage_key(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


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
