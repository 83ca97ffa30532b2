"""Schema of ``technique=prune`` (light: no torch import, imported at start-up).

Two modes, chosen by ``structured.target``:

- ``none`` (default): unstructured or N:M weight pruning at ``sparsity`` with ``method``
  magnitude | wanda | sparsegpt; zeros stay in dense matrices (masked dense) unless a 2:4
  sparse kernel is available and asked for.
- ``heads`` | ``channels`` | ``layers``: whole attention heads (whole KV groups under grouped-
  query attention), MLP intermediate channels, or decoder layers are removed, the same number in
  every layer, so the result is a smaller dense model with an updated config.

Layer names are matched with ``re.search`` on the module's full name, like quantization.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from infopt.config.checks import choice, in_range, positive
from infopt.config.schema import TechniqueConfig
from infopt.errors import ConfigError
from infopt.training.config import TrainConfig

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("per_layer", "global")
TARGETS = ("none", "heads", "channels", "layers")
IMPORTANCES = ("magnitude", "activation", "taylor")
EXECUTIONS = ("auto", "masked_dense", "sparse_kernel")


def parse_nm(value: str) -> tuple[int, int]:
    """ "2:4" -> (2, 4): at most N non-zeros in every group of M consecutive input weights."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value))
    if m is None:
        raise ConfigError(
            f"technique.nm={value!r} is not of the form N:M (e.g. 2:4 or 4:8): N non-zeros kept per M weights"
        )
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ConfigError(f"technique.nm={value!r} needs 0 < N < M (N weights kept of every M), e.g. 2:4 or 4:8")
    return n, mm


@dataclass
class StructuredSettings:
    """What whole units to remove; the same number in every layer (a uniform, loadable config)."""

    target: str = "none"  # none (unstructured/N:M) | heads | channels | layers
    ratio: Optional[float] = None  # fraction of units removed: heads (KV groups) / channels per layer, or layers
    count: Optional[int] = None  # or a number of units removed (per layer for heads/channels; in total for layers)
    importance: str = "activation"  # magnitude (weights) | activation (calibration statistics) | taylor (|w * grad|)

    def validate(self, key: str = "technique.structured") -> None:
        choice(f"{key}.target", self.target, TARGETS)
        choice(f"{key}.importance", self.importance, IMPORTANCES)
        if self.target == "none":
            return
        if (self.ratio is None) == (self.count is None):
            raise ConfigError(
                f"{key}.target={self.target} needs exactly one of {key}.ratio (fraction removed, in (0, 1)) "
                f"or {key}.count (units removed); got ratio={self.ratio}, count={self.count}"
            )
        if self.ratio is not None:
            in_range(f"{key}.ratio", self.ratio, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.count is not None:
            positive(f"{key}.count", self.count)
        if self.target == "layers" and self.importance != "activation":
            raise ConfigError(
                f"{key}.importance={self.importance} with {key}.target=layers: layers are ranked by block influence "
                "(ShortGPT, 1 - cos(input, output) on calibration data); set importance=activation"
            )


@dataclass
class RecoverConfig(TrainConfig):
    """Recovery fine-tuning after pruning (Lightning; full or LoRA), keeping the pruning masks."""

    enabled: bool = False  # run recovery fine-tuning on the data group's training split
    max_steps: int = 100
    lr: float = 5e-5


@dataclass
class PruneConfig(TechniqueConfig):
    name: str = "prune"
    method: str = "wanda"  # magnitude | wanda (Sun et al. 2023) | sparsegpt (Frantar & Alistarh 2023)
    sparsity: float = 0.5  # fraction of weights zeroed in each targeted layer, in [0, 1) and at most (w-1)/w for the narrowest row w (ignored with nm)
    nm: Optional[str] = None  # semi-structured N:M, e.g. "2:4" (at most N non-zeros per M input weights)
    scope: str = "per_layer"  # per_layer | global (one threshold over all targeted layers; magnitude only)
    include: list[str] = field(
        default_factory=list
    )  # regexes of layers to prune (empty = every Linear in the decoder blocks)
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])  # regexes of layers left dense
    structured: StructuredSettings = field(default_factory=StructuredSettings)
    execution: str = "auto"  # auto | masked_dense (zeros on dense kernels) | sparse_kernel (2:4 on CUDA)
    calibration_samples: Optional[int] = None  # calibration sequences (None = data.calibration_samples)
    calibration_seq_len: Optional[int] = None  # tokens per sequence (None = data.seq_len)
    calibration_batch_size: int = 8  # sequences per forward while collecting statistics
    sparsegpt_damp: float = 0.01  # SparseGPT Hessian damping, fraction of the mean diagonal
    sparsegpt_block_size: int = 128  # SparseGPT: columns whose mask is chosen together
    recover: RecoverConfig = field(default_factory=RecoverConfig)

    @property
    def structured_target(self) -> str:
        return self.structured.target

    @property
    def nm_pair(self) -> tuple[int, int] | None:
        return parse_nm(self.nm) if self.nm else None

    @property
    def target_sparsity(self) -> float:
        """The fraction of targeted weights that ends up zero."""
        pair = self.nm_pair
        return 1 - pair[0] / pair[1] if pair else self.sparsity

    def targets(self, name: str) -> bool:
        """Whether the module ``name`` is pruned (include list, then ignore list)."""
        if self.include and not any(re.search(p, name) for p in self.include):
            return False
        return not any(re.search(p, name) for p in self.ignore)

    @property
    def method_label(self) -> str:
        """Structured targets are not Wanda/SparseGPT, whatever `method` says; N:M is named."""
        if self.structured.target != "none":
            return f"structured:{self.structured.target}"
        return f"{self.method}:{self.nm}" if self.nm else self.method

    def validate(self) -> None:
        super().validate()
        choice("technique.method", self.method, METHODS)
        choice("technique.scope", self.scope, SCOPES)
        choice("technique.execution", self.execution, EXECUTIONS)
        in_range("technique.sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        pair = self.nm_pair
        if pair is not None and self.scope == "global":
            raise ConfigError(
                f"technique.scope=global with technique.nm={self.nm}: N:M is per group of M weights; use scope=per_layer"
            )
        if self.scope == "global" and self.method != "magnitude":
            raise ConfigError(
                f"technique.scope=global with technique.method={self.method}: its scores compare weights within a layer "
                "(Wanda: per output row; SparseGPT: per Hessian); use scope=per_layer or method=magnitude"
            )
        if self.execution == "sparse_kernel" and pair != (2, 4):
            raise ConfigError(
                f"technique.execution=sparse_kernel needs technique.nm=2:4 (PyTorch's semi-structured kernels); got nm={self.nm}"
            )
        for pat in [*self.include, *self.ignore]:
            try:
                re.compile(pat)
            except re.error as err:
                raise ConfigError(
                    f"technique.include/ignore pattern {pat!r} is not a valid regular expression ({err})"
                ) from None
        self.structured.validate()
        if self.structured.target != "none" and (pair is not None or self.execution == "sparse_kernel"):
            raise ConfigError(
                f"technique.structured.target={self.structured.target} removes whole units; drop technique.nm / "
                "execution=sparse_kernel (they are for weight pruning, structured.target=none)"
            )
        if self.calibration_samples is not None:
            positive("technique.calibration_samples", self.calibration_samples)
        if self.calibration_seq_len is not None:
            in_range("technique.calibration_seq_len", self.calibration_seq_len, 8, 131072)
        positive("technique.calibration_batch_size", self.calibration_batch_size)
        in_range("technique.sparsegpt_damp", self.sparsegpt_damp, 0.0, 1.0, lo_open=True)
        positive("technique.sparsegpt_block_size", self.sparsegpt_block_size)
        if pair is not None and self.sparsegpt_block_size % pair[1]:
            raise ConfigError(
                f"technique.sparsegpt_block_size={self.sparsegpt_block_size} must be a multiple of M={pair[1]} (technique.nm={self.nm})"
            )
        if self.recover.enabled:
            self.recover.validate("technique.recover")
