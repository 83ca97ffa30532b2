"""``technique=quantize``: the model under study, quantized; what it costs and what it saves.

The methods live in their own modules (rtn, gptq, awq, smoothquant, llm_int8, dynamic); this
class picks the layers, runs the method, chooses the execution (``simulated``: de-quantized
floats, quality only; ``real``: packed weights / int8 kernels) and exports the packed model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infopt.errors import ConfigError
from infopt.techniques.base import Applied, Technique
from infopt.techniques.quantize.config import W8A8_METHODS, QuantizeConfig

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig, ModelConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)

# SmolLM2-135M's shape, for checks before the embedded checkpoint is converted.
_SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def architecture_config(cfg: ModelConfig, cache_dir: Path | None):
    """The transformers config of the model under study, without loading weights (None: unknown)."""
    from transformers import AutoConfig, LlamaConfig

    if cfg.source == "tiny":
        from infopt.models.tiny import tiny_config

        return tiny_config(cfg.tiny, vocab_size=256)
    if cfg.source == "embedded":
        if cache_dir is not None:
            from infopt.models.embedded import CACHE_NAME

            cached = Path(cache_dir).expanduser() / "models" / CACHE_NAME / "config.json"
            if cached.is_file():
                return AutoConfig.from_pretrained(str(cached.parent))
        return LlamaConfig(**_SMOLLM2)
    try:
        return AutoConfig.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except Exception:  # not cached and offline: the runtime check in apply() catches it
        return None


def layer_input_widths_of(config) -> dict[str, int]:
    """Input width of every Linear/Conv1D by name, from a meta-device model (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from infopt.techniques.quantize.core import layer_input_widths

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return layer_input_widths(model)


class Quantize(Technique):
    """Weight (and activation) quantization; see ``QuantizeConfig`` for the methods and knobs."""

    config_class = QuantizeConfig
    needs_data = True
    keeps_float_weights = False

    def check(self, cfg: InfoptConfig) -> None:
        c: QuantizeConfig = self.config  # type: ignore[assignment]
        if c.execution == "real" and c.export == "hf":
            raise ConfigError(
                "technique.export=hf with technique.execution=real: packed layers do not load with plain from_pretrained; "
                "use technique.execution=simulated for export=hf, or keep export=none (the packed export is written to <run>/quantized)"
            )
        if c.method == "dynamic_int8" and c.dynamic_backend != "int_mm" and c.execution != "real":
            raise ConfigError(
                f"technique.dynamic_backend={c.dynamic_backend} runs only as technique.execution=real (int_mm also has a simulated path)"
            )
        if (
            c.method == "dynamic_int8"
            and c.dynamic_backend == "torchao_int4"
            and cfg.hardware.accelerator == "cpu"
        ):
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
            config = architecture_config(
                cfg.model,
                Path(cfg.paths.cache_dir) if isinstance(cfg.paths.cache_dir, str) else None,
            )
            if config is not None:
                from dataclasses import replace

                from infopt.techniques.quantize.core import check_group_sizes

                check_group_sizes(layer_input_widths_of(config), replace(c, group_size=g))
        if c.method == "llm_int8" and c.execution == "real" and cfg.hardware.accelerator == "gpu":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(
                    "technique.method=llm_int8 with hardware=gpu and execution=real needs bitsandbytes; pip install bitsandbytes (or use hardware=cpu)"
                )
        if any(g > 0 for g in c.group_sizes()) and c.method not in W8A8_METHODS:
            config = architecture_config(
                cfg.model,
                Path(cfg.paths.cache_dir) if isinstance(cfg.paths.cache_dir, str) else None,
            )
            if config is not None:
                from infopt.techniques.quantize.core import check_group_sizes

                check_group_sizes(layer_input_widths_of(config), c)

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        import torch

        from infopt.techniques.quantize.core import (
            check_group_sizes,
            find_layers,
            layer_input_widths,
        )

        c: QuantizeConfig = self.config  # type: ignore[assignment]
        if c.method not in W8A8_METHODS:
            check_group_sizes(layer_input_widths(model), c)
        layers = find_layers(model, c)
        if not layers:
            raise ConfigError(
                f"technique.ignore={list(c.ignore)} leaves no Linear/Conv1D layer to quantize"
            )
        names = list(layers)
        notes: list[str] = []
        metrics: dict[str, float] = {"layers_quantized": float(len(layers))}
        qweights = None
        execution = c.execution
        from infopt.bench.measure import PeakMemory

        t0 = time.perf_counter()
        with torch.no_grad(), PeakMemory(ctx.device) as mem:
            if c.method == "rtn":
                from infopt.techniques.quantize.rtn import quantize_rtn

                qweights = quantize_rtn(layers)
            elif c.method == "gptq":
                from infopt.techniques.quantize.gptq import quantize_gptq

                qweights, losses = quantize_gptq(
                    self._runner(model, ctx),
                    layers,
                    c.gptq_damp,
                    c.gptq_block_size,
                    c.gptq_act_order,
                    log.info,
                )
                if losses:
                    metrics["gptq_mean_layer_loss"] = sum(losses.values()) / len(losses)
            elif c.method == "awq":
                from infopt.techniques.quantize.awq import quantize_awq

                qweights, stats = quantize_awq(
                    self._runner(model, ctx), layers, c.awq_grid, c.awq_max_tokens, log.info
                )
                metrics.update(stats)
            elif c.method == "smoothquant":
                from infopt.techniques.quantize.smoothquant import smooth_model

                metrics["smoothquant_groups"] = float(
                    smooth_model(self._runner(model, ctx), c.smoothquant_alpha)
                )
                self._int8(model, names, c, outliers=None, real=execution == "real")
            elif c.method == "llm_int8":
                if execution == "real" and ctx.device.type == "cuda":
                    from infopt.techniques.quantize.llm_int8 import to_bitsandbytes

                    to_bitsandbytes(model, names, c.llm_int8_threshold)
                    notes.append(
                        "LLM.int8 on bitsandbytes' CUDA kernels (not verified on a GPU in this project's docs)"
                    )
                else:
                    self._int8(
                        model,
                        names,
                        c,
                        outliers=c.llm_int8_threshold,
                        real=execution == "real",
                        per_token=True,
                    )
                    metrics["llm_int8_outlier_fraction"] = self._outlier_fraction(model, ctx, c)
            elif c.method == "dynamic_int8":
                if c.dynamic_backend == "int_mm":
                    self._int8(model, names, c, outliers=None, real=execution == "real")
                elif c.dynamic_backend == "torch_ao":
                    from infopt.techniques.quantize.dynamic import torch_ao_dynamic

                    model = torch_ao_dynamic(model, names)
                    notes.append(
                        "torch.ao quantize_dynamic: per-channel int8 weights, per-tensor dynamic activation scales (x86/fbgemm kernels)"
                    )
                else:
                    from infopt.techniques.quantize.dynamic import converted_layers, torchao_quantize

                    model = torchao_quantize(model, names, c.dynamic_backend, c.group_size)
                    done = converted_layers(model, names)
                    metrics["layers_quantized"] = float(len(done))
                    if len(done) < len(names):
                        notes.append(
                            f"torchao left {len(names) - len(done)}/{len(names)} layers in float (shapes its kernel does not take): "
                            f"{sorted(set(names) - set(done))[:5]}"
                        )
                    notes.append(
                        f"torchao {c.dynamic_backend}: bench/stored_mb counts its tensor subclasses by their inner "
                        "integer data and scales"
                    )
        if ctx.device.type == "cuda" and execution == "real":
            notes.extend(self._cuda_int8_notes(model))
        metrics["quantize_wall_s"] = time.perf_counter() - t0
        # Whole-process peak (model, calibration activations, Hessians) while the method ran.
        metrics["quantize_peak_memory_mb"] = mem.peak / 2**20

        if qweights is not None:  # weight-only methods: floats now hold the de-quantized weights
            if execution == "real":
                model = self._pack(model, qweights, layers)
                notes.append(
                    "real: weights stored packed at their bit width with float16 scales; no low-bit matmul kernel on CPU, "
                    "so each forward unpacks and de-quantizes (size is real, speed is not expected to improve)"
                )
            else:
                notes.append(
                    "simulated: weights rounded and de-quantized to float; stored size and speed are those of the float model"
                )
            bits = [layers[n][1].bits for n in qweights]
            metrics["mean_weight_bits"] = sum(bits) / len(bits)
        elif execution == "simulated":
            notes.append(
                "simulated: int8 arithmetic reproduced in float (reference kernel); no size or speed claim"
            )

        artifacts: dict[str, str] = {}
        library_modules = (c.method == "dynamic_int8" and c.dynamic_backend != "int_mm") or (
            c.method == "llm_int8" and execution == "real" and ctx.device.type == "cuda"
        )
        exportable = not library_modules
        if c.export_packed and exportable:
            from infopt.techniques.quantize.save import save_quantized

            target = save_quantized(
                model,
                ctx.output_dir / "quantized",
                qweights=qweights if execution == "simulated" else None,
                method=c.method,
                tokenizer=ctx.tokenizer,
            )
            artifacts["quantized"] = str(target)
            metrics["export_mb"] = (
                sum(f.stat().st_size for f in target.iterdir() if f.suffix == ".safetensors")
                / 2**20
            )
        elif c.export_packed:
            notes.append(
                f"packed export not written for {c.method}/{c.dynamic_backend} (library-owned modules)"
            )
        return Applied(
            model=model, execution=execution, metrics=metrics, notes=notes, artifacts=artifacts
        )

    # --- helpers --------------------------------------------------------------------------------

    def _runner(self, model: nn.Module, ctx: RunContext):
        from infopt.techniques.quantize.layerwise import LayerwiseRunner

        c: QuantizeConfig = self.config  # type: ignore[assignment]
        tokens = ctx.data.calibration_blocks(
            c.calibration_samples, c.calibration_seq_len
        )  # (count, seq_len)
        return LayerwiseRunner(model, tokens, c.calibration_batch_size)

    @staticmethod
    def _int8(
        model: nn.Module,
        names: list[str],
        c: QuantizeConfig,
        outliers: float | None,
        real: bool,
        per_token: bool = False,
    ) -> None:
        from transformers.pytorch_utils import Conv1D

        from infopt.techniques.quantize.core import get_weight
        from infopt.techniques.quantize.modules import Int8Linear

        for name in names:
            mod = model.get_submodule(name)
            new = Int8Linear(
                get_weight(mod),
                mod.bias,
                act_granularity="per_token" if per_token else c.act_granularity,
                outlier_threshold=outliers,
                kernel="int_mm" if real else "reference",
            )
            new.from_conv1d = isinstance(mod, Conv1D)
            replace_module(model, name, new.to(mod.weight.device))

    @staticmethod
    def _cuda_int8_notes(model: nn.Module) -> list[str]:
        """How this project's Int8Linear layers meet CUDA's int8 GEMM limits (none: no note)."""
        from infopt.techniques.quantize.modules import CUDA_INT_MM_MIN_ROWS, Int8Linear

        layers = [m for m in model.modules() if isinstance(m, Int8Linear) and m.kernel == "int_mm"]
        if not layers:
            return []
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

    @staticmethod
    def _pack(model: nn.Module, qweights, layers) -> nn.Module:
        from transformers.pytorch_utils import Conv1D

        from infopt.techniques.quantize.modules import PackedLinear

        for name, qw in qweights.items():
            mod = layers[name][0]
            new = PackedLinear(qw, mod.bias)
            new.from_conv1d = isinstance(mod, Conv1D)
            replace_module(model, name, new.to(mod.weight.device))
        return model

    @staticmethod
    def _outlier_fraction(model: nn.Module, ctx: RunContext, c: QuantizeConfig) -> float:
        """Share of input columns that took the float path, over a few calibration sequences."""
        import torch

        from infopt.techniques.quantize.modules import Int8Linear

        counts = [0, 0]

        def hook(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            counts[0] += int((x.abs() > c.llm_int8_threshold).any(dim=0).sum())
            counts[1] += x.shape[1]

        handles = [
            m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, Int8Linear)
        ]
        try:
            with torch.no_grad():
                model(
                    input_ids=ctx.data.calibration_blocks(2, min(ctx.data.cfg.seq_len, 256)).to(
                        ctx.device
                    )
                )
        finally:
            for h in handles:
                h.remove()
        return counts[0] / max(counts[1], 1)
