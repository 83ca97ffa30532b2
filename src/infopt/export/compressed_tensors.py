"""Write a quantized model in the compressed-tensors format (llm-compressor's), which vLLM and
transformers load with plain ``from_pretrained``.

Each framework-quantized layer keeps its own integer codes and scales: the model is rebuilt with
float weights ``s * (c - z)`` (exact in float32), compressed-tensors' quantization parameters are
set to the same scales and to zero points shifted to its signed convention (``z - 2^(b-1)``; 0 for
symmetric), and its compressor then re-derives ``round(w / s) + z'``, which gives back the same
codes because ``w / s`` is an integer. Symmetric layers are written ``pack-quantized`` (codes packed
into int32); asymmetric ones ``int-quantized`` (int8 codes), because with compressed-tensors 0.20.1
and transformers 5.24 the packed zero points of ``pack-quantized`` do not reload (shape mismatch).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from infopt.export.gguf import ExportError, int_weight
from infopt.io import atomic_dir


def _args_key(iw, in_f: int) -> tuple:
    per_row = iw.group_size >= in_f
    return (iw.bits, iw.symmetric, "channel" if per_row else "group", None if per_row else iw.group_size)


def export_compressed_tensors(model: nn.Module, tokenizer, target: Path | str) -> Path:
    """Write ``model`` (with PackedLinear / Int8Linear layers) to the directory ``target``."""
    from compressed_tensors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from transformers.pytorch_utils import Conv1D

    from infopt.techniques.quantize.save import dequantize_model

    target = Path(target)
    layers = {n: int_weight(m) for n, m in model.named_modules()}
    layers = {n: iw for n, iw in layers.items() if iw is not None}
    if not layers:
        raise ExportError(
            "compressed-tensors export needs a quantized model (technique=quantize with a weight method); "
            "this model has no quantized layers: use technique.export=hf for a float model"
        )
    groups: dict[tuple, list[str]] = {}
    for name, iw in layers.items():
        mod = model.get_submodule(name)
        if getattr(mod, "from_conv1d", False):
            raise ExportError(
                f"layer {name} is a GPT-2 Conv1D: compressed-tensors quantizes nn.Linear only (GPT-2 is not supported)"
            )
        if not iw.contiguous:
            raise ExportError(
                f"layer {name} has act-order groups (g_idx): not supported by this compressed-tensors exporter; "
                "quantize with technique.gptq_act_order=false or technique.group_size=-1"
            )
        groups.setdefault(_args_key(iw, iw.codes.shape[1]), []).append(name)
    asymmetric = any(not key[1] for key in groups)

    plain = dequantize_model(copy.deepcopy(model))  # float weights s * (c - z), exact
    for m in plain.modules():
        if isinstance(m, Conv1D):
            raise ExportError(
                "GPT-2 (Conv1D layers) is not supported by the compressed-tensors exporter; only nn.Linear models"
            )
    config_groups = {
        f"group_{i}": QuantizationScheme(
            targets=names,
            weights=QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy, group_size=group),
        )
        for i, ((bits, sym, strategy, group), names) in enumerate(groups.items())
    }
    qconfig = QuantizationConfig(config_groups=config_groups, quantization_status="frozen")
    apply_quantization_config(plain, qconfig, show_progress=False)
    with torch.no_grad():
        for name, iw in layers.items():
            mod = plain.get_submodule(name)
            mod.weight_scale.data.copy_(
                torch.from_numpy(iw.scales).to(mod.weight_scale.dtype).reshape(mod.weight_scale.shape)
            )
            zp = torch.from_numpy(iw.zeros - 2 ** (iw.bits - 1))  # signed zero point; 0 when symmetric
            if hasattr(mod, "weight_zero_point"):
                mod.weight_zero_point.data.copy_(
                    zp.to(mod.weight_zero_point.dtype).reshape(mod.weight_zero_point.shape)
                )
    fmt = "int-quantized" if asymmetric else "pack-quantized"
    compressor = ModelCompressor.from_pretrained_model(plain, quantization_format=fmt)
    compressor.compress_model(plain)
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
