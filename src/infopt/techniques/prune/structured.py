"""Structured pruning: whole attention heads, MLP channels or decoder layers, physically removed.

The same number of units is removed in every layer, so the result is a smaller *dense* model whose
transformers config describes it exactly (``intermediate_size`` / ``n_inner``,
``num_attention_heads`` + ``num_key_value_heads`` + ``head_dim``, ``num_hidden_layers``): it saves
with ``save_pretrained`` and reloads with plain ``from_pretrained``.

- Heads respect grouped-query attention: the unit is one KV head with the query heads that read it
  (removing a query head alone would break the fixed query-per-KV ratio transformers assumes).
- Channels are MLP intermediate units: rows of gate/up (GPT-2: columns of ``c_fc``) and the matching
  input columns of down (``c_proj``).
- Layers follow ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
  Redundant Than You Expect", arXiv:2403.03853): block influence BI = 1 - E_t cos(x_in, x_out) on
  calibration tokens; the layers that change their input least go.

Importance of heads and channels (LLM-Pruner, Ma et al. 2023, arXiv:2305.11627, compares the same
three): ``magnitude`` (norms of the unit's weights), ``activation`` (energy of the unit's
contribution to the block's output on calibration data, ||x_u W_u^T||^2 summed over tokens) and
``taylor`` (first-order |sum over the unit's weights of w * dL/dw| on calibration data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from infopt.errors import ConfigError
from infopt.techniques.prune.config import StructuredSettings
from infopt.techniques.quantize.core import get_weight
from infopt.techniques.quantize.layerwise import decoder_layers

# --- architecture -------------------------------------------------------------------------------


def arch_of(config) -> str:
    if getattr(config, "model_type", "") == "gpt2":
        return "gpt2"
    return "llama"  # Llama-style naming: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj


def unit_counts(config) -> dict[str, int]:
    """Units per layer (heads: KV groups; channels) and layers, from a transformers config."""
    if arch_of(config) == "gpt2":
        return {
            "heads": config.n_head,
            "channels": config.n_inner or 4 * config.n_embd,
            "layers": config.n_layer,
        }
    return {
        "heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "channels": config.intermediate_size,
        "layers": config.num_hidden_layers,
    }


def units_removed(config, s: StructuredSettings) -> int:
    """How many units go (per layer for heads/channels, in total for layers); ConfigError if none or all."""
    key = "technique.structured"
    if s.target == "heads" and arch_of(config) == "gpt2":
        raise ConfigError(
            f"{key}.target=heads on GPT-2: GPT2Config derives head_dim from n_embd / n_head, so a model with fewer "
            "heads cannot be saved as a plain checkpoint; use target=channels or target=layers"
        )
    total = unit_counts(config)[s.target]
    what = {"heads": "KV head groups per layer", "channels": "MLP channels per layer", "layers": "decoder layers"}[
        s.target
    ]
    n = int(round(s.ratio * total)) if s.ratio is not None else int(s.count or 0)
    given = f"ratio={s.ratio}" if s.ratio is not None else f"count={s.count}"
    if n <= 0:
        raise ConfigError(f"{key}.{given} removes no unit of {total} {what}; raise it")
    if n >= total:
        raise ConfigError(
            f"{key}.{given} would remove all {total} {what} (every head/channel of a layer, or every layer); "
            f"remove at most {total - 1}"
        )
    return n


@dataclass
class Unit:
    """Slices of one unit of a layer: output rows of the producers, input columns of the consumer."""

    producers: list[nn.Module]  # their output features (rows of the (out, in) view) carry the unit
    consumer: nn.Module  # its input features (columns of the (out, in) view) read the unit
    width: int  # features per unit in the consumer's input
    producer_widths: list[int]  # features per unit in each producer's output


def layer_units(layer: nn.Module, config, target: str) -> Unit:
    arch = arch_of(config)
    if target == "channels":
        if arch == "gpt2":
            return Unit([layer.mlp.c_fc], layer.mlp.c_proj, 1, [1])
        return Unit([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj, 1, [1, 1])
    attn = layer.self_attn
    hd = attn.head_dim
    groups = config.num_attention_heads // config.num_key_value_heads
    # Unit = one KV head and its `groups` query heads.
    return Unit([attn.q_proj, attn.k_proj, attn.v_proj], attn.o_proj, groups * hd, [groups * hd, hd, hd])


def _unit_slices(total: int, width: int) -> torch.Tensor:
    return torch.arange(total * width).view(total, width)  # (units, width) feature indices


# --- importance ---------------------------------------------------------------------------------


@torch.no_grad()
def magnitude_importance(layer: nn.Module, config, target: str) -> torch.Tensor:
    u = layer_units(layer, config, target)
    w_out = get_weight(u.consumer).float()  # (hidden, units * width)
    n_units = w_out.shape[1] // u.width
    score = w_out.pow(2).reshape(w_out.shape[0], n_units, u.width).sum((0, 2))
    for p, pw in zip(u.producers, u.producer_widths, strict=True):
        w = get_weight(p).float()  # (units * pw, in)
        score = score + w.pow(2).reshape(n_units, pw, -1).sum((1, 2))
    return score.sqrt()


def calibration_importance(
    model: nn.Module, tokens: torch.Tensor, batch_size: int, target: str, kind: str
) -> list[torch.Tensor]:
    """Per-layer unit scores from calibration data: 'activation' (output energy) or 'taylor'."""
    layers = decoder_layers(model)
    config = model.config
    units = [layer_units(layer, config, target) for layer in layers]
    device = next(model.parameters()).device
    if kind == "activation":
        energy: list[torch.Tensor | None] = [None] * len(layers)

        def make(i: int, u: Unit):
            w = get_weight(u.consumer).detach().float()  # (hidden, units * width)
            n_units = w.shape[1] // u.width
            w_units = w.reshape(w.shape[0], n_units, u.width)  # (hidden, units, width)
            # ||x_u W_u^T||^2 = x_u (W_u^T W_u) x_u^T: a (width, width) Gram matrix per unit, so the
            # (tokens, units, hidden) contributions are never materialised.
            gram = torch.einsum("hua,hub->uab", w_units, w_units)  # (units, width, width)

            def hook(_mod, args):
                x = args[0].detach().float().reshape(-1, n_units, u.width)  # (N, units, width)
                e = (torch.einsum("nua,uab->nub", x, gram) * x).sum((0, 2))  # (units,)
                energy[i] = e if energy[i] is None else energy[i] + e

            return hook

        handles = [u.consumer.register_forward_pre_hook(make(i, u)) for i, u in enumerate(units)]
        try:
            with torch.no_grad():
                for s in range(0, tokens.shape[0], batch_size):
                    model(input_ids=tokens[s : s + batch_size].to(device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return [e for e in energy]  # type: ignore[misc]

    # taylor: |sum_unit w * g| with g the gradient of the LM loss summed over calibration batches.
    from infopt.training.module import lm_loss

    params = [p for u in units for m in [*u.producers, u.consumer] for p in [m.weight]]
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    model.eval()
    try:
        with torch.enable_grad():
            for s in range(0, tokens.shape[0], batch_size):
                batch = tokens[s : s + batch_size].to(device)
                lm_loss(model(input_ids=batch, use_cache=False).logits, batch).backward()
        scores = []
        for u in units:
            wg = (get_weight(u.consumer) * _grad_view(u.consumer)).detach().float()  # (hidden, units * width)
            n_units = wg.shape[1] // u.width
            score = wg.reshape(wg.shape[0], n_units, u.width).sum((0, 2))
            for p, pw in zip(u.producers, u.producer_widths, strict=True):
                wgp = (get_weight(p) * _grad_view(p)).detach().float()  # (units * pw, in)
                score = score + wgp.reshape(n_units, pw, -1).sum((1, 2))
            scores.append(score.abs())
    finally:
        for p in params:
            p.grad = None
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    return scores


def _grad_view(module: nn.Module) -> torch.Tensor:
    g = module.weight.grad
    return g.t() if isinstance(module, Conv1D) else g


@torch.no_grad()
def block_influence(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ShortGPT's BI per decoder layer: 1 - mean over tokens of cos(layer input, layer output)."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers))
    counts = torch.zeros(len(layers))
    device = next(model.parameters()).device

    def make(i: int):
        def hook(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)  # (B, T)
            sums[i] += cos.sum().cpu()
            counts[i] += cos.numel()

        return hook

    handles = [layer.register_forward_hook(make(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for s in range(0, tokens.shape[0], batch_size):
            model(input_ids=tokens[s : s + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return 1 - sums / counts.clamp(min=1)


# --- removal ------------------------------------------------------------------------------------


def _slice(module: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A new Linear/Conv1D keeping output features ``out_idx`` and input features ``in_idx``."""
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
        new = Conv1D(out_f, in_f)
        new.weight.data = w.t().contiguous()
        new.bias.data = bias.clone() if bias is not None else torch.zeros(out_f, dtype=w.dtype, device=w.device)
    else:
        new = nn.Linear(in_f, out_f, bias=bias is not None, dtype=w.dtype, device=w.device)
        new.weight.data = w.contiguous().clone()
        if bias is not None:
            new.bias.data = bias.clone()
    new.weight.requires_grad_(module.weight.requires_grad)
    return new


def keep_units(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Indices of the units kept (highest scores), in their original order."""
    drop = torch.topk(scores.float(), n_remove, largest=False).indices
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[drop.cpu()] = False
    return keep.nonzero().squeeze(1)


def _feature_index(keep: torch.Tensor, width: int) -> torch.Tensor:
    return (keep.view(-1, 1) * width + torch.arange(width).view(1, -1)).flatten()


@torch.no_grad()
def zero_units(model: nn.Module, target: str, keeps: list[torch.Tensor]) -> None:
    """The masked-dense equivalent of ``remove_units``: zero the consumer columns of removed units."""
    for layer, keep in zip(decoder_layers(model), keeps, strict=True):
        u = layer_units(layer, model.config, target)
        w = get_weight(u.consumer)
        n_units = w.shape[1] // u.width
        mask = torch.zeros(n_units, dtype=torch.bool)
        mask[keep] = True
        col_mask = mask.repeat_interleave(u.width).to(w.device)
        w.mul_(col_mask.view(1, -1).to(w.dtype))


@torch.no_grad()
def remove_units(model: nn.Module, target: str, keeps: list[torch.Tensor]) -> None:
    """Physically remove the units not in ``keeps[layer]`` and update the model's config."""
    config = model.config
    if target == "heads":
        # Fix head_dim in the config before num_attention_heads changes (Llama derives it otherwise).
        config.head_dim = decoder_layers(model)[0].self_attn.head_dim
    sizes = set()
    for layer, keep in zip(decoder_layers(model), keeps, strict=True):
        u = layer_units(layer, config, target)
        parent_of = {id(m): (p, n) for p in layer.modules() for n, m in p.named_children()}
        for mod, pw in zip(u.producers, u.producer_widths, strict=True):
            parent, name = parent_of[id(mod)]
            setattr(parent, name, _slice(mod, out_idx=_feature_index(keep, pw).to(mod.weight.device)))
        parent, name = parent_of[id(u.consumer)]
        setattr(parent, name, _slice(u.consumer, in_idx=_feature_index(keep, u.width).to(u.consumer.weight.device)))
        sizes.add(len(keep))
        if target == "channels" and hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = len(keep)
    (n,) = sizes  # uniform across layers
    if target == "channels":
        if arch_of(config) == "gpt2":
            config.n_inner = n
        else:
            config.intermediate_size = n
    else:
        groups = config.num_attention_heads // config.num_key_value_heads
        config.num_key_value_heads = n
        config.num_attention_heads = n * groups


def remove_layers(model: nn.Module, drop: list[int]) -> None:
    """Delete decoder layers, renumber the rest (each attention's layer_idx indexes the KV cache)."""
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for new_idx, layer in enumerate(kept):
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
        for mod in layer.modules():
            if hasattr(mod, "layer_idx") and isinstance(mod.layer_idx, int):
                mod.layer_idx = new_idx
    layers_new = nn.ModuleList(kept)
    for name, module in model.named_modules():
        if module is layers:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layers_new)
            break
    config = model.config
    config.num_hidden_layers = len(kept)  # GPT2Config maps this to n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(drop)]


def count_params(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
