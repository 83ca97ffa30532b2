"""Config schemas of the decode-time techniques (light: no torch import; read at start-up).

These techniques change how the model runs, not its weights: attention kernel, KV-cache layout,
``torch.compile`` of the decode step, speculative decoding. ``validate()`` checks each config on its
own; cross-group checks (GPU-only options, draft vocabulary) live in each technique's ``check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from infopt.config.checks import choice, in_range, non_negative, positive
from infopt.config.schema import ATTN_IMPLEMENTATIONS, ModelConfig, TechniqueConfig
from infopt.errors import ConfigError

SDPA_BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "quantized")
QUANT_CACHE_BACKENDS = ("fp8", "quanto", "hqq")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DRAFT_KINDS = ("layer_subset", "model", "path")


def _context_lengths(key: str, values: list[int]) -> None:
    if not values:
        raise ConfigError(
            f"{key} is empty; give context lengths in tokens, e.g. [512, 2048, 0] (0 = the model's maximum)"
        )
    for v in values:
        non_negative(f"{key}[]", v)


@dataclass
class AttentionConfig(TechniqueConfig):
    """Switch the attention kernel; sweep prefill/decode latency and memory over context lengths."""

    name: str = "attention"
    implementation: str = "sdpa"  # eager | sdpa | flash_attention_2 (GPU only)
    sdpa_backend: str = (
        "auto"  # sdpa only: auto (PyTorch picks) | math | flash | efficient (GPU) | cudnn (GPU)
    )
    compare: list[str] = field(
        default_factory=lambda: ["eager"]
    )  # other settings measured in the same sweep: eager, sdpa, sdpa:math, sdpa:flash, ...
    context_lengths: list[int] = field(
        default_factory=lambda: [512, 2048]
    )  # prompt lengths swept (0 = the model's maximum)
    decode_tokens: int = (
        8  # tokens decoded after each prefill to time the decode step at that context
    )
    repeats: int = 1  # timed repeats per point (median reported)
    logit_tolerance: float = 1e-3  # max |logit - eager logit| accepted as "same output" (fp32)

    def validate(self) -> None:
        super().validate()
        choice("technique.implementation", self.implementation, ATTN_IMPLEMENTATIONS)
        choice("technique.sdpa_backend", self.sdpa_backend, SDPA_BACKENDS)
        if self.sdpa_backend != "auto" and self.implementation != "sdpa":
            raise ConfigError(
                f"technique.sdpa_backend={self.sdpa_backend} needs technique.implementation=sdpa (got {self.implementation})"
            )
        for c in self.compare:
            impl, _, backend = c.partition(":")
            choice("technique.compare[]", impl, ATTN_IMPLEMENTATIONS)
            if backend:
                if impl != "sdpa":
                    raise ConfigError(
                        f"technique.compare[]={c!r}: a backend suffix is only valid for sdpa (e.g. sdpa:math)"
                    )
                choice("technique.compare[] sdpa backend", backend, SDPA_BACKENDS)
        _context_lengths("technique.context_lengths", self.context_lengths)
        positive("technique.decode_tokens", self.decode_tokens)
        positive("technique.repeats", self.repeats)
        positive("technique.logit_tolerance", self.logit_tolerance)


@dataclass
class KVCacheConfig(TechniqueConfig):
    """Choose the KV-cache layout generate() decodes with; measure memory and the quality effect."""

    name: str = "kv_cache"
    implementation: str = (
        "static"  # dynamic | static | offloaded (GPU) | offloaded_static (GPU) | quantized
    )
    quant_backend: str = "fp8"  # quantized only: fp8 (built into transformers) | quanto (pip optimum-quanto) | hqq (pip hqq)
    nbits: int = 4  # quanto/hqq: bits per cached element (quanto: 2 or 4)
    q_group_size: int = 64  # quanto/hqq: elements per quantization group
    residual_length: int = 128  # quanto/hqq: most recent tokens kept in full precision
    context_lengths: list[int] = field(
        default_factory=lambda: [512, 2048]
    )  # cache memory measured at these lengths (0 = model max)
    agreement_prompts: int = (
        4  # held-out prompts whose greedy generations are compared with the dynamic cache
    )
    agreement_prompt_tokens: int = 128  # tokens per agreement prompt
    agreement_new_tokens: int = 32  # tokens generated per agreement prompt
    ppl_windows: int = 4  # held-out windows scored with the cache in the loop
    ppl_window: int = 512  # tokens per window
    ppl_chunk: int = 64  # tokens fed per forward: each chunk attends to the (possibly quantized) cache of the earlier ones

    def validate(self) -> None:
        super().validate()
        choice("technique.implementation", self.implementation, CACHE_IMPLEMENTATIONS)
        choice("technique.quant_backend", self.quant_backend, QUANT_CACHE_BACKENDS)
        if self.quant_backend == "quanto":
            choice("technique.nbits", self.nbits, (2, 4))
        elif self.quant_backend == "hqq":
            choice("technique.nbits", self.nbits, (1, 2, 3, 4, 8))
        positive("technique.q_group_size", self.q_group_size)
        positive("technique.residual_length", self.residual_length)
        _context_lengths("technique.context_lengths", self.context_lengths)
        positive("technique.agreement_prompts", self.agreement_prompts)
        positive("technique.agreement_prompt_tokens", self.agreement_prompt_tokens)
        positive("technique.agreement_new_tokens", self.agreement_new_tokens)
        positive("technique.ppl_windows", self.ppl_windows)
        in_range("technique.ppl_window", self.ppl_window, 16, 131072)
        positive("technique.ppl_chunk", self.ppl_chunk)
        if self.ppl_chunk >= self.ppl_window:
            raise ConfigError(
                f"technique.ppl_chunk={self.ppl_chunk} must be < technique.ppl_window={self.ppl_window} so the cache is in the loop"
            )


@dataclass
class TorchCompileConfig(TechniqueConfig):
    """torch.compile of the decode step (static cache), through generate()'s compile_config."""

    name: str = "compile"
    mode: str = "default"  # default | reduce-overhead (CUDA graphs, GPU) | max-autotune | max-autotune-no-cudagraphs
    backend: str = "inductor"  # torch.compile backend: inductor (real kernels) | aot_eager / eager (plumbing checks)
    fullgraph: bool = False  # fail on graph breaks instead of falling back
    dynamic: Optional[bool] = (
        None  # None = torch decides (static first, dynamic after a shape changes)
    )
    max_cache_len: Optional[int] = (
        None  # static cache length; None = bench.prompt_tokens + bench.new_tokens (one shape, no recompiles)
    )
    check_prompts: int = (
        2  # held-out prompts whose compiled greedy generations must equal eager ones
    )
    check_new_tokens: int = 32  # tokens generated per check prompt (and per timing run)
    repeats: int = 3  # timed steady-state runs (median)

    def validate(self) -> None:
        super().validate()
        choice("technique.mode", self.mode, COMPILE_MODES)
        if not self.backend:
            raise ConfigError(
                "technique.backend is empty; use inductor (or aot_eager/eager to check plumbing)"
            )
        if self.max_cache_len is not None:
            positive("technique.max_cache_len", self.max_cache_len)
        positive("technique.check_prompts", self.check_prompts)
        positive("technique.check_new_tokens", self.check_new_tokens)
        positive("technique.repeats", self.repeats)


@dataclass
class DraftConfig:
    """Where the draft model of assisted generation comes from."""

    kind: str = "layer_subset"  # layer_subset (copy of the target keeping every k-th layer) | model (a model config) | path (run dir or saved model dir)
    model: Optional[ModelConfig] = (
        None  # kind=model: same fields as the model group (e.g. +model@technique.draft.model=tiny_llama)
    )
    path: Optional[str] = None  # kind=path: a saved model dir, or a run dir holding model/
    layer_stride: int = 2  # kind=layer_subset: keep layers 0, k, 2k, ... and the last one
    num_tokens: int = 5  # tokens drafted per step (gamma in Leviathan et al.), held constant

    def validate(self) -> None:
        choice("technique.draft.kind", self.kind, DRAFT_KINDS)
        if self.kind == "model":
            if self.model is None:
                raise ConfigError(
                    "technique.draft.kind=model needs technique.draft.model (e.g. +model@technique.draft.model=tiny_llama)"
                )
            try:
                self.model.validate()
            except ConfigError as err:
                raise ConfigError(f"technique.draft.{err}") from None
        if self.kind == "path" and not self.path:
            raise ConfigError(
                "technique.draft.kind=path needs technique.draft.path (a saved model dir or an earlier run's output dir)"
            )
        in_range("technique.draft.layer_stride", self.layer_stride, 2)
        positive("technique.draft.num_tokens", self.num_tokens)


@dataclass
class SpeculativeConfig(TechniqueConfig):
    """Assisted generation with a draft model, or prompt-lookup decoding; greedy only."""

    name: str = "speculative"
    draft: DraftConfig = field(
        default_factory=DraftConfig
    )  # the draft model (ignored when prompt_lookup > 0)
    prompt_lookup: int = (
        0  # > 0: prompt-lookup decoding proposing this many tokens per step (no draft model)
    )
    max_matching_ngram_size: int = 2  # prompt lookup: longest n-gram matched against the prompt
    prompts: int = (
        8  # prompts from the data group's held-out documents (or data=text_files for your own)
    )
    prompt_tokens: int = 256  # each document truncated to this many tokens
    new_tokens: int = 64  # tokens generated per prompt
    template: str = "{text}"  # prompt text around each document, e.g. "Article: {text}\nSummary:"
    chat: bool = False  # wrap the prompt in the tokenizer's chat template (instruct models)
    tie_tolerance: float = 1e-4  # a divergence from plain greedy is allowed only where the top two logits differ by <= this

    def validate(self) -> None:
        super().validate()
        non_negative("technique.prompt_lookup", self.prompt_lookup)
        if self.prompt_lookup == 0:
            self.draft.validate()
        positive("technique.max_matching_ngram_size", self.max_matching_ngram_size)
        positive("technique.prompts", self.prompts)
        positive("technique.prompt_tokens", self.prompt_tokens)
        in_range("technique.new_tokens", self.new_tokens, 2)
        if "{text}" not in self.template:
            raise ConfigError(
                f"technique.template={self.template!r} must contain {{text}} where the document goes"
            )
        positive("technique.tie_tolerance", self.tie_tolerance)
