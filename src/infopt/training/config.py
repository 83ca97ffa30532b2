"""Training-loop settings shared by every training stage (distillation, recovery fine-tuning).

Light on purpose (no torch import): technique configs nest it and are imported at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from infopt.config.checks import choice, in_range, non_negative, positive
from infopt.errors import ConfigError


@dataclass
class LoraSettings:
    """LoRA through peft (Hu et al. 2021): train low-rank adapters, merge them at the end."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"]
    )  # peft names or "all-linear"

    def validate(self, key: str) -> None:
        if self.enabled:
            positive(f"{key}.r", self.r)
            positive(f"{key}.alpha", self.alpha)
            in_range(f"{key}.dropout", self.dropout, 0, 1, hi_open=True)
            if not self.target_modules:
                raise ConfigError(
                    f"{key}.target_modules is empty; e.g. [all-linear] or [q_proj,v_proj]"
                )


@dataclass
class TrainConfig:
    max_steps: int = 200  # optimizer steps (a fixed token budget = max_steps x batch_size x accumulate x seq_len)
    batch_size: int = 4  # sequences per micro-batch (per device)
    accumulate: int = 1  # gradient accumulation micro-batches per step
    seq_len: Optional[int] = None  # tokens per sequence (None = data.seq_len)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"  # constant | linear | cosine (after warm-up)
    clip_grad: Optional[float] = 1.0  # max grad norm (None = no clipping)
    val_every: int = 50  # validate every N steps (held-out loss)
    val_batches: int = 4  # held-out micro-batches per validation
    checkpoint_every: int = 50  # steps between checkpoints (0 = only at the end)
    resume: bool = True  # continue from the run dir's last checkpoint if there is one
    seed: int = 0  # data order and init of anything new
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self, key: str = "technique.train") -> None:
        positive(f"{key}.max_steps", self.max_steps)
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.accumulate", self.accumulate)
        if self.seq_len is not None:
            in_range(f"{key}.seq_len", self.seq_len, 8, 131072)
        in_range(f"{key}.lr", self.lr, 0, 1, lo_open=True)
        non_negative(f"{key}.weight_decay", self.weight_decay)
        non_negative(f"{key}.warmup_steps", self.warmup_steps)
        choice(f"{key}.schedule", self.schedule, ("constant", "linear", "cosine"))
        if self.clip_grad is not None:
            positive(f"{key}.clip_grad", self.clip_grad)
        positive(f"{key}.val_every", self.val_every)
        positive(f"{key}.val_batches", self.val_batches)
        non_negative(f"{key}.checkpoint_every", self.checkpoint_every)
        self.lora.validate(f"{key}.lora")
