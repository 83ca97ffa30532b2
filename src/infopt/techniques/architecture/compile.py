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
from typing import TYPE_CHECKING, Any

import torch

from infopt.bench.timing import repeat, timed
from infopt.errors import ConfigError
from infopt.techniques.architecture.common import decode_step_seconds, greedy, greedy_agreement, stream_prompts
from infopt.techniques.architecture.config import TorchCompileConfig
from infopt.techniques.base import Applied, Technique

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


def decode_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int, pad: int | None, repeats: int, **kwargs: Any) -> float:
    """Decode tokens/s excluding prefill (NaN when contention swamped the measurement, never huge)."""
    return 1 / decode_step_seconds(model, prompt, new_tokens, pad, repeats, **kwargs)


class Compile(Technique):
    """Decode with a static cache and a torch.compile'd decode step."""


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
        bench = ctx.cfg.bench
        max_len = c.max_cache_len or bench.prompt_tokens + max(bench.new_tokens, c.check_new_tokens)
        # One cache length for every call: the compiled step keeps one shape and never recompiles for length.
        static = {"cache_implementation": "static", "max_cache_len": max_len}
        compiled = {**static, "compile_config": compile_config(c, next(model.parameters()).device)}
        pad, n = ctx.tokenizer.pad_token_id, c.check_new_tokens
        prompts = stream_prompts(ctx.data.heldout_stream, c.check_prompts, bench.prompt_tokens)
        # Reference: greedy tokens of the model as loaded (dynamic cache, no compile), before any compile.
        references = [greedy(model, p, n, pad)[0] for p in prompts]
        # Compile happens inside the first compiled generate (at its first decode step).
        _, first_s = timed(lambda: greedy(model, prompts[0], n, pad, **compiled))
        steady_s = repeat(lambda: greedy(model, prompts[0], n, pad, **compiled), c.repeats).median
        agreement = greedy_agreement(model, prompts, n, pad, compiled, references=references)
        metrics = {"compile_s": max(first_s - steady_s, 0.0), **agreement.metrics()}
        speeds = decode_speeds(model, prompts[0], n, pad, c.repeats, static, compiled)
        metrics.update({f"decode_tokens_per_s/{k}": v for k, v in speeds.items()})
        metrics["speedup_vs_dynamic"] = speeds["compiled_static"] / speeds["dynamic"]
        metrics["speedup_vs_eager_attention_dynamic"] = speeds["compiled_static"] / speeds["eager_attention_dynamic"]
        notes = [
            f"decode step compiled with torch.compile(backend={c.backend}, mode={c.mode}); static cache of {max_len} tokens; "
            f"compile took {metrics['compile_s']:.1f} s (excluded from speeds)"
        ]
        if agreement.non_ties:
            notes.append(f"compiled decode: {agreement.non_ties} generation(s) differ from eager greedy at a non-tie")
        if any(math.isnan(v) for v in speeds.values()):
            notes.append("a decode speed could not be measured (t(N) <= t(1): CPU contention); rerun on a quiet machine")
        table = {"columns": ["variant", "decode_tokens_per_s"], "rows": [[k, round(v, 2)] for k, v in speeds.items()]}
        return Applied(model=model, execution="dense", generate_kwargs=compiled, metrics=metrics, notes=notes,
                       tables={"decode_speed": table})  # fmt: skip


def decode_speeds(model: nn.Module, prompt, n: int, pad, repeats: int, static: dict, compiled: dict) -> dict[str, float]:
    """Steady-state decode tokens/s on one prompt: compiled static, static, dynamic, and eager attention."""
    from infopt.techniques.architecture.attention import set_attention

    speeds = {
        "compiled_static": decode_speed(model, prompt, n, pad, repeats, **compiled),
        "static": decode_speed(model, prompt, n, pad, repeats, **static, disable_compile=True),
        "dynamic": decode_speed(model, prompt, n, pad, repeats),
    }
    loaded = model.config._attn_implementation
    if loaded == "eager":
        speeds["eager_attention_dynamic"] = speeds["dynamic"]
    else:
        set_attention(model, "eager")
        speeds["eager_attention_dynamic"] = decode_speed(model, prompt, n, pad, repeats)
        set_attention(model, loaded)
    return speeds
