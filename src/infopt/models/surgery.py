"""Model surgery every technique shares: one place for each way of cutting a model.

- Find the decoder layers (``decoder_path`` / ``decoder_layers``) and the full name of a module.
- Read and write a Linear or GPT-2 ``Conv1D`` weight as an (out, in) matrix (``get_weight`` /
  ``set_weight``; ``Conv1D`` stores (in, out)), and replace a module by name.
- Keep a subset of the decoder layers, renumbering each attention's ``layer_idx`` (it indexes the
  KV cache) and the config (``keep_layers``).
- Narrow whole units: MLP intermediate channels, or KV-head groups with the query heads that read
  them (``units`` describes them, ``narrow_units`` slices them out and updates the config), so the
  result is a smaller dense model that ``save_pretrained`` / ``from_pretrained`` handle unchanged.
- Count parameters (tied weights once) and read architecture facts from a config.

Two layouts are understood: Llama-style (``model.layers``, ``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, grouped-query attention) and GPT-2 (``transformer.h``, ``Conv1D``
``attn.c_attn`` / ``c_proj``, ``mlp.c_fc`` / ``c_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from infopt.errors import ConfigError
from infopt.models import CONTEXT_KEYS

DECODER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")
TARGETS = ("heads", "channels")  # narrowable units


# --- finding things -------------------------------------------------------------------------------


def decoder_path(model: nn.Module) -> str:
    """Dotted path of the decoder's layer ModuleList; ConfigError naming the layouts known."""
    for path in DECODER_PATHS:
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return path
    raise ConfigError(
        f"cannot find the decoder layers of {type(model).__name__}: infopt's model surgery knows "
        f"{', '.join(DECODER_PATHS)} (Llama-style and GPT-2 layouts)"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(decoder_path(model))  # type: ignore[return-value]


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_layers(module: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every Linear/Conv1D under ``module`` by full name (``prefix`` + its name inside ``module``)."""
    return {f"{prefix}{n}": m for n, m in module.named_modules() if is_linear(m)}


def block_linears(model: nn.Module, index: int) -> dict[str, nn.Module]:
    """The Linear/Conv1D layers of decoder layer ``index``, by their full names in ``model``."""
    return linear_layers(decoder_layers(model)[index], f"{decoder_path(model)}.{index}.")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --- weights as (out, in) ---------------------------------------------------------------------------


def get_weight(module: nn.Module) -> torch.Tensor:
    """(out, in) view of the weight (Conv1D stores (in, out))."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def set_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Write an (out, in) matrix back in the module's own layout and dtype."""
    target = module.weight
    w = w.t() if isinstance(module, Conv1D) else w
    with torch.no_grad():
        target.copy_(w.to(target.dtype))


def in_out(module: nn.Module) -> tuple[int, int]:
    out_f, in_f = get_weight(module).shape
    return in_f, out_f


def layer_input_widths(model: nn.Module) -> dict[str, int]:
    return {name: in_out(m)[0] for name, m in linear_layers(model).items()}


def sliced_linear(module: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A new Linear/Conv1D (same kind) keeping output features ``out_idx`` and input features ``in_idx``."""
    w = get_weight(module).detach()  # (out, in)
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    bias = module.bias.detach() if module.bias is not None else None
    if bias is not None and out_idx is not None:
        bias = bias[out_idx]
    out_f, in_f = w.shape
    if isinstance(module, Conv1D):
        new: nn.Module = Conv1D(out_f, in_f)
        new.weight.data = w.t().contiguous()
        new.bias.data = bias.clone() if bias is not None else torch.zeros(out_f, dtype=w.dtype, device=w.device)
    else:
        new = nn.Linear(in_f, out_f, bias=bias is not None, dtype=w.dtype, device=w.device)
        new.weight.data = w.contiguous().clone()
        if bias is not None:
            new.bias.data = bias.clone()
    new.weight.requires_grad_(module.weight.requires_grad)
    return new


# --- counting ---------------------------------------------------------------------------------------


def inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold ``t``'s data: itself, or a tensor subclass's inner tensors (torchao's
    quantized weights, semi-structured 2:4 sparse weights), whose ``data_ptr()`` is 0 and whose
    ``element_size()`` is that of the logical float dtype."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if callable(flatten) and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        return [x for n in names if (inner := getattr(t, n)) is not None for x in inner_tensors(inner)]
    return [t]


def storage_key(t: torch.Tensor) -> object:
    """Same key for tensors sharing storage (tied weights), distinct keys otherwise."""
    ptrs = tuple(x.data_ptr() for x in inner_tensors(t))
    return ptrs if t.numel() and all(ptrs) else id(t)


def parameter_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once); packed buffers are not parameters."""
    seen = {storage_key(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


# --- architecture facts -------------------------------------------------------------------------------


def arch_of(config) -> str:
    """``gpt2`` or ``llama`` (Llama-style naming: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj)."""
    return "gpt2" if getattr(config, "model_type", "") == "gpt2" else "llama"


def hidden_size(config) -> int:
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def context_length(config) -> int:
    """The model's maximum context in tokens (position table size or rope limit)."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise ValueError(f"{type(config).__name__}: cannot tell the maximum context from the config")


def unit_counts(config) -> dict[str, int]:
    """Units per layer (heads: KV groups; channels: MLP width) and decoder layers."""
    if arch_of(config) == "gpt2":
        return {"heads": config.n_head, "channels": config.n_inner or 4 * config.n_embd, "layers": config.n_layer}
    return {
        "heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "channels": config.intermediate_size,
        "layers": config.num_hidden_layers,
    }


def input_groups(block: nn.Module) -> list[tuple[nn.Module, list[str], str]]:
    """(previous op, names of the linears reading its output, kind) inside one decoder block.

    kind = "norm": the previous op is a RMSNorm/LayerNorm whose weight (and bias) can absorb a
    per-channel scale; "linear": a Linear whose output rows can (Llama's up_proj before down_proj,
    since down_proj reads act(gate) * up, linear in up). SmoothQuant, AWQ and rotations fold into these.
    """
    names = dict(block.named_modules())
    if "self_attn" in names and "input_layernorm" in names:  # Llama family
        groups = [
            (names["input_layernorm"], ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "norm"),
            (names["post_attention_layernorm"], ["mlp.gate_proj", "mlp.up_proj"], "norm"),
        ]
        if "mlp.up_proj" in names and "mlp.down_proj" in names:
            groups.append((names["mlp.up_proj"], ["mlp.down_proj"], "linear"))
        return groups
    if "ln_1" in names and "attn.c_attn" in names:  # GPT-2
        return [(names["ln_1"], ["attn.c_attn"], "norm"), (names["ln_2"], ["mlp.c_fc"], "norm")]
    return []


def meta_model(config) -> nn.Module:
    """The architecture on the meta device: shapes and names without memory or weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# --- keeping layers -----------------------------------------------------------------------------------


def keep_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep decoder layers ``keep`` (in that order) in place; renumber their ``layer_idx`` and the config."""
    path = decoder_path(model)
    layers = model.get_submodule(path)
    kept = nn.ModuleList(layers[i] for i in keep)
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():  # each attention indexes the KV cache by its layer_idx
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    replace_module(model, path, kept)
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)  # GPT2Config maps this to n_layer
    return model


# --- narrowing units ------------------------------------------------------------------------------------


@dataclass
class Unit:
    """Slices of one kind of unit in a layer: output rows of the producers, input columns of the consumer."""

    producers: list[nn.Module]  # their output features (rows of the (out, in) view) carry the units
    consumer: nn.Module  # its input features (columns of the (out, in) view) read the units
    width: int  # consumer input features per unit
    producer_widths: list[int]  # output features per unit in each producer

    @property
    def count(self) -> int:
        return get_weight(self.consumer).shape[1] // self.width


def units(layer: nn.Module, config, target: str) -> Unit:
    """MLP channels, or KV-head groups (one KV head and the query heads that read it: removing a
    query head alone would break the fixed query-per-KV ratio transformers assumes)."""
    gpt2 = arch_of(config) == "gpt2"
    if target == "channels":
        if gpt2:
            return Unit([layer.mlp.c_fc], layer.mlp.c_proj, 1, [1])
        return Unit([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj, 1, [1, 1])
    if gpt2:
        raise ConfigError(
            "heads of GPT-2 cannot be narrowed: GPT2Config derives head_dim from n_embd / n_head, so a model with "
            "fewer heads cannot be saved as a plain checkpoint; narrow channels or layers instead"
        )
    attn = layer.self_attn
    hd = attn.head_dim
    group = config.num_attention_heads // config.num_key_value_heads
    return Unit([attn.q_proj, attn.k_proj, attn.v_proj], attn.o_proj, group * hd, [group * hd, hd, hd])


def _feature_index(keep: torch.Tensor, width: int) -> torch.Tensor:
    return (keep.view(-1, 1) * width + torch.arange(width).view(1, -1)).flatten()  # (kept * width,)


@torch.no_grad()
def narrow_units(model: nn.Module, target: str, keeps: list[torch.Tensor]) -> None:
    """Keep only units ``keeps[i]`` (indices, in order) of decoder layer i; update the config.

    The same number must be kept in every layer (a uniform config that plain transformers loads).
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; valid: {TARGETS}")
    config = model.config
    sizes = {len(k) for k in keeps}
    if len(sizes) != 1:
        raise ValueError(f"narrow_units keeps {sorted(sizes)} units in different layers; it needs one count")
    if target == "heads":  # fix head_dim before num_attention_heads changes (Llama derives it otherwise)
        config.head_dim = decoder_layers(model)[0].self_attn.head_dim
    for layer, keep in zip(decoder_layers(model), keeps, strict=True):
        u = units(layer, config, target)
        parent_of = {id(m): (p, n) for p in layer.modules() for n, m in p.named_children()}
        for mod, pw in zip(u.producers, u.producer_widths, strict=True):
            parent, name = parent_of[id(mod)]
            setattr(parent, name, sliced_linear(mod, out_idx=_feature_index(keep, pw).to(mod.weight.device)))
        parent, name = parent_of[id(u.consumer)]
        idx = _feature_index(keep, u.width).to(u.consumer.weight.device)
        setattr(parent, name, sliced_linear(u.consumer, in_idx=idx))
        if target == "channels" and hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = len(keep)
    (n,) = sizes
    if target == "channels":
        if arch_of(config) == "gpt2":
            config.n_inner = n
        else:
            config.intermediate_size = n
    else:
        group = config.num_attention_heads // config.num_key_value_heads
        config.num_key_value_heads = n
        config.num_attention_heads = n * group


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep`` highest scores, in their original order."""
    drop = torch.topk(scores.float(), scores.numel() - n_keep, largest=False).indices
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[drop.cpu()] = False
    return keep.nonzero().squeeze(1)
