"""LoRA adapters through peft, merged back so the result is a plain transformers model."""

from __future__ import annotations

from torch import nn

from infopt.training.config import LoraSettings


def apply_lora(model: nn.Module, cfg: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # Built in code from plain values (hydra.instantiate would hand peft a DictConfig).
    target = (
        cfg.target_modules[0]
        if list(cfg.target_modules) == ["all-linear"]
        else list(cfg.target_modules)
    )
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def merge_lora(model: nn.Module) -> nn.Module:
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model
