"""``technique=quantize``: the model under study, quantized; what it costs and what it saves.

The methods live in their own modules (rtn, gptq, awq, smoothquant, llm_int8, dynamic); this class
optionally rotates the residual stream first (``rotate.py``, QuaRot: folded into the weights, so
every method and export sees a plain model), picks the layers, runs the method through the
``METHODS`` table, chooses the execution
(``simulated``: de-quantized floats, quality only; ``real``: packed weights / int8 kernels) and
writes the packed model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infopt.console import progress
from infopt.errors import ConfigError
from infopt.techniques.base import Applied, Technique
from infopt.techniques.quantize.config import W8A8_METHODS, QuantizeConfig

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext
    from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec

log = logging.getLogger(__name__)

SIMULATED_WEIGHTS_NOTE = (
    "simulated: weights rounded and de-quantized to float; stored size and speed are those of the float model"
)
PACKED_NOTE = (
    "real: weights stored packed at their bit width with float16 scales; no low-bit matmul kernel on CPU, "
    "so each forward unpacks and de-quantizes (size is real, speed is not expected to improve)"
)


@dataclass
class Outcome:
    """What one method did: the model, the codes of weight-only methods, numbers and notes."""

    model: nn.Module
    qweights: dict[str, QuantizedWeight] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    library_modules: bool = False  # layers owned by another library: no packed export


Layers = dict[str, tuple["nn.Module", "QuantSpec"]]


# --- the methods ------------------------------------------------------------------------------------


def _calibration(model: nn.Module, c: QuantizeConfig, ctx: RunContext):
    from infopt.calibration import LayerwiseRunner

    tokens = ctx.data.calibration_blocks(c.calibration_samples, c.calibration_seq_len)  # (count, seq_len)
    return LayerwiseRunner(model, tokens, c.calibration_batch_size)


def _rtn(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    from infopt.techniques.quantize.rtn import quantize_rtn

    return Outcome(model, quantize_rtn(layers))


def _gptq(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    from infopt.techniques.quantize.gptq import quantize_gptq

    runner = _calibration(model, c, ctx)
    qweights, losses = quantize_gptq(
        runner, layers, c.gptq_damp, c.gptq_block_size, c.gptq_act_order, progress, c.gptq_static_groups
    )
    metrics = {"gptq_mean_layer_loss": sum(losses.values()) / len(losses)} if losses else {}
    return Outcome(model, qweights, metrics)


def _awq(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    from infopt.techniques.quantize.awq import quantize_awq

    qweights, stats = quantize_awq(_calibration(model, c, ctx), layers, c.awq_grid, c.awq_max_tokens, progress)
    return Outcome(model, qweights, stats)


def _smoothquant(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    from infopt.techniques.quantize.smoothquant import smooth_model

    groups = smooth_model(_calibration(model, c, ctx), c.smoothquant_alpha, progress)
    to_int8(model, list(layers), c.act_granularity, outliers=None, real=c.execution == "real")
    return Outcome(model, metrics={"smoothquant_groups": float(groups)})


def _llm_int8(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    if c.execution == "real" and ctx.device.type == "cuda":
        from infopt.techniques.quantize.llm_int8 import to_bitsandbytes

        to_bitsandbytes(model, list(layers), c.llm_int8_threshold)
        note = "LLM.int8 on bitsandbytes' CUDA kernels (not verified on a GPU in this project's docs)"
        return Outcome(model, notes=[note], library_modules=True)
    to_int8(model, list(layers), "per_token", outliers=c.llm_int8_threshold, real=c.execution == "real")
    tokens = ctx.data.calibration_blocks(2, min(ctx.data.cfg.seq_len, 256)).to(ctx.device)
    return Outcome(model, metrics={"llm_int8_outlier_fraction": outlier_fraction(model, tokens, c.llm_int8_threshold)})


def _dynamic_int8(model: nn.Module, layers: Layers, c: QuantizeConfig, ctx: RunContext) -> Outcome:
    from infopt.techniques.quantize import dynamic

    names = list(layers)
    if c.dynamic_backend == "int_mm":
        to_int8(model, names, c.act_granularity, outliers=None, real=c.execution == "real")
        return Outcome(model)
    if c.dynamic_backend == "torch_ao":
        note = "torch.ao quantize_dynamic: per-channel int8 weights, per-tensor dynamic activation scales (x86/fbgemm kernels)"
        return Outcome(dynamic.torch_ao_dynamic(model, names), notes=[note], library_modules=True)
    model = dynamic.torchao_quantize(model, names, c.dynamic_backend, c.group_size)
    done = dynamic.converted_layers(model, names)
    notes = [f"torchao {c.dynamic_backend}: bench/stored_mb counts its tensor subclasses by their inner integer data and scales"]
    if len(done) < len(names):
        notes.append(
            f"torchao left {len(names) - len(done)}/{len(names)} layers in float (shapes its kernel does not take): "
            f"{sorted(set(names) - set(done))[:5]}"
        )
    return Outcome(model, metrics={"layers_quantized": float(len(done))}, notes=notes, library_modules=True)


METHODS = {
    "rtn": _rtn,
    "gptq": _gptq,
    "awq": _awq,
    "smoothquant": _smoothquant,
    "llm_int8": _llm_int8,
    "dynamic_int8": _dynamic_int8,
}


# --- layer replacement ----------------------------------------------------------------------------------


def to_int8(model: nn.Module, names: list[str], act_granularity: str, outliers: float | None, real: bool) -> None:
    """Replace the named layers by ``Int8Linear`` (int8 GEMM when ``real``, else its float reference)."""
    from transformers.pytorch_utils import Conv1D

    from infopt.models.surgery import get_weight, replace_module
    from infopt.techniques.quantize.modules import Int8Linear

    for name in names:
        mod = model.get_submodule(name)
        new = Int8Linear(
            get_weight(mod), mod.bias, act_granularity=act_granularity, outlier_threshold=outliers,
            kernel="int_mm" if real else "reference",
        )  # fmt: skip
        new.from_conv1d = isinstance(mod, Conv1D)
        replace_module(model, name, new.to(mod.weight.device))


def to_packed(model: nn.Module, qweights: dict[str, QuantizedWeight], layers: Layers) -> nn.Module:
    """Replace each quantized layer by a ``PackedLinear`` holding its codes."""
    from transformers.pytorch_utils import Conv1D

    from infopt.models.surgery import replace_module
    from infopt.techniques.quantize.modules import PackedLinear

    for name, qw in qweights.items():
        mod = layers[name][0]
        new = PackedLinear(qw, mod.bias)
        new.from_conv1d = isinstance(mod, Conv1D)
        replace_module(model, name, new.to(mod.weight.device))
    return model


def int8_kernel_notes(model: nn.Module, device_type: str) -> list[str]:
    """How this project's Int8Linear layers run on this device's int8 GEMM (none: no note)."""
    from infopt.techniques.quantize.modules import CUDA_INT_MM_MIN_ROWS, INT8_DOT_FLAGS, Int8Linear, cpu_has_int8_dot

    layers = [m for m in model.modules() if isinstance(m, Int8Linear) and m.kernel == "int_mm"]
    if not layers:
        return []
    if device_type != "cuda":
        if cpu_has_int8_dot():
            return []
        return [
            f"this CPU has no int8 dot-product instructions ({', '.join(INT8_DOT_FLAGS)}), where torch._int_mm is "
            "much slower than float32: the int8 layers multiply their int8 codes in float32 (same results, int8 "
            "weights in memory, no int8 speedup)"
        ]
    notes = [
        f"CUDA torch._int_mm needs more than 16 rows: matmuls of fewer rows (decode at batch 1 and 8) are "
        f"zero-padded to {CUDA_INT_MM_MIN_ROWS} rows (exact; the padded rows are computed and dropped)"
    ]
    floats = sum(not m.int_mm_on_cuda() for m in layers)
    if floats:
        notes.append(
            f"{floats}/{len(layers)} int8 layers have K or N not a multiple of 8: CUDA's int8 GEMM rejects them, "
            "so they multiply their int8 codes in float32 (same result, no int8 speedup)"
        )
    return notes


def outlier_fraction(model: nn.Module, tokens, threshold: float) -> float:
    """Share of ``Int8Linear`` input columns holding any |x| above ``threshold`` (LLM.int8's float path)."""
    import torch

    from infopt.calibration import input_hooks
    from infopt.techniques.quantize.modules import Int8Linear

    counts = [0, 0]

    def count(_name: str, x: torch.Tensor) -> None:
        counts[0] += int((x.abs() > threshold).any(dim=0).sum())
        counts[1] += x.shape[1]

    int8 = {n: m for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    with torch.no_grad(), input_hooks(int8, count):
        model(input_ids=tokens)
    return counts[0] / max(counts[1], 1)


def _layer_widths(cfg: InfoptConfig) -> dict[str, int] | None:
    """Input width of every Linear/Conv1D of the model under study, from its config (None: unknown)."""
    from infopt.models.load import architecture_config
    from infopt.models.surgery import layer_input_widths, meta_model

    cache_dir = Path(cfg.paths.cache_dir) if isinstance(cfg.paths.cache_dir, str) else None
    # Cached per model config: a sweep's precheck asks once per combination, and a meta model takes seconds.
    key = (repr(cfg.model), str(cache_dir))
    if key not in _WIDTHS:
        config = architecture_config(cfg.model, cache_dir)
        _WIDTHS[key] = None if config is None else layer_input_widths(meta_model(config))
    return _WIDTHS[key]


_WIDTHS: dict[tuple[str, str], dict[str, int] | None] = {}


# --- the technique ------------------------------------------------------------------------------------


class Quantize(Technique):
    """Weight (and activation) quantization; see ``QuantizeConfig`` for the methods and knobs."""

    needs_data = True
    config: QuantizeConfig

    @property
    def keeps_float_weights(self) -> bool:  # type: ignore[override]
        """Simulated quantization leaves rounded float weights a later stage may change; real kernels do not."""
        return self.config.execution != "real"

    def check(self, cfg: InfoptConfig) -> None:
        c = self.config
        if c.execution == "real" and c.export == "hf":
            raise ConfigError(
                "technique.export=hf with technique.execution=real: packed layers do not load with plain from_pretrained; "
                "use technique.execution=simulated for export=hf, or keep export=none (the packed export is written to <run>/quantized)"
            )
        if c.method == "dynamic_int8" and c.dynamic_backend != "int_mm" and c.execution != "real":
            raise ConfigError(
                f"technique.dynamic_backend={c.dynamic_backend} runs only as technique.execution=real (int_mm also has a simulated path)"
            )
        if c.method == "dynamic_int8" and c.dynamic_backend == "torchao_int4" and cfg.hardware.accelerator == "cpu":
            raise ConfigError(
                "technique.dynamic_backend=torchao_int4 has no CPU kernel in this install (torchao's Int4WeightOnlyConfig needs mslk); "
                "use hardware=gpu, or technique.method=gptq technique.bits=4 technique.execution=real for packed int4 on CPU"
            )
        if c.method == "dynamic_int8" and c.dynamic_backend == "torchao_int4":
            from infopt.techniques.quantize.dynamic import INT4_GROUP_SIZES, int4_group_size

            g = int4_group_size(c.group_size)
            if g not in INT4_GROUP_SIZES:
                raise ConfigError(
                    f"technique.group_size={c.group_size} with technique.dynamic_backend=torchao_int4: "
                    f"the int4 kernel takes group sizes {list(INT4_GROUP_SIZES)} (or -1 for 128)"
                )
            if cfg.model.dtype != "bfloat16":
                raise ConfigError(
                    f"technique.dynamic_backend=torchao_int4 packs bfloat16 weights for its CUDA kernel; "
                    f"model.dtype={cfg.model.dtype}: set model.dtype=bfloat16"
                )
            widths = _layer_widths(cfg)
            if widths is not None:
                from dataclasses import replace

                from infopt.techniques.quantize.core import check_group_sizes

                check_group_sizes(widths, replace(c, group_size=g))
        if c.method == "llm_int8" and c.execution == "real" and cfg.hardware.accelerator == "gpu":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(
                    "technique.method=llm_int8 with hardware=gpu and execution=real needs bitsandbytes; pip install bitsandbytes (or use hardware=cpu)"
                )
        self._check_group_sizes(cfg)
        self._check_rotation(cfg)

    def _check_rotation(self, cfg: InfoptConfig) -> None:
        """Architecture and width against technique.rotate, from the config alone (no weights loaded)."""
        c = self.config
        if c.rotate == "none":
            return
        from infopt.models.load import architecture_config
        from infopt.models.surgery import hidden_size
        from infopt.techniques.quantize.rotate import check_rotatable, hadamard_factors

        cache_dir = Path(cfg.paths.cache_dir) if isinstance(cfg.paths.cache_dir, str) else None
        config = architecture_config(cfg.model, cache_dir)
        if config is None:  # unknown offline: rotate_model checks the loaded model
            return
        check_rotatable(config)
        width = hidden_size(config)
        if c.rotate == "hadamard" and hadamard_factors(width) is None:
            raise ConfigError(
                f"technique.rotate=hadamard: no Hadamard matrix of order {width} (the model's width) is built here "
                "(powers of two times a Paley order 12, 20, 28, 36, ...); use technique.rotate=block_hadamard"
            )

    def _check_group_sizes(self, cfg: InfoptConfig) -> None:
        """Group sizes against the layer widths, from the config alone (no weights loaded)."""
        c = self.config
        if not any(g > 0 for g in c.group_sizes()) or c.method in W8A8_METHODS:
            return
        widths = _layer_widths(cfg)
        if widths is not None:
            from infopt.techniques.quantize.core import check_group_sizes

            check_group_sizes(widths, c)

    def _rotate(self, model: nn.Module) -> tuple[dict[str, float], list[str]]:
        """technique.rotate folded into the weights (metrics, notes); nothing when it is ``none``."""
        c = self.config
        if c.rotate == "none":
            return {}, []
        from infopt.bench.timing import timed
        from infopt.techniques.quantize.rotate import rotate_model

        done, seconds = timed(lambda: rotate_model(model, c.rotate, c.rotate_seed))
        return {"rotated": 1.0, "rotate_untied_head": float(done.untied), "rotate_wall_s": seconds}, [done.note()]

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        import torch

        from infopt.bench.measure import PeakMemory

        c = self.config
        rotation, rotation_notes = self._rotate(model)  # before the targets: the quantizer sees a plain model
        layers = self._targets(model)
        t0 = time.perf_counter()
        with torch.no_grad(), PeakMemory(ctx.device) as mem:
            out = METHODS[c.method](model, layers, c, ctx)
        metrics: dict[str, float] = {"layers_quantized": float(len(layers)), **rotation, **out.metrics}  # a method may count fewer
        metrics["quantize_wall_s"] = time.perf_counter() - t0
        # Whole-process peak (model, calibration activations, Hessians) while the method ran.
        metrics["quantize_peak_memory_mb"] = mem.peak / 2**20
        model, notes = out.model, rotation_notes + list(out.notes)
        if c.execution == "real":
            notes.extend(int8_kernel_notes(model, ctx.device.type))
        if out.qweights is not None:  # weight-only methods: floats now hold the de-quantized weights
            if c.execution == "real":
                model = to_packed(model, out.qweights, layers)
            notes.append(PACKED_NOTE if c.execution == "real" else SIMULATED_WEIGHTS_NOTE)
            bits = [layers[n][1].bits for n in out.qweights]
            metrics["mean_weight_bits"] = sum(bits) / len(bits)
        elif c.execution == "simulated":
            notes.append("simulated: int8 arithmetic reproduced in float (reference kernel); no size or speed claim")
        artifacts = self._write_packed(model, out, ctx, metrics, notes)
        return Applied(model=model, execution=c.execution, metrics=metrics, notes=notes, artifacts=artifacts)

    def _targets(self, model: nn.Module) -> Layers:
        from infopt.models.surgery import layer_input_widths
        from infopt.techniques.quantize.core import check_group_sizes, find_layers

        c = self.config
        if c.method not in W8A8_METHODS:
            check_group_sizes(layer_input_widths(model), c)
        layers = find_layers(model, c)
        if not layers:
            raise ConfigError(f"technique.ignore={list(c.ignore)} leaves no Linear/Conv1D layer to quantize")
        return layers

    def _write_packed(
        self, model: nn.Module, out: Outcome, ctx: RunContext, metrics: dict[str, Any], notes: list[str]
    ) -> dict[str, str]:
        """The packed codes and scales in ``<run>/quantized`` (read back by the exporters)."""
        c = self.config
        if not c.export_packed:
            return {}
        if out.library_modules:
            notes.append(f"packed export not written for {c.method}/{c.dynamic_backend} (library-owned modules)")
            return {}
        from infopt.techniques.quantize.save import save_quantized

        target = save_quantized(
            model, ctx.output_dir / "quantized", qweights=out.qweights if c.execution == "simulated" else None,
            method=c.method, tokenizer=ctx.tokenizer,
        )  # fmt: skip
        metrics["export_mb"] = sum(f.stat().st_size for f in target.iterdir() if f.suffix == ".safetensors") / 2**20
        return {"quantized": str(target)}
