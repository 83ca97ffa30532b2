"""Dynamic int8: int8 weights, activations quantized on the fly at each forward, no calibration.

Backends: ``int_mm`` (this project's ``Int8Linear``: per-channel weights, per-token activation
scales, ``torch._int_mm``), ``torch_ao`` (``torch.ao.quantization.quantize_dynamic`` with
per-channel weights: fbgemm/x86 kernels, per-tensor activation scales), and torchao's configs
(``Int8DynamicActivationInt8WeightConfig``, ``Int8WeightOnlyConfig``, ``Int4WeightOnlyConfig``)
where their kernels exist. Dynamic activation quantization follows Jacob et al. 2018 and the
per-token scales of ZeroQuant (Yao et al. 2022); the quality problem it meets is the activation
outliers described by Dettmers et al. 2022 and Xiao et al. 2022.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(model: nn.Module, names: list[str]) -> None:
    """GPT-2's Conv1D (weight (in, out)) as an equivalent nn.Linear (weight (out, in))."""
    from infopt.models.surgery import replace_module

    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, Conv1D):
            in_f, out_f = mod.weight.shape
            lin = nn.Linear(
                in_f,
                out_f,
                bias=mod.bias is not None,
                dtype=mod.weight.dtype,
                device=mod.weight.device,
            )
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            replace_module(model, name, lin)


def torch_ao_dynamic(model: nn.Module, names: list[str]) -> nn.Module:
    """quantize_dynamic on the named layers with per-channel int8 weights (x86/fbgemm kernels)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    conv1d_to_linear(model, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        return quantize_dynamic(
            model,
            {name: per_channel_dynamic_qconfig for name in names},
            dtype=torch.qint8,
            inplace=True,
        )


INT4_GROUP_SIZES = (32, 64, 128, 256)  # the group sizes tinygemm's int4 kernel takes


def int4_group_size(group_size: int) -> int:
    """torchao int4's group size for technique.group_size (-1 or 0: its default, 128)."""
    return group_size if group_size > 0 else 128


def converted_layers(model: nn.Module, names: list[str]) -> list[str]:
    """The named layers whose weight became a tensor subclass (torchao skips a layer it cannot take)."""
    return [n for n in names if type(model.get_submodule(n).weight) not in (torch.Tensor, nn.Parameter)]


def torchao_quantize(
    model: nn.Module, names: list[str], backend: str, group_size: int
) -> nn.Module:
    """torchao's quantize_ on the named layers (Conv1D converted to Linear first)."""
    from torchao.quantization import quantize_

    conv1d_to_linear(model, names)
    wanted = set(names)
    if backend == "torchao_int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        config = Int8DynamicActivationInt8WeightConfig()
    elif backend == "torchao_int8_weight":
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        # On CUDA: PyTorch's own tinygemm kernel (aten._weight_int4pack_mm; bf16 weights, K padded to
        # 1024). torchao's default "plain" format needs the separate mslk kernels package.
        device = next(model.parameters()).device
        packing = "tile_packed_to_4d" if device.type == "cuda" else "plain"
        config = Int4WeightOnlyConfig(group_size=int4_group_size(group_size), int4_packing_format=packing)
    quantize_(
        model, config, filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn in wanted
    )
    return model
