"""Export a run's model to the engines people deploy with.

``gguf``: one file for llama.cpp (``infopt.export.gguf``); ``compressed_tensors``: a directory
that transformers and vLLM load (``infopt.export.compressed_tensors``). Both take the model as the
run left it; a quantized model is exported from its integer codes (``source_model``), not from
de-quantized floats, so the engine runs the weights the framework scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infopt.errors import ResourceError

FORMATS = ("gguf", "compressed_tensors")
GGUF_NAME = "model.gguf"
CT_DIR = "compressed_tensors"


def has_int_layers(model) -> bool:
    from infopt.techniques.quantize.modules import Int8Linear, PackedLinear

    return any(isinstance(m, (PackedLinear, Int8Linear)) for m in model.modules())


def source_model(model, artifacts: dict[str, str] | None = None):
    """The model to export: ``model`` itself when it holds integer layers or no packed export
    exists; otherwise (a simulated quantization run: rounded floats in memory) the packed codes
    the quantize technique wrote to ``artifacts['quantized']``."""
    quantized = (artifacts or {}).get("quantized")
    if quantized and not has_int_layers(model) and Path(quantized, "quantization.json").is_file():
        from infopt.techniques.quantize.save import load_quantized

        return load_quantized(quantized, kernel="reference")
    return model


def export_model(
    fmt: str,
    model,
    tokenizer,
    output_dir: Path | str,
    applied: Any = None,
    export_type: str = "auto",
    float_type: str = "f16",
) -> Path:
    """Write ``model`` in ``fmt`` under ``output_dir``; returns the file (gguf) or directory."""
    output_dir = Path(output_dir)
    src = source_model(model, getattr(applied, "artifacts", None))
    if fmt == "gguf":
        from infopt.export.gguf import export_gguf

        info = export_gguf(src, tokenizer, output_dir / GGUF_NAME, qtype=export_type, float_type=float_type)
        if applied is not None:
            applied.metrics["gguf_mb"] = info.path.stat().st_size / 2**20
            applied.metrics["gguf_exact_layers"] = float(info.exact_layers)
            applied.metrics["gguf_requantized_layers"] = float(info.requantized_layers)
            applied.notes.append(
                f"gguf export: {info.type} ({info.exact_layers} quantized layers written with their own codes, "
                f"{info.requantized_layers} rounded by gguf.quants)"
            )
            applied.notes.extend(info.notes)
        return info.path
    if fmt == "compressed_tensors":
        from infopt.export.compressed_tensors import export_compressed_tensors

        return export_compressed_tensors(src, tokenizer, output_dir / CT_DIR)
    raise ResourceError(f"export format {fmt!r} is not known; valid: {', '.join(FORMATS)}")
