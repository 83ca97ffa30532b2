"""torch.compile of the decode step, with a static KV cache (CPU included).

A decode step at batch 1 is dozens of small kernels per layer; in eager PyTorch the Python and
dispatcher overhead between them is a large part of the step on a CPU. ``torch.compile``
(TorchDynamo + Inductor, Ansel et al. 2024, "PyTorch 2") traces the step once and emits fused
kernels; a static cache gives it fixed shapes, so it compiles once instead of every step.
generate() compiles only the one-token decode call (the prefill stays eager), through its
``compile_config``; on CPU transformers needs ``_compile_all_devices`` to do so.

Reported apart: compile time (first compiled generate minus a steady one), steady-state decode
speed of eager/dynamic, static uncompiled and static compiled on the same prompts, and whether the
compiled greedy tokens equal the eager ones (a divergence only at a top-2 logit tie).
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import TYPE_CHECKING, Any

import torch

from infopt.errors import ConfigError
from infopt.techniques.base import Applied, Technique
from infopt.techniques.decode.common import divergence, eos_ids, greedy, stream_prompts, tie_tolerance, timed
from infopt.techniques.decode.config import TorchCompileConfig

if TYPE_CHECKING:
    from torch import nn

    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)


def compile_config(c: TorchCompileConfig, device: torch.device):
    """transformers' CompileConfig for generate(), allowed on CPU."""
    from transformers import CompileConfig

    cc = CompileConfig(fullgraph=c.fullgraph, dynamic=c.dynamic, backend=c.backend, mode=c.mode)
    if device.type != "cuda":
        cc._compile_all_devices = True  # transformers compiles only on accelerators unless told
    return cc


def decode_speed(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    pad: int | None,
    repeats: int,
    **kwargs: Any,
) -> float:
    """Decode tokens/s excluding prefill: (t(N) - t(1)) / (N - 1).

    Fastest of ``repeats`` runs on each side: on a shared CPU, other processes only ever add time,
    and a difference of two medians can go negative under contention.
    """
    one = min(timed(lambda: greedy(model, prompt, 1, pad, **kwargs))[1] for _ in range(repeats))
    full = min(
        timed(lambda: greedy(model, prompt, new_tokens, pad, **kwargs))[1] for _ in range(repeats)
    )
    if full <= one:
        return float(
            "nan"
        )  # contention swamped the measurement; reported as missing, never as huge
    return (new_tokens - 1) / (full - one)


class Compile(Technique):
    """Decode with a static cache and a torch.compile'd decode step."""

    config_class = TorchCompileConfig

    def check(self, cfg: InfoptConfig) -> None:
        c: TorchCompileConfig = self.config  # type: ignore[assignment]
        if c.mode == "reduce-overhead" and cfg.hardware.accelerator != "gpu":
            raise ConfigError(
                "technique.mode=reduce-overhead uses CUDA graphs and needs hardware=gpu; on CPU use default or max-autotune-no-cudagraphs"
            )
        need = cfg.bench.prompt_tokens + max(cfg.bench.new_tokens, c.check_new_tokens)
        if c.max_cache_len is not None and c.max_cache_len < need:
            raise ConfigError(
                f"technique.max_cache_len={c.max_cache_len} is shorter than bench.prompt_tokens + new tokens = {need}"
            )

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        c: TorchCompileConfig = self.config  # type: ignore[assignment]
        from infopt.techniques.decode.attention import set_attention

        device = next(model.parameters()).device
        bench = ctx.cfg.bench
        max_len = c.max_cache_len or bench.prompt_tokens + max(bench.new_tokens, c.check_new_tokens)
        # One cache length for every call: the compiled step keeps one shape and never recompiles for length.
        static = {"cache_implementation": "static", "max_cache_len": max_len}
        compiled = {**static, "compile_config": compile_config(c, device)}
        pad = ctx.tokenizer.pad_token_id
        prompts = stream_prompts(ctx.data.heldout_stream, c.check_prompts, bench.prompt_tokens)
        n = c.check_new_tokens
        metrics: dict[str, float] = {}
        notes: list[str] = []

        # Reference: greedy tokens of the model as loaded (dynamic cache, no compile).
        references = [greedy(model, p, n, pad)[0] for p in prompts]

        # Compile happens inside the first compiled generate (at its first decode step).
        _, first_s = timed(lambda: greedy(model, prompts[0], n, pad, **compiled))
        steady_s = statistics.median(
            timed(lambda: greedy(model, prompts[0], n, pad, **compiled))[1]
            for _ in range(c.repeats)
        )
        metrics["compile_s"] = max(first_s - steady_s, 0.0)

        ties = non_ties = identical = 0
        for p, ref in zip(prompts, references, strict=True):
            out = greedy(model, p, n, pad, **compiled)[0]
            d = divergence(model, p, ref, out, tie_tolerance(model), suppress=eos_ids(model))
            identical += d is None
            if d is not None:
                ties += d.tie
                non_ties += not d.tie
        metrics["greedy_identical_fraction"] = identical / len(prompts)
        metrics["greedy_divergences_at_ties"] = float(ties)
        metrics["greedy_divergences_not_ties"] = float(non_ties)
        if non_ties:
            notes.append(
                f"compiled decode: {non_ties} generation(s) differ from eager greedy at a non-tie"
            )

        # Steady-state decode speed on the same prompt, three ways, plus eager attention as the floor.
        p = prompts[0]
        r = c.repeats
        metrics["decode_tokens_per_s/compiled_static"] = decode_speed(
            model, p, n, pad, r, **compiled
        )
        metrics["decode_tokens_per_s/static"] = decode_speed(
            model, p, n, pad, r, **static, disable_compile=True
        )
        metrics["decode_tokens_per_s/dynamic"] = decode_speed(model, p, n, pad, r)
        loaded = model.config._attn_implementation
        if loaded != "eager":
            set_attention(model, "eager")
            metrics["decode_tokens_per_s/eager_attention_dynamic"] = decode_speed(
                model, p, n, pad, r
            )
            set_attention(model, loaded)
        else:
            metrics["decode_tokens_per_s/eager_attention_dynamic"] = metrics[
                "decode_tokens_per_s/dynamic"
            ]
        if any(math.isnan(v) for k, v in metrics.items() if k.startswith("decode_tokens_per_s/")):
            notes.append(
                "a decode speed could not be measured (t(N) <= t(1): CPU contention); rerun on a quiet machine"
            )
        metrics["speedup_vs_dynamic"] = (
            metrics["decode_tokens_per_s/compiled_static"] / metrics["decode_tokens_per_s/dynamic"]
        )
        metrics["speedup_vs_eager_attention_dynamic"] = (
            metrics["decode_tokens_per_s/compiled_static"]
            / metrics["decode_tokens_per_s/eager_attention_dynamic"]
        )
        log.info("compile: %s", metrics)
        ctx.logger.log_table(
            "compile",
            ["variant", "decode_tokens_per_s"],
            [
                [k.split("/", 1)[1], round(v, 2)]
                for k, v in metrics.items()
                if k.startswith("decode_tokens_per_s/")
            ],
        )
        notes.append(
            f"decode step compiled with torch.compile(backend={c.backend}, mode={c.mode}); static cache of {max_len} tokens; "
            f"compile took {metrics['compile_s']:.1f} s (excluded from speeds)"
        )
        return Applied(
            model=model, execution="dense", generate_kwargs=compiled, metrics=metrics, notes=notes
        )
