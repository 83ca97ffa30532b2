"""Build the student: a subset of the teacher's layers with their weights, optionally narrowed.

``from_teacher`` follows DistilBERT (Sanh et al. 2019) and DistilGPT2: the teacher's architecture
with fewer layers, initialised by copying the kept layers, the embeddings, the final norm and the
head. Narrowing keeps the MLP channels (and, for Llama-style attention, whole KV-head groups with
their query heads) of largest weight magnitude, the structured-pruning importance
(``prune.structured.magnitude_importance``). The cutting is ``models.surgery``'s, so the student is
a plain transformers model of the teacher's class that ``save_pretrained`` / ``from_pretrained``
handle unchanged.
"""

from __future__ import annotations

import copy

from torch import nn

from infopt.errors import ConfigError
from infopt.models import surgery


def chosen_layers(total: int, stride: int, explicit: list[int] | None) -> list[int]:
    """Teacher layer indices the student keeps: the explicit list, else 0, k, 2k, ..."""
    if explicit is not None:
        bad = [i for i in explicit if i >= total]
        if bad:
            raise ConfigError(f"technique.student.layers={list(explicit)}: the teacher has {total} layers (0..{total - 1})")
        return list(explicit)
    return list(range(0, total, stride))


def _check_float(teacher: nn.Module) -> None:
    for name, t in teacher.state_dict().items():
        if not t.is_floating_point() and not name.endswith(("g_idx", "position_ids")):
            raise ConfigError(
                f"technique.student.init=from_teacher: the teacher's {name!r} is not a float tensor (real low-bit kernels?); "
                "put distill before that stage, quantize with execution=simulated, or use technique.student.init=model"
            )


def _narrow(student: nn.Module, target: str, ratio: float) -> None:
    from infopt.techniques.prune.structured import magnitude_importance

    layers = surgery.decoder_layers(student)
    total = surgery.unit_counts(student.config)[target]
    keep = max(1, round(total * ratio))
    scores = [magnitude_importance(layer, student.config, target) for layer in layers]
    surgery.narrow_units(student, target, [surgery.keep_top(s, keep) for s in scores])


def build_from_teacher(
    teacher: nn.Module, layers: list[int], mlp_ratio: float = 1.0, head_ratio: float = 1.0
) -> tuple[nn.Module, dict[str, str]]:
    """The student and a map student-parameter -> teacher-parameter it was copied from (for tests).

    Every student tensor equals the teacher tensor it maps to, sliced to the kept units when narrowed.
    """
    if head_ratio < 1.0 and surgery.arch_of(teacher.config) == "gpt2":
        raise ConfigError(
            "technique.student.head_ratio<1 is implemented for Llama-style attention only (GPT-2's fused c_attn is not); use head_ratio=1"
        )
    _check_float(teacher)
    student = copy.deepcopy(teacher)
    for p in student.parameters():  # the teacher may be frozen; the student is trained
        p.requires_grad_(True)
    if getattr(student.config, "quantization_config", None) is not None:
        student.config.quantization_config = None
    surgery.keep_layers(student, layers)
    if mlp_ratio < 1.0:
        _narrow(student, "channels", mlp_ratio)
    if head_ratio < 1.0:
        _narrow(student, "heads", head_ratio)
    prefix = surgery.decoder_path(teacher) + "."
    source = {}
    for name in student.state_dict():
        if name.startswith(prefix):
            j, rest = name[len(prefix) :].split(".", 1)
            source[name] = f"{prefix}{layers[int(j)]}.{rest}"
        else:
            source[name] = name
    return student.eval(), source
