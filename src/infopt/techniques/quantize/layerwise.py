"""Run a causal LM one decoder block at a time on calibration inputs.

The inputs of block 0 are captured once (a pre-hook that stops the forward), then each block is
run on them, statistics are collected with hooks, the block is changed (quantized, smoothed), and
its new outputs feed the next block: GPTQ's sequential procedure, which keeps memory to one
block's activations (SmolLM2: 128 x 512 x 576 floats = 151 MB) instead of the whole model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _Stop(Exception):
    pass


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__} (looked for model.layers, transformer.h)"
    )


def smoothing_groups(block: nn.Module) -> list[tuple[nn.Module, list[str], str]]:
    """(previous op, linears reading its output, kind) inside one block.

    kind = "norm": the previous op is a RMSNorm/LayerNorm whose weight (and bias) can absorb a
    per-channel scale; "linear": a Linear whose output rows can (Llama's up_proj before down_proj,
    since down_proj reads act(gate) * up, linear in up).
    """
    names = dict(block.named_modules())
    if "self_attn" in names and "input_layernorm" in names:  # Llama family
        groups = [
            (
                names["input_layernorm"],
                ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                "norm",
            ),
            (names["post_attention_layernorm"], ["mlp.gate_proj", "mlp.up_proj"], "norm"),
        ]
        if "mlp.up_proj" in names and "mlp.down_proj" in names:
            groups.append((names["mlp.up_proj"], ["mlp.down_proj"], "linear"))
        return groups
    if "ln_1" in names and "attn.c_attn" in names:  # GPT-2
        return [(names["ln_1"], ["attn.c_attn"], "norm"), (names["ln_2"], ["mlp.c_fc"], "norm")]
    return []


class LayerwiseRunner:
    """Holds the current inputs of one block for every calibration batch."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor, batch_size: int) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.device = next(model.parameters()).device
        self.inputs: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self._capture(tokens, batch_size)

    @torch.no_grad()
    def _capture(self, tokens: torch.Tensor, batch_size: int) -> None:
        first = self.layers[0]

        def hook(_mod, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kw = {
                k: v
                for k, v in kwargs.items()
                if k
                not in (
                    "past_key_values",
                    "past_key_value",
                    "layer_past",
                    "use_cache",
                    "hidden_states",
                )
            }
            self.inputs.append((hidden.detach(), kw))
            raise _Stop

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for i in range(0, tokens.shape[0], batch_size):
                batch = tokens[i : i + batch_size].to(self.device)  # (b, T)
                try:
                    self.model(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
        finally:
            handle.remove()

    @torch.no_grad()
    def run(self, layer: nn.Module, update: bool = False) -> list[torch.Tensor]:
        """Outputs of ``layer`` on the current inputs; ``update`` makes them the next inputs."""
        outs = []
        for hidden, kw in self.inputs:
            out = layer(hidden, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
        if update:
            self.inputs = [(o, kw) for o, (_, kw) in zip(outs, self.inputs, strict=True)]
        return outs

    def blocks(self) -> Iterator[tuple[int, nn.Module]]:
        yield from enumerate(self.layers)


@contextmanager
def input_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]):
    """Call fn(name, x) with the (N, in) input of each module on every forward."""

    def make(name: str):
        def hook(_mod, args):
            x = args[0].detach()
            fn(name, x.reshape(-1, x.shape[-1]))  # (B*T, in)

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
