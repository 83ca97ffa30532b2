"""Structured pruning: which whole attention heads, MLP channels or decoder layers to remove.

The removal itself is model surgery (``models.surgery.narrow_units`` / ``keep_layers``): the same
number of units goes in every layer, so the result is a smaller *dense* model whose transformers
config describes it exactly and reloads with plain ``from_pretrained``. Heads are KV-head groups
(one KV head with the query heads that read it); channels are MLP intermediate units.

- Layers follow ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
  Redundant Than You Expect", arXiv:2403.03853): block influence BI = 1 - E_t cos(x_in, x_out) on
  calibration tokens; the layers that change their input least go.

Importance of heads and channels (LLM-Pruner, Ma et al. 2023, arXiv:2305.11627, compares the same
three): ``magnitude`` (norms of the unit's weights), ``activation`` (energy of the unit's
contribution to the block's output on calibration data, ||x_u W_u^T||^2 summed over tokens) and
``taylor`` (first-order |sum over the unit's weights of w * dL/dw| on calibration data).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from infopt.calibration import input_hooks
from infopt.errors import ConfigError
from infopt.models.surgery import Unit, decoder_layers, get_weight, unit_counts, units
from infopt.techniques.prune.config import StructuredSettings

# --- how many ----------------------------------------------------------------------------------


def units_removed(config, s: StructuredSettings) -> int:
    """How many units go (per layer for heads/channels, in total for layers); ConfigError if none or all."""
    key = "technique.structured"
    if s.target == "heads" and getattr(config, "model_type", "") == "gpt2":
        raise ConfigError(
            f"{key}.target=heads on GPT-2: GPT2Config derives head_dim from n_embd / n_head, so a model with fewer "
            "heads cannot be saved as a plain checkpoint; use target=channels or target=layers"
        )
    total = unit_counts(config)[s.target]
    what = {"heads": "KV head groups per layer", "channels": "MLP channels per layer", "layers": "decoder layers"}[
        s.target
    ]
    # A ratio rounds half up to whole units (0.25 of 3 KV groups is 1 group, 33%; of 2 layers, 1); the
    # record states the fraction actually removed.
    n = math.floor(s.ratio * total + 0.5) if s.ratio is not None else int(s.count or 0)
    given = f"ratio={s.ratio}" if s.ratio is not None else f"count={s.count}"
    if n <= 0:
        raise ConfigError(f"{key}.{given} removes no unit of {total} {what}; raise it")
    if n >= total:
        raise ConfigError(
            f"{key}.{given} would remove all {total} {what} (every head/channel of a layer, or every layer); "
            f"remove at most {total - 1}"
        )
    return n


# --- importance ---------------------------------------------------------------------------------


def magnitude_importance(layer: nn.Module, config, target: str) -> torch.Tensor:
    """L2 norm of all the weights that belong to each unit (its producer rows and consumer columns)."""
    return _unit_sums(units(layer, config, target), lambda m: get_weight(m).pow(2)).sqrt()


def calibration_importance(
    model: nn.Module, tokens: torch.Tensor, batch_size: int, target: str, kind: str
) -> list[torch.Tensor]:
    """Per-layer unit scores from calibration data: 'activation' (output energy) or 'taylor'."""
    layer_units = [units(layer, model.config, target) for layer in decoder_layers(model)]
    score = activation_importance if kind == "activation" else taylor_importance
    return score(model, layer_units, tokens.split(batch_size))


def _forward(model: nn.Module, batch: torch.Tensor):
    return model(input_ids=batch.to(next(model.parameters()).device), use_cache=False)


@torch.no_grad()
def activation_importance(model: nn.Module, layer_units: list[Unit], batches) -> list[torch.Tensor]:
    """Energy of each unit's contribution to the block output, ||x_u W_u^T||^2 summed over tokens."""
    energy: dict[str, torch.Tensor] = {}
    grams: dict[str, torch.Tensor] = {}
    for i, u in enumerate(layer_units):
        w = get_weight(u.consumer).detach().float()  # (hidden, units * width)
        w_units = w.reshape(w.shape[0], u.count, u.width)  # (hidden, units, width)
        # ||x_u W_u^T||^2 = x_u (W_u^T W_u) x_u^T: a (width, width) Gram matrix per unit, so the
        # (tokens, units, hidden) contributions are never materialised.
        grams[str(i)] = torch.einsum("hua,hub->uab", w_units, w_units)  # (units, width, width)

    def add(name: str, x: torch.Tensor) -> None:
        gram = grams[name]
        x = x.float().reshape(-1, gram.shape[0], gram.shape[1])  # (N, units, width)
        e = (torch.einsum("nua,uab->nub", x, gram) * x).sum((0, 2))  # (units,)
        energy[name] = energy[name] + e if name in energy else e

    with input_hooks({str(i): u.consumer for i, u in enumerate(layer_units)}, add):
        for batch in batches:
            _forward(model, batch)
    return [energy[str(i)] for i in range(len(layer_units))]


def taylor_importance(model: nn.Module, layer_units: list[Unit], batches) -> list[torch.Tensor]:
    """First-order |sum over the unit's weights of w * dL/dw|, L the LM loss summed over batches."""
    from infopt.training.module import lm_loss

    params = [m.weight for u in layer_units for m in [*u.producers, u.consumer]]
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
            for batch in batches:
                lm_loss(_forward(model, batch).logits, batch.to(params[0].device)).backward()
        return [_unit_sums(u, lambda m: get_weight(m) * _grad_view(m)).abs() for u in layer_units]
    finally:
        for p in params:
            p.grad = None
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


@torch.no_grad()
def _unit_sums(u: Unit, value) -> torch.Tensor:
    """Sum of ``value(module)`` ((out, in) each) over every weight that belongs to each unit: (units,)."""
    v = value(u.consumer).detach().float()  # (hidden, units * width)
    score = v.reshape(v.shape[0], u.count, u.width).sum((0, 2))
    for p, pw in zip(u.producers, u.producer_widths, strict=True):
        score = score + value(p).detach().float().reshape(u.count, pw, -1).sum((1, 2))  # (units * pw, in)
    return score


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


# --- masked-dense equivalent (tests) ------------------------------------------------------------


@torch.no_grad()
def zero_units(model: nn.Module, target: str, keeps: list[torch.Tensor]) -> None:
    """The masked-dense equivalent of ``surgery.narrow_units``: zero the consumer columns of removed units."""
    for layer, keep in zip(decoder_layers(model), keeps, strict=True):
        u = units(layer, model.config, target)
        w = get_weight(u.consumer)
        mask = torch.zeros(u.count, dtype=torch.bool)
        mask[keep] = True
        col_mask = mask.repeat_interleave(u.width).to(w.device)
        w.mul_(col_mask.view(1, -1).to(w.dtype))


