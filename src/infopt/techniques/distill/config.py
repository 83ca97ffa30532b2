"""Schema of ``technique=distill`` (light: no torch import, imported at start-up).

Every value is checked in ``validate`` before any model loads; each error is one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from infopt.config.checks import choice, in_range, non_negative, positive
from infopt.config.schema import ModelConfig, TechniqueConfig
from infopt.errors import ConfigError
from infopt.training.config import TrainConfig

STUDENT_INITS = ("from_teacher", "model", "incoming")
TEACHERS = ("incoming", "original")
DATA_MODES = ("online", "cached", "sequence")
HIDDEN_METRICS = ("mse", "cosine")
LOSS_TERMS = ("ce", "forward_kl", "reverse_kl", "gjs", "skew_kl", "hidden")


@dataclass
class StudentConfig:
    """Where the student comes from."""

    # from_teacher (a subset of the teacher's layers, with their weights) | model (technique.student.model) |
    # incoming (the model this stage receives, trained in place: e.g. a pruned model distilled from the original)
    init: str = "from_teacher"
    layer_stride: int = 2  # from_teacher: keep teacher layers 0, k, 2k, ... (DistilBERT keeps one in two)
    layers: Optional[list[int]] = None  # from_teacher: explicit teacher layer indices (overrides layer_stride)
    mlp_ratio: float = 1.0  # from_teacher: fraction of MLP units kept, the largest by weight norm
    head_ratio: float = 1.0  # from_teacher: fraction of KV-head groups kept (Llama-style only), largest by o_proj norm
    # init=model: the student's model config (same keys as the model group), e.g.
    # technique.student.model.source=local technique.student.model.name_or_path=DIR
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="student"))
    keep_zeros: bool = True  # init=incoming: weights that are exactly zero stay zero (a pruned model keeps its masks)

    def validate(self, key: str = "technique.student") -> None:
        choice(f"{key}.init", self.init, STUDENT_INITS)
        if self.init == "incoming":
            return
        if self.init == "model":
            try:
                self.model.validate()
            except ConfigError as err:
                raise ConfigError(f"{key}.{err}") from None
            return
        positive(f"{key}.layer_stride", self.layer_stride)
        if self.layers is not None:
            if not self.layers:
                raise ConfigError(
                    f"{key}.layers is empty; give teacher layer indices, e.g. [0,2,4] (or null for layer_stride)"
                )
            for i in self.layers:
                non_negative(f"{key}.layers[]", i)
            if sorted(set(self.layers)) != list(self.layers):
                raise ConfigError(f"{key}.layers={list(self.layers)} must be strictly increasing teacher layer indices")
        in_range(f"{key}.mlp_ratio", self.mlp_ratio, 0, 1, lo_open=True)
        in_range(f"{key}.head_ratio", self.head_ratio, 0, 1, lo_open=True)


@dataclass
class LossConfig:
    """Weighted sum of terms; a weight of 0 drops the term (CE-only: forward_kl=0 ce=1)."""

    ce: float = 0.5  # cross-entropy on the data (next token)
    forward_kl: float = 0.5  # KL(teacher || student) on temperature-softened logits, x T^2 (Hinton et al. 2015)
    reverse_kl: float = 0.0  # KL(student || teacher), token level (MiniLLM, Gu et al. 2023)
    gjs: float = 0.0  # generalized Jensen-Shannon with gjs_beta (GKD, Agarwal et al. 2023)
    skew_kl: float = 0.0  # KL(teacher || a teacher + (1 - a) student) with skew_alpha (DistiLLM, Ko et al. 2024)
    hidden: float = 0.0  # hidden-state matching (online mode only)
    temperature: float = 1.0  # softens both distributions in every divergence term
    gjs_beta: float = 0.5  # in (0, 1): near 0 behaves like forward KL, near 1 like reverse KL
    skew_alpha: float = 0.1  # in [0, 1): 0 is forward KL; DistiLLM uses 0.1
    hidden_metric: str = "mse"  # mse | cosine
    # Teacher layer matched by each student layer (None: the copied layers, or evenly spaced).
    hidden_layers: Optional[list[int]] = None

    def weights(self) -> dict[str, float]:
        return {t: float(getattr(self, t)) for t in LOSS_TERMS if getattr(self, t) != 0}

    def validate(self, key: str = "technique.loss") -> None:
        for term in LOSS_TERMS:
            non_negative(f"{key}.{term}", getattr(self, term))
        if not self.weights():
            raise ConfigError(
                f"{key}: every weight is 0; give at least one of {', '.join(LOSS_TERMS)} a positive weight"
            )
        in_range(f"{key}.temperature", self.temperature, 0, 100, lo_open=True)
        in_range(f"{key}.gjs_beta", self.gjs_beta, 0, 1, lo_open=True, hi_open=True)
        in_range(f"{key}.skew_alpha", self.skew_alpha, 0, 1, hi_open=True)
        choice(f"{key}.hidden_metric", self.hidden_metric, HIDDEN_METRICS)
        if self.hidden_layers is not None:
            for i in self.hidden_layers:
                non_negative(f"{key}.hidden_layers[]", i)

    @property
    def needs_teacher_logits(self) -> bool:
        return any(getattr(self, t) for t in ("forward_kl", "reverse_kl", "gjs", "skew_kl"))


@dataclass
class DistillDataConfig:
    """How the teacher's signal reaches the student."""

    mode: str = "online"  # online (teacher forward each step) | cached (top-k logits stored once) | sequence (teacher-generated text)
    top_k: int = 64  # cached: teacher logits kept per position (the rest is one bucket)
    train_docs: Optional[int] = None  # use only the first N training documents (data-diversity ablations)
    # none | reviews: the training blocks half from the data group, half from embedded movie reviews
    # (equal token shares, the same token budget): a data-diversity ablation
    mix: str = "none"
    prompt_len: int = 32  # sequence: prompt tokens taken from each training block
    num_sequences: Optional[int] = None  # sequence: prompts (None = one per training block)
    sample: bool = True  # sequence: sample the continuation (false: greedy)
    gen_batch_size: int = 8  # sequence/cached: teacher batch while generating or caching

    def validate(self, key: str = "technique.data") -> None:
        choice(f"{key}.mode", self.mode, DATA_MODES)
        choice(f"{key}.mix", self.mix, ("none", "reviews"))
        in_range(f"{key}.top_k", self.top_k, 1, None)
        if self.train_docs is not None:
            positive(f"{key}.train_docs", self.train_docs)
        in_range(f"{key}.prompt_len", self.prompt_len, 1, None)
        if self.num_sequences is not None:
            positive(f"{key}.num_sequences", self.num_sequences)
        positive(f"{key}.gen_batch_size", self.gen_batch_size)


@dataclass
class DistillConfig(TechniqueConfig):
    name: str = "distill"
    # incoming: the model this stage receives teaches | original: the run's model as loaded, before any
    # pipeline stage changed it (prune, then recover by distilling from the unpruned model)
    teacher: str = "incoming"
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    save_student: bool = True  # write the student as a normal transformers checkpoint to <run>/student

    def validate(self) -> None:
        super().validate()
        choice("technique.teacher", self.teacher, TEACHERS)
        if self.teacher == "incoming" and self.student.init == "incoming":
            raise ConfigError(
                "technique.student.init=incoming with technique.teacher=incoming would distil the model into itself; "
                "set technique.teacher=original (inside a pipeline: the model before its first stage)"
            )
        self.student.validate()
        self.loss.validate()
        self.data.validate()
        self.train.validate()
        if self.data.mode == "cached" and self.loss.hidden:
            raise ConfigError(
                "technique.loss.hidden>0 with technique.data.mode=cached: only logits are cached; use data.mode=online or loss.hidden=0"
            )
        if (
            self.data.mode == "sequence"
            and self.train.seq_len is not None
            and self.data.prompt_len >= self.train.seq_len
        ):
            raise ConfigError(
                f"technique.data.prompt_len={self.data.prompt_len} must be < technique.train.seq_len={self.train.seq_len} (room to generate)"
            )
