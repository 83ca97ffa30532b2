"""Export formats and GGUF type names: config vocabulary (no torch/numpy import), read by validation and the exporters."""

from __future__ import annotations

from infopt.errors import ConfigError

FORMATS = ("none", "hf", "gguf", "compressed_tensors")  # technique.export

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
