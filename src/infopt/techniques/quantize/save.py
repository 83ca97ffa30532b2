"""Save a quantized model as packed weights + scales (safetensors) and load it back.

Layout of the directory: ``config.json`` (the transformers config), ``model.safetensors`` (every
tensor; quantized layers as their packed codes, float16 scales and packed zero points, or int8
weights and scales), ``quantization.json`` (format, method, and per layer: kind, bits, groups,
shapes). ``load_quantized`` rebuilds the architecture from the config, puts a ``PackedLinear`` or
``Int8Linear`` where the file says, and loads the tensors; ``dequantize=True`` gives a plain float
model instead (which ``save_pretrained`` can then write for plain ``from_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from infopt.io import atomic_dir
from infopt.models.surgery import replace_module, set_weight
from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec
from infopt.techniques.quantize.modules import Int8Linear, PackedLinear

FORMAT = "infopt-quantized"
VERSION = 1


def _layer_entry(module: nn.Module, conv1d: bool) -> dict:
    if isinstance(module, PackedLinear):
        return {
            "kind": "packed",
            "bits": module.bits,
            "group_size": module.group_size,
            "symmetric": module.symmetric,
            "in": module.in_features,
            "out": module.out_features,
            "n_groups": module.n_groups,
            "g_idx": module.g_idx is not None,
            "bias": module.bias is not None,
            "conv1d": conv1d,
        }
    if isinstance(module, Int8Linear):
        return {
            "kind": "int8",
            "in": module.in_features,
            "out": module.out_features,
            "bias": module.bias is not None,
            "act_granularity": module.act_granularity,
            "outlier_threshold": module.outlier_threshold,
            "kernel": module.kernel,
            "conv1d": conv1d,
        }
    raise TypeError(type(module))


def save_quantized(
    model: nn.Module,
    target: Path | str,
    qweights: dict[str, QuantizedWeight] | None = None,
    method: str = "",
    tokenizer=None,
) -> Path:
    """Write ``model`` packed. Layers already PackedLinear/Int8Linear are saved as they are;
    layers named in ``qweights`` (a simulated model's float weights) are saved as their codes."""
    from safetensors.torch import save_file

    target = Path(target)
    qweights = qweights or {}
    state = {k: v for k, v in model.state_dict().items()}
    layers: dict[str, dict] = {}
    conv1d_names = {n for n, m in model.named_modules() if isinstance(m, Conv1D)}
    for name, module in model.named_modules():
        if isinstance(module, (PackedLinear, Int8Linear)):
            layers[name] = _layer_entry(module, conv1d=bool(getattr(module, "from_conv1d", False)))
    for name, qw in qweights.items():
        if name in layers:
            continue
        mod = model.get_submodule(name)
        packed = PackedLinear(qw, getattr(mod, "bias", None))
        state.pop(f"{name}.weight")
        state.pop(f"{name}.bias", None)
        for k, v in packed.state_dict().items():
            state[f"{name}.{k}"] = v
        layers[name] = _layer_entry(packed, conv1d=name in conv1d_names)
    # Tied weights are one tensor: save it once (load re-ties them).
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for k, v in state.items():
        ptr = v.data_ptr() if v.numel() else id(v)
        if ptr in seen:
            tied[k] = seen[ptr]
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous().cpu()
    with atomic_dir(target) as tmp:
        model.config.save_pretrained(tmp)
        save_file(out, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "method": method,
            "layers": layers,
            "tied": tied,
        }
        (tmp / "quantization.json").write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target


def _empty_packed(entry: dict) -> PackedLinear:
    """A PackedLinear of the right shapes, to load the file's tensors into."""
    spec = QuantSpec(entry["bits"], entry["group_size"], entry["symmetric"])
    in_f, out_f, n_groups = entry["in"], entry["out"], entry["n_groups"]
    g_idx = (
        torch.arange(in_f) // spec.group_size
        if spec.group_size > 0
        else torch.zeros(in_f, dtype=torch.long)
    )
    qw = QuantizedWeight(
        torch.zeros(out_f, in_f, dtype=torch.uint8),
        torch.ones(out_f, n_groups),
        torch.zeros(out_f, n_groups),
        g_idx,
        spec,
    )
    mod = PackedLinear(qw, torch.zeros(out_f) if entry["bias"] else None)
    if entry["g_idx"]:
        del mod.g_idx  # a plain None attribute for contiguous groups; the file holds a map
        mod.register_buffer("g_idx", torch.zeros(in_f, dtype=torch.int16))
    return mod


def load_quantized(
    path: Path | str, dequantize: bool = False, kernel: str | None = None
) -> nn.Module:
    """The model saved by ``save_quantized``; ``dequantize`` gives plain float Linear/Conv1D layers."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    meta = json.loads((path / "quantization.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} directory (format={meta.get('format')!r})")
    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_config(config)
    state = load_file(str(path / "model.safetensors"))
    for key, src in meta.get("tied", {}).items():
        state[key] = state[src]
    for name, entry in meta["layers"].items():
        if entry["kind"] == "packed":
            new = _empty_packed(entry)
        else:
            new = Int8Linear(
                torch.zeros(entry["out"], entry["in"]),
                torch.zeros(entry["out"]) if entry["bias"] else None,
                act_granularity=entry["act_granularity"],
                outlier_threshold=entry["outlier_threshold"],
                kernel=kernel or entry["kernel"],
            )
        new.from_conv1d = entry.get("conv1d", False)
        replace_module(model, name, new)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in meta.get("tied", {})]
    if unexpected or missing:
        raise ValueError(
            f"{path}: tensors do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    if dequantize:
        model = dequantize_model(model)
    return model.eval()


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace PackedLinear / Int8Linear with float Linear (or Conv1D where the layer was one)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (PackedLinear, Int8Linear)):
            w = mod.dequantized_weight()  # (out, in)
            if getattr(mod, "from_conv1d", False):
                new: nn.Module = Conv1D(mod.out_features, mod.in_features)
            else:
                new = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            set_weight(new, w)
            if mod.bias is not None:
                with torch.no_grad():
                    new.bias.copy_(mod.bias)
            replace_module(model, name, new)
    return model
