"""Shared quantizer core: scales and zero points, quantize / de-quantize, bit packing, targeted layers.

Weights are (out, in) matrices whatever the module stores (``models.surgery.get_weight``). Scales
are rounded to float16 when they are computed, so the simulated model, the packed export and its
reload use the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from infopt.models.surgery import linear_layers


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int  # -1 per output channel, 0 per tensor, g>0 groups of g input columns
    symmetric: bool

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


# --- layers ---------------------------------------------------------------------------------


def find_layers(model: nn.Module, cfg) -> dict[str, tuple[nn.Module, QuantSpec]]:
    """Targeted Linear/Conv1D layers by name with their spec; ``cfg`` is a QuantizeConfig."""
    out: dict[str, tuple[nn.Module, QuantSpec]] = {}
    for name, module in linear_layers(model).items():
        ov = cfg.layer_settings(name)
        if ov is not None and ov.skip:
            continue
        spec = QuantSpec(
            bits=ov.bits if ov is not None and ov.bits is not None else cfg.weight_bits,
            group_size=ov.group_size
            if ov is not None and ov.group_size is not None
            else cfg.group_size,
            symmetric=ov.symmetric
            if ov is not None and ov.symmetric is not None
            else cfg.symmetric,
        )
        out[name] = (module, spec)
    return out


def check_group_sizes(shapes: dict[str, int], cfg) -> None:
    """Raise ConfigError if a group size does not divide a targeted layer's input width."""
    from infopt.errors import ConfigError

    for name, in_f in shapes.items():
        ov = cfg.layer_settings(name)
        if ov is not None and ov.skip:
            continue
        g = ov.group_size if ov is not None and ov.group_size is not None else cfg.group_size
        if g > 0 and in_f % g:
            key = (
                "technique.group_size"
                if ov is None or ov.group_size is None
                else f"technique.overrides[pattern={ov.pattern!r}].group_size"
            )
            widths = sorted(set(shapes.values()))
            valid = sorted(
                {d for d in range(1, max(widths) + 1) if all(w % d == 0 for w in widths)} - {1}
            )
            raise ConfigError(
                f"{key}={g} does not divide the input width {in_f} of layer {name}; "
                f"allowed: -1 (per channel), 0 (per tensor) or a divisor of every targeted width {widths}, e.g. {valid[-6:]}"
            )


# --- quantization ---------------------------------------------------------------------------


def _fp16_round(scale: torch.Tensor) -> torch.Tensor:
    # Stored as float16: round now so simulated, packed and reloaded weights agree exactly.
    return scale.clamp(min=1e-6, max=6e4).half().float()


def qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of ``w`` (rows, k) over its k columns: (rows, 1) each.

    Asymmetric: the grid spans [min(w, 0), max(w, 0)]. Symmetric: [-absmax, absmax] with the
    zero point in the middle of the 2^bits levels (GPTQ's convention).
    """
    w = w.float()
    zero_t = torch.zeros(w.shape[0], device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zero_t)
    xmax = torch.maximum(w.max(dim=1).values, zero_t)
    if spec.symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both_zero, torch.ones_like(xmax), xmax)
    scale = _fp16_round((xmax - xmin) / spec.maxq)
    if spec.symmetric:
        zero = torch.full_like(scale, (spec.maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, spec.maxq)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq] (as float, same shape as w)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def group_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, n_groups) scales and zeros for an (out, in) weight under ``spec``."""
    out_f, in_f = w.shape
    if spec.group_size == 0:  # per tensor: one row holding everything
        s, z = qparams(w.reshape(1, -1), spec)
        return s.expand(out_f, 1).clone(), z.expand(out_f, 1).clone()
    if spec.group_size < 0:
        return qparams(w, spec)
    g = spec.group_size
    groups = w.reshape(out_f * (in_f // g), g)  # (out * n_groups, g): one row per group
    s, z = qparams(groups, spec)
    return s.reshape(out_f, in_f // g), z.reshape(out_f, in_f // g)


def default_g_idx(in_f: int, spec: QuantSpec) -> torch.Tensor:
    """Group of each input column: contiguous groups (or one group per row / tensor)."""
    if spec.group_size > 0:
        return torch.arange(in_f) // spec.group_size
    return torch.zeros(in_f, dtype=torch.long)


@dataclass
class QuantizedWeight:
    """Integer codes of an (out, in) weight and how to turn them back into floats."""

    codes: torch.Tensor  # (out, in) uint8 in [0, 2^bits - 1]
    scales: torch.Tensor  # (out, n_groups) float32 holding float16 values
    zeros: torch.Tensor  # (out, n_groups) float32 (integers)
    g_idx: torch.Tensor  # (in,) long: group of each input column
    spec: QuantSpec

    def dequantize(self) -> torch.Tensor:
        s = self.scales[:, self.g_idx]  # (out, in)
        z = self.zeros[:, self.g_idx]
        return dequantize(self.codes.float(), s, z)


def rtn_quantize(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest of an (out, in) weight."""
    w = w.float()
    scales, zeros = group_params(w, spec)
    g_idx = default_g_idx(w.shape[1], spec)
    q = quantize(w, scales[:, g_idx], zeros[:, g_idx], spec.maxq)
    return QuantizedWeight(q.to(torch.uint8), scales, zeros, g_idx, spec)


# --- bit packing ----------------------------------------------------------------------------


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 stream holding ``codes`` (any shape, values < 2^bits) at ``bits`` bits each."""
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    if 8 % bits == 0:  # 2 and 4 bits: whole codes per byte
        per = 8 // bits
        pad = (-flat.numel()) % per
        flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, per).to(torch.int32)  # (bytes, per)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        return (flat << shifts).sum(dim=1).to(torch.uint8)
    # 3, 5, 6, 7 bits: through a bit matrix
    bit_pos = torch.arange(bits, dtype=torch.uint8)
    bitm = ((flat.unsqueeze(1) >> bit_pos) & 1).reshape(-1)  # (n * bits,)
    pad = (-bitm.numel()) % 8
    bitm = torch.cat([bitm, bitm.new_zeros(pad)]).view(-1, 8).to(torch.int32)  # (bytes, 8)
    return (bitm << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: a flat uint8 tensor of ``numel`` codes."""
    if bits == 8:
        return packed[:numel].clone()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32) * bits
        vals = (packed.to(torch.int32).unsqueeze(1) >> shifts) & (2**bits - 1)  # (bytes, per)
        return vals.reshape(-1)[:numel].to(torch.uint8)
    bitm = (
        packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)
    ) & 1  # (bytes, 8)
    bitm = bitm.reshape(-1)[: numel * bits].view(numel, bits)
    return (bitm << torch.arange(bits, dtype=torch.int32)).sum(dim=1).to(torch.uint8)
