"""Keep pruned weights at zero while a model trains (recovery fine-tuning, distilling into a pruned student).

Masks are held in each module's own weight layout (GPT-2's ``Conv1D`` stores (in, out)). Gradients of
pruned weights are zeroed before every optimizer step (so AdamW's moments never move them) and the
masks are re-applied after every step (covering weight decay and anything else that touches them).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from infopt.models.surgery import decoder_path, get_weight, linear_layers


class MaskKeeper(L.Callback):
    """Holds (module name -> keep-mask in the module's weight layout) and enforces it in training."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self.model = model

    def _pairs(self):
        for name, mask in self.masks.items():
            module = self.model.get_submodule(name)
            yield module.weight, mask

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for weight, mask in self._pairs():
            if weight.grad is not None:
                weight.grad.mul_(mask.to(weight.grad.device, weight.grad.dtype))

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in self._pairs():
            weight.mul_(mask.to(weight.device, weight.dtype))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.apply()


def module_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(out, in) masks -> masks in each module's own weight layout (GPT-2's Conv1D is (in, out))."""
    return {n: to_module_layout(model.get_submodule(n), m) for n, m in masks.items()}


def to_module_layout(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """An (out, in) mask in the layout the module stores its weight ((in, out) for Conv1D)."""
    from transformers.pytorch_utils import Conv1D

    return (mask.t() if isinstance(module, Conv1D) else mask).contiguous()


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """(out, in) keep-masks of the decoder's Linear/Conv1D layers that hold exact zeros (a pruned model's).

    A trained dense weight is exactly zero with negligible probability, so zeros are the pruning masks.
    """
    path = decoder_path(model)
    layers = linear_layers(model.get_submodule(path), prefix=f"{path}.")
    masks = {n: get_weight(m).detach() != 0 for n, m in layers.items()}
    return {n: m for n, m in masks.items() if not bool(m.all())}
