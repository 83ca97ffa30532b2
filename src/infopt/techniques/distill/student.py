"""Build the student: a subset of the teacher's layers with their weights, optionally narrowed.

``from_teacher`` follows DistilBERT (Sanh et al. 2019) and DistilGPT2: the teacher's architecture
with fewer layers, initialised by copying the kept layers, the embeddings, the final norm and the
head. Narrowing keeps the MLP units (and, for Llama-style attention, whole KV-head groups with their
query heads) with the largest weight norms, in the spirit of structured-pruning importance scores.
The result is a plain transformers model of the teacher's class: ``save_pretrained`` and
``from_pretrained`` work on it unchanged.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from infopt.errors import ConfigError

_LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")


def layers_path(model: nn.Module) -> str:
    """Dotted path of the decoder's layer ModuleList (Llama-style or GPT-2)."""
    for path in _LAYER_PATHS:
        obj: object = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return path
    raise ConfigError(
        f"technique.student.init=from_teacher: cannot find the decoder layers of {type(model).__name__}; use technique.student.init=model"
    )


def num_layers(model: nn.Module) -> int:
    obj: object = model
    for part in layers_path(model).split("."):
        obj = getattr(obj, part)
    return len(obj)  # type: ignore[arg-type]


def chosen_layers(total: int, stride: int, explicit: list[int] | None) -> list[int]:
    """Teacher layer indices the student keeps: the explicit list, else 0, k, 2k, ..."""
    if explicit is not None:
        bad = [i for i in explicit if i >= total]
        if bad:
            raise ConfigError(
                f"technique.student.layers={list(explicit)}: the teacher has {total} layers (0..{total - 1})"
            )
        return list(explicit)
    keep = list(range(0, total, stride))
    return keep


def _unit_scores(sd: dict[str, torch.Tensor], prefix: str, arch: str) -> torch.Tensor:
    """Importance of each MLP unit of one layer: product of its input and output weight norms."""
    if arch == "llama":
        g = sd[f"{prefix}mlp.gate_proj.weight"].float().norm(dim=1)
        u = sd[f"{prefix}mlp.up_proj.weight"].float().norm(dim=1)
        d = sd[f"{prefix}mlp.down_proj.weight"].float().norm(dim=0)
        return g * u * d
    w_in = sd[f"{prefix}mlp.c_fc.weight"].float().norm(dim=0)  # Conv1D: (in, out)
    w_out = sd[f"{prefix}mlp.c_proj.weight"].float().norm(dim=1)
    return w_in * w_out


def _arch(model: nn.Module) -> str:
    path = layers_path(model)
    return "gpt2" if path == "transformer.h" else "llama"


def _keep_top(scores: torch.Tensor, n: int) -> torch.Tensor:
    return scores.topk(n).indices.sort().values


def build_from_teacher(
    teacher: nn.Module, layers: list[int], mlp_ratio: float = 1.0, head_ratio: float = 1.0
) -> tuple[nn.Module, dict[str, str]]:
    """The student and a map student-parameter -> teacher-parameter it was copied from (for tests).

    Copies exactly: every student tensor equals the teacher tensor it maps to, sliced to the kept
    units when narrowed.
    """
    arch = _arch(teacher)
    prefix = layers_path(teacher) + "."
    config = copy.deepcopy(teacher.config)
    if getattr(config, "quantization_config", None) is not None:
        config.quantization_config = None
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    t_sd = teacher.state_dict()
    # Kept MLP units per student layer.
    mlp_keep: dict[int, torch.Tensor] = {}
    inner = getattr(config, "intermediate_size", None) if arch == "llama" else (config.n_inner or 4 * config.n_embd)
    if mlp_ratio < 1.0:
        n_units = max(1, round(inner * mlp_ratio))
        for j, i in enumerate(layers):
            mlp_keep[j] = _keep_top(_unit_scores(t_sd, f"{prefix}{i}.", arch), n_units)
        if arch == "llama":
            config.intermediate_size = n_units
        else:
            config.n_inner = n_units
    head_keep: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # (query heads, kv heads)
    if head_ratio < 1.0:
        if arch != "llama":
            raise ConfigError(
                "technique.student.head_ratio<1 is implemented for Llama-style attention only (GPT-2's fused c_attn is not); use head_ratio=1"
            )
        n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        group = n_heads // n_kv
        keep_kv = max(1, round(n_kv * head_ratio))
        for j, i in enumerate(layers):
            o = t_sd[f"{prefix}{i}.self_attn.o_proj.weight"].float()  # (D, H * hd)
            per_head = o.view(o.shape[0], n_heads, head_dim).norm(dim=(0, 2))  # (H,)
            kv = _keep_top(per_head.view(n_kv, group).sum(1), keep_kv)
            q = (kv[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
            head_keep[j] = (q, kv)
        config.head_dim = head_dim
        config.num_attention_heads = keep_kv * group
        config.num_key_value_heads = keep_kv

    with torch.random.fork_rng():
        torch.manual_seed(0)  # every tensor is overwritten below; the seed only makes this deterministic
        student = type(teacher)(config)
    dtype = next(teacher.parameters()).dtype
    student = student.to(dtype)
    layer_re = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    new_sd: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for name, target in student.state_dict().items():
        m = layer_re.match(name)
        if m is None:
            t_name = name
            tensor = _teacher_tensor(t_sd, t_name)
        else:
            j, rest = int(m.group(1)), m.group(2)
            t_name = f"{prefix}{layers[j]}.{rest}"
            tensor = _teacher_tensor(t_sd, t_name)
            tensor = _narrow(tensor, rest, arch, mlp_keep.get(j), head_keep.get(j), config)
        if tensor.shape != target.shape:
            raise RuntimeError(f"student {name} {tuple(target.shape)} vs teacher {t_name} {tuple(tensor.shape)}")
        new_sd[name] = tensor.detach().clone()
        source[name] = t_name
    student.load_state_dict(new_sd, strict=True)
    # Tied embeddings stay tied (the state dict holds the same tensor under both names).
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    return student.eval(), source


def _teacher_tensor(t_sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    t = t_sd.get(name)
    if t is None or not t.is_floating_point():
        raise ConfigError(
            f"technique.student.init=from_teacher: the teacher has no float tensor {name!r} (real low-bit kernels?); "
            "put distill before that stage, quantize with execution=simulated, or use technique.student.init=model"
        )
    return t


def _narrow(t: torch.Tensor, rest: str, arch: str, units, heads, config) -> torch.Tensor:
    if units is not None:
        if arch == "llama":
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                t = t[units]
            elif rest == "mlp.down_proj.weight":
                t = t[:, units]
            elif rest in ("mlp.gate_proj.bias", "mlp.up_proj.bias"):
                t = t[units]
        else:
            if rest == "mlp.c_fc.weight":
                t = t[:, units]
            elif rest == "mlp.c_fc.bias":
                t = t[units]
            elif rest == "mlp.c_proj.weight":
                t = t[units]
    if heads is not None:
        q, kv = heads
        hd = config.head_dim

        def rows(idx: torch.Tensor) -> torch.Tensor:
            return (idx[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)

        if rest in ("self_attn.q_proj.weight", "self_attn.q_proj.bias"):
            t = t[rows(q)]
        elif rest in (
            "self_attn.k_proj.weight",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.weight",
            "self_attn.v_proj.bias",
        ):
            t = t[rows(kv)]
        elif rest == "self_attn.o_proj.weight":
            t = t[:, rows(q)]
    return t


def student_hidden_size(model: nn.Module) -> int:
    return int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
