"""Schema of ``technique=quantize`` (light: no torch import, imported at start-up).

Granularity of the weight scales is one integer, ``group_size``:
``-1`` = per output channel (one scale per row), ``0`` = per tensor, ``g > 0`` = groups of ``g``
consecutive input columns per row (``g`` must divide the input width of every targeted layer).
Layer names are matched with ``re.search`` on the module's full name (``lm_head``,
``layers\\.0\\.``, ``mlp\\.down_proj``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from infopt.config.checks import choice, in_range, non_negative, positive
from infopt.config.schema import TechniqueConfig
from infopt.errors import ConfigError

METHODS = ("rtn", "gptq", "awq", "smoothquant", "llm_int8", "dynamic_int8")
EXECUTIONS = ("simulated", "real")
# Methods whose activations are quantized too (W8A8): only 8-bit weights make sense there.
W8A8_METHODS = ("smoothquant", "llm_int8", "dynamic_int8")
DYNAMIC_BACKENDS = ("int_mm", "torch_ao", "torchao_int8", "torchao_int8_weight", "torchao_int4")
ACT_GRANULARITIES = ("per_token", "per_tensor")
BITS_RANGE = (2, 8)
# Orthogonal rotation of the residual stream folded into the weights before quantizing (QuaRot; rotate.py)
ROTATIONS = ("none", "hadamard", "block_hadamard")


@dataclass
class LayerOverride:
    """Settings for the layers whose name matches ``pattern`` (first matching override wins)."""

    pattern: str = ""  # re.search on the module name, e.g. "mlp\\.down_proj" or "layers\\.0\\."
    bits: Optional[int] = None  # None = the technique's bits
    group_size: Optional[int] = None  # None = the technique's group_size
    symmetric: Optional[bool] = None  # None = the technique's symmetric
    skip: bool = False  # true: leave these layers in float


@dataclass
class QuantizeConfig(TechniqueConfig):
    name: str = "quantize"
    method: str = "gptq"  # rtn | gptq | awq | smoothquant | llm_int8 | dynamic_int8
    bits: Optional[int] = None  # weight bits, 2..8; None = 8 for smoothquant/llm_int8/dynamic_int8, 4 otherwise
    # -1 per output channel, 0 per tensor, g>0 groups of g input columns (64 divides SmolLM2's 576 and
    # 1536, GPT-2's 768 and 3072; a divisor of every targeted width is required)
    group_size: int = 64
    symmetric: bool = (
        True  # true: zero point at the middle of the grid; false: min/max (asymmetric)
    )
    ignore: list[str] = field(
        default_factory=lambda: ["lm_head"]
    )  # layers left in float (regex search)
    overrides: list[LayerOverride] = field(default_factory=list)  # per-layer settings by pattern
    execution: str = "simulated"  # simulated (de-quantized floats: quality) | real (int kernels / packed weights)
    calibration_samples: Optional[int] = (
        None  # calibration sequences (None = data.calibration_samples)
    )
    calibration_seq_len: Optional[int] = None  # tokens per sequence (None = data.seq_len)
    calibration_batch_size: int = 8  # sequences per forward while collecting statistics
    gptq_damp: float = (
        0.01  # GPTQ: damping added to the Hessian diagonal, as a fraction of its mean
    )
    gptq_block_size: int = 128  # GPTQ: columns updated together (lazy batch updates)
    gptq_act_order: bool = True  # GPTQ: quantize columns by decreasing Hessian diagonal
    # GPTQ with act-order and groups: fix each group's scale from its contiguous columns before the
    # sweep (AutoGPTQ's static groups), so the codes keep a contiguous column -> group map that GGUF,
    # compressed-tensors and the int4 kernels store; false: scales from the error-updated columns
    gptq_static_groups: bool = True
    awq_grid: int = 20  # AWQ: points of the scale-exponent grid searched in [0, 1)
    awq_max_tokens: int = 4096  # AWQ: calibration tokens per layer used in the scale search
    smoothquant_alpha: float = (
        0.5  # SmoothQuant: migration strength (0 = none, 1 = all onto weights)
    )
    act_granularity: str = "per_token"  # W8A8 activation scales: per_token | per_tensor
    llm_int8_threshold: float = 6.0  # LLM.int8: input columns with |x| above this stay in float
    dynamic_backend: str = "int_mm"  # dynamic_int8 kernels: int_mm | torch_ao | torchao_int8 | torchao_int8_weight | torchao_int4
    export_packed: bool = True  # write packed weights + scales (safetensors) to <run>/quantized
    # Rotate the residual stream before quantizing (QuaRot), norms fused, folded into the weights:
    # none | hadamard (randomised Hadamard of the full width: Sylvester, or Paley x Sylvester as for
    # SmolLM2's 576 = 36 x 16) | block_hadamard (block-diagonal, largest power-of-two blocks). Llama-family only.
    rotate: str = "none"
    rotate_seed: int = 0  # seed of the rotation's random signs

    def layer_settings(self, name: str) -> LayerOverride | None:
        """The override for module ``name`` (None: technique defaults); skip means leave in float."""
        for pat in self.ignore:
            if re.search(pat, name):
                return LayerOverride(pattern=pat, skip=True)
        for ov in self.overrides:
            if re.search(ov.pattern, name):
                return ov
        return None

    @property
    def weight_bits(self) -> int:
        if self.bits is not None:
            return self.bits
        if self.method in W8A8_METHODS:
            return (
                4 if self.dynamic_backend == "torchao_int4" and self.method == "dynamic_int8" else 8
            )
        return 4

    def group_sizes(self) -> list[int]:
        """Every group size some layer may use."""
        return [self.group_size] + [
            ov.group_size for ov in self.overrides if ov.group_size is not None
        ]

    def validate(self) -> None:
        super().validate()
        choice("technique.method", self.method, METHODS)
        choice("technique.execution", self.execution, EXECUTIONS)
        choice("technique.act_granularity", self.act_granularity, ACT_GRANULARITIES)
        choice("technique.dynamic_backend", self.dynamic_backend, DYNAMIC_BACKENDS)
        choice("technique.rotate", self.rotate, ROTATIONS)
        if self.bits is not None:
            _bits("technique.bits", self.bits)
        _group("technique.group_size", self.group_size)
        bits = self.weight_bits
        if (
            self.method in W8A8_METHODS
            and bits != 8
            and not (self.method == "dynamic_int8" and self.dynamic_backend == "torchao_int4")
        ):
            raise ConfigError(
                f"technique.bits={bits} with technique.method={self.method}: this method quantizes to int8; set technique.bits=8 or null"
            )
        if self.method == "dynamic_int8" and self.dynamic_backend == "torchao_int4" and bits != 4:
            raise ConfigError(
                f"technique.bits={bits} with technique.dynamic_backend=torchao_int4; set technique.bits=4"
            )
        for pat in self.ignore:
            _regex("technique.ignore[]", pat)
        for i, ov in enumerate(self.overrides):
            key = f"technique.overrides[{i}]"
            if not ov.pattern:
                raise ConfigError(
                    f"{key}.pattern is empty; give a regex matched against module names, e.g. 'mlp\\.down_proj'"
                )
            _regex(f"{key}.pattern", ov.pattern)
            if ov.bits is not None:
                _bits(f"{key}.bits", ov.bits)
            if ov.group_size is not None:
                _group(f"{key}.group_size", ov.group_size)
        if self.calibration_samples is not None:
            positive("technique.calibration_samples", self.calibration_samples)
        if self.calibration_seq_len is not None:
            in_range("technique.calibration_seq_len", self.calibration_seq_len, 8, 131072)
        positive("technique.calibration_batch_size", self.calibration_batch_size)
        in_range("technique.gptq_damp", self.gptq_damp, 0.0, 1.0, lo_open=True)
        positive("technique.gptq_block_size", self.gptq_block_size)
        in_range("technique.awq_grid", self.awq_grid, 2, 1000)
        positive("technique.awq_max_tokens", self.awq_max_tokens)
        in_range("technique.smoothquant_alpha", self.smoothquant_alpha, 0.0, 1.0)
        non_negative("technique.llm_int8_threshold", self.llm_int8_threshold)
        self._check_export()

    def _check_export(self) -> None:
        """Export settings the quantized layers cannot meet (the rules ``gguf.auto_type`` and the
        compressed-tensors writer apply), caught before the model loads."""
        export, group = self.export, self.group_size
        if export not in ("gguf", "compressed_tensors") or self.method not in ("rtn", "gptq", "awq"):
            return
        if self.method == "gptq" and self.gptq_act_order and group > 0 and not self.gptq_static_groups:
            raise ConfigError(
                f"technique.export={export} with technique.method=gptq, gptq_act_order=true and group_size={group}: "
                "act-order groups permute the columns and have no block layout in this format; "
                "set technique.gptq_static_groups=true (or gptq_act_order=false, or group_size=-1)"
            )
        if export == "gguf" and self.export_type == "auto":
            if group > 0 and group % 32:
                raise ConfigError(
                    f"technique.export=gguf with technique.group_size={group}: GGUF blocks hold 32 weights, so the codes "
                    "map exactly only for a group size that is a multiple of 32 (or -1 / 0); "
                    "set technique.group_size=32 or 64, or technique.export_type=q4_0|q8_0|... to round again"
                )
            if self.weight_bits > 5 and not self.symmetric:
                raise ConfigError(
                    f"technique.export=gguf with technique.bits={self.weight_bits} asymmetric: no GGUF block type holds "
                    f"{self.weight_bits}-bit codes with a zero point; set technique.symmetric=true (Q8_0) or "
                    "technique.export_type=q8_0 to round again"
                )


def _bits(key: str, value: int) -> None:
    in_range(key, value, *BITS_RANGE)


def _group(key: str, value: int) -> None:
    if value < -1:
        raise ConfigError(
            f"{key}={value} is not valid; allowed: -1 (per output channel), 0 (per tensor) or a positive group size dividing the layers' input width"
        )


def _regex(key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{key}={pattern!r} is not a valid regular expression ({err})") from None
