"""Attention kernel choice: eager, SDPA (with a selectable PyTorch backend) or FlashAttention-2.

Eager attention materialises the (B, H, T, T) score matrix; SDPA calls PyTorch's fused
``scaled_dot_product_attention`` (the math backend is the reference, the flash/efficient backends
tile the computation in the manner of FlashAttention, Dao et al. 2022, so memory stays linear in T);
``flash_attention_2`` is the CUDA kernel of Dao (2023) from the ``flash-attn`` package (GPU only,
not verified here). The weights are untouched: outputs must match eager attention within float
tolerance, which ``apply`` checks before it sweeps latency and memory over context lengths.
"""

from __future__ import annotations

import logging
import statistics
from typing import TYPE_CHECKING

import torch

from infopt.bench.measure import PeakMemory
from infopt.bench.timing import timed
from infopt.errors import ConfigError
from infopt.models.surgery import context_length, model_device
from infopt.techniques.architecture.common import cached_forward, resolve_lengths, tokens_of_length
from infopt.techniques.architecture.config import AttentionConfig
from infopt.techniques.base import Applied, Technique

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)
MB = 2**20
_BACKENDS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
_ALIASES = {"math": "math", "flash": "fa", "efficient": "memeff", "cudnn": "cudnn"}
_GPU_ONLY = ("efficient", "cudnn")


def _supports_gqa(backend: str, device: torch.device) -> bool:
    """Whether SDPA's ``backend`` takes fewer K/V heads than query heads (``enable_gqa``): the CUDA
    memory-efficient kernel and the CPU flash kernel do not (ATen sdp_utils: supports GQA = false)."""
    return not (backend == "efficient" or (backend == "flash" and device.type == "cpu"))


def sdpa_implementation_name(backend: str) -> str:
    """Register (once) an attention function that runs SDPA pinned to ``backend``; return its name.

    transformers dispatches attention by name through ``AttentionInterface``; a pinned variant is
    the stock SDPA forward inside ``torch.nn.attention.sdpa_kernel`` (which raises, rather than
    silently falling back, when the backend cannot run these inputs).
    """
    if backend == "auto":
        return "sdpa"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    # transformers treats any name containing "flash" as a FlashAttention kernel: avoid the word.
    name = f"infopt_sdpa_{_ALIASES[backend]}"
    if name not in AttentionInterface._global_mapping:
        kernel = getattr(SDPBackend, _BACKENDS[backend])

        def forward(module, query, key, value, *args, **kwargs):
            groups = getattr(module, "num_key_value_groups", 1)
            if groups > 1 and not _supports_gqa(backend, query.device):
                # transformers hands grouped K/V heads to SDPA with enable_gqa=True, which this kernel
                # rejects: give it one K/V head per query head, as eager attention does.
                from transformers.integrations.sdpa_attention import repeat_kv

                key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # (B, H_q, T, D)
                module.num_key_value_groups = 1
                try:
                    with sdpa_kernel(kernel):
                        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)
                finally:
                    module.num_key_value_groups = groups
            with sdpa_kernel(kernel):
                return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, sdpa_mask)
    return name


def setting_name(implementation: str, backend: str = "auto") -> str:
    return implementation if implementation != "sdpa" or backend == "auto" else f"sdpa:{backend}"


def set_attention(model: nn.Module, setting: str) -> None:
    """Switch a loaded model to ``setting`` (eager | sdpa | sdpa:<backend> | flash_attention_2) in place."""
    impl, _, backend = setting.partition(":")
    name = sdpa_implementation_name(backend or "auto") if impl == "sdpa" else impl
    model.set_attn_implementation(name)


def unavailable(setting: str, device: torch.device) -> str | None:
    """Why ``setting`` cannot run on ``device`` (None if it can)."""
    impl, _, backend = setting.partition(":")
    if impl == "flash_attention_2":
        if device.type != "cuda":
            return "flash_attention_2 needs a CUDA GPU"
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            return "flash_attention_2 needs the flash-attn package (pip install flash-attn)"
    if backend in _GPU_ONLY and device.type != "cuda":
        return f"SDPA backend {backend} has no CPU kernel in PyTorch"
    return None


@torch.inference_mode()
def logits_diff(model: nn.Module, setting: str, reference: str, ids: torch.Tensor) -> float:
    """max |logits(setting) - logits(reference)| over one block (1, T); leaves the model on ``setting``."""
    set_attention(model, reference)
    ref = model(input_ids=ids).logits.float()  # (1, T, V)
    set_attention(model, setting)
    out = model(input_ids=ids).logits.float()
    return float((out - ref).abs().max())


@torch.inference_mode()
def sweep_point(
    model: nn.Module, ids: torch.Tensor, decode_tokens: int, repeats: int
) -> dict[str, float]:
    """Prefill ``ids`` (1, T) into a fresh cache, then ``decode_tokens`` single-token steps on it.

    Timed directly with forward calls (no generate() overhead) so the number is the kernel's cost
    at this context; working memory = peak RSS (CPU) or peak allocation (CUDA) above the start.
    """
    device = model_device(model)
    prefill_s, decode_s, working = [], [], []
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            (logits, cache), seconds = timed(lambda: cached_forward(model, ids), device)
            prefill_s.append(seconds)
            state = {"cache": cache, "token": logits[:, -1:].argmax(-1)}  # token (1, 1)
            del logits, cache

            def steps(state=state):
                for _ in range(decode_tokens):
                    logits, state["cache"] = cached_forward(model, state["token"], state["cache"])
                    state["token"] = logits[:, -1:].argmax(-1)

            decode_s.append(timed(steps, device)[1] / decode_tokens)
            del state
        working.append((mem.peak - mem.start) / MB)
    prefill, decode = statistics.median(prefill_s), statistics.median(decode_s)
    return {
        "prefill_ms": 1e3 * prefill,
        "prefill_tokens_per_s": ids.shape[1] / prefill,
        "decode_ms_per_token": 1e3 * decode,
        "decode_tokens_per_s": 1 / decode,
        "working_memory_mb": max(working),
    }


class Attention(Technique):
    """Run the model with another attention kernel; sweep its cost over context lengths."""


    def check(self, cfg: InfoptConfig) -> None:
        c: AttentionConfig = self.config  # type: ignore[assignment]
        if cfg.hardware.accelerator == "gpu":
            return  # the package/kernel checks run in apply, on the real device
        why = unavailable(setting_name(c.implementation, c.sdpa_backend), torch.device("cpu"))
        if why:
            raise ConfigError(
                f"technique.implementation={setting_name(c.implementation, c.sdpa_backend)}: {why}; on this machine use eager or sdpa (sdpa_backend=math|flash)"
            )

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        c: AttentionConfig = self.config  # type: ignore[assignment]
        device = model_device(model)
        chosen = setting_name(c.implementation, c.sdpa_backend)
        why = unavailable(chosen, device)
        if why:
            raise ConfigError(f"technique.implementation={chosen}: {why}")
        notes: list[str] = []
        settings = [chosen]
        for s in c.compare:
            reason = unavailable(s, device)
            if reason:
                notes.append(f"{s} skipped: {reason}")
            elif s not in settings:
                settings.append(s)
        # Same outputs: logits of each setting against eager on one held-out block.
        block = tokens_of_length(ctx.data.heldout_stream, min(256, context_length(model.config))).to(device)
        metrics = {f"max_abs_logit_diff_vs_eager/{s}": logits_diff(model, s, "eager", block) for s in settings if s != "eager"}
        diff = metrics.get(f"max_abs_logit_diff_vs_eager/{chosen}", 0.0)
        metrics["logits_match_eager"] = float(diff <= c.logit_tolerance)
        if diff > c.logit_tolerance:
            notes.append(f"{chosen}: logits differ from eager by up to {diff:.3g} (> tolerance {c.logit_tolerance:g})")
        rows = self._sweep(model, settings, ctx.data.heldout_stream, metrics, notes)
        set_attention(model, chosen)
        notes.append(f"attention runs as {chosen} (config: {model.config._attn_implementation}); weights unchanged")
        return Applied(model=model, execution="dense", metrics=metrics, notes=notes,
                       tables={"sweep": {"columns": SWEEP_COLUMNS, "rows": rows}})  # fmt: skip

    def _sweep(self, model: nn.Module, settings: list[str], stream, metrics: dict, notes: list[str]) -> list[list]:
        """Cost over context lengths: every setting at every length."""
        c: AttentionConfig = self.config  # type: ignore[assignment]
        rows = []
        for s in settings:
            set_attention(model, s)
            for n in resolve_lengths(model, c.context_lengths):
                ids = tokens_of_length(stream, n).to(model_device(model))
                try:
                    point = sweep_point(model, ids, c.decode_tokens, c.repeats)
                except (RuntimeError, MemoryError) as err:  # e.g. out of memory at the maximum context
                    notes.append(f"{s} at {n} tokens failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
                    continue
                log.info("attention %s ctx=%d: %s", s, n, point)
                rows.append([s, n, *(round(point[k], 3) for k in SWEEP_COLUMNS[2:])])
                metrics.update({f"{k}/{s}/ctx{n}": v for k, v in point.items()})
        return rows


SWEEP_COLUMNS = ["attention", "context", "prefill_ms", "prefill_tokens_per_s", "decode_ms_per_token",
                 "decode_tokens_per_s", "working_memory_mb"]  # fmt: skip
