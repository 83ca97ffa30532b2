"""Names of the export types (light: no torch/numpy import, used by config validation)."""

from __future__ import annotations

from infopt.errors import ConfigError

# ``auto``: framework-quantized layers keep their own codes in the smallest block type holding them.
GGUF_TYPES = ("auto", "f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
FLOAT_TYPES = ("f32", "f16", "q8_0")  # float matrices under ``auto``
# The gguf package's quants module cannot write these (llama.cpp's llama-quantize can).
UNSUPPORTED_TYPES = ("q2_k", "q3_k", "q4_k", "q4_k_m", "q4_k_s", "q5_k", "q5_k_m", "q6_k", "q8_1", "iq4_nl")


def check_type(qtype: str, float_type: str, key: str = "type", float_key: str = "float_type") -> None:
    """ConfigError naming the value and the valid choices."""
    if qtype.lower() in UNSUPPORTED_TYPES:
        raise ConfigError(
            f"{key}={qtype}: the gguf package cannot write K-quants or {qtype}; valid: {', '.join(GGUF_TYPES)} "
            "(llama.cpp's llama-quantize makes K-quants from an f16 export)"
        )
    if qtype not in GGUF_TYPES:
        raise ConfigError(f"{key}={qtype!r} is not valid; valid: {', '.join(GGUF_TYPES)}")
    if float_type not in FLOAT_TYPES:
        raise ConfigError(f"{float_key}={float_type!r} is not valid; valid: {', '.join(FLOAT_TYPES)}")


def check_export(technique) -> None:
    """Export settings a quantize config cannot meet, caught before the model loads (the same
    rules ``gguf.auto_type`` / the compressed-tensors writer apply to the quantized layers)."""
    export = getattr(technique, "export", "none")
    if export not in ("gguf", "compressed_tensors") or getattr(technique, "name", "") != "quantize":
        return
    method = getattr(technique, "method", None)
    if method not in ("rtn", "gptq", "awq"):
        return
    group = getattr(technique, "group_size", -1)
    if method == "gptq" and getattr(technique, "gptq_act_order", False) and group > 0:
        raise ConfigError(
            f"technique.export={export} with technique.method=gptq, gptq_act_order=true and group_size={group}: "
            "act-order groups permute the columns and have no block layout in this format; "
            "set technique.gptq_act_order=false (or technique.group_size=-1)"
        )
    if export == "gguf" and getattr(technique, "export_type", "auto") == "auto":
        if group > 0 and group % 32:
            raise ConfigError(
                f"technique.export=gguf with technique.group_size={group}: GGUF blocks hold 32 weights, so the codes "
                "map exactly only for a group size that is a multiple of 32 (or -1 / 0); "
                "set technique.group_size=32 or 64, or technique.export_type=q4_0|q8_0|... to round again"
            )
        bits = getattr(technique, "bits", None) or 4
        if bits > 5 and not getattr(technique, "symmetric", True):
            raise ConfigError(
                f"technique.export=gguf with technique.bits={bits} asymmetric: no GGUF block type holds {bits}-bit codes "
                "with a zero point; set technique.symmetric=true (Q8_0) or technique.export_type=q8_0 to round again"
            )
