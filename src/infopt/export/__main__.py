"""``python -m infopt.export <run dir | model dir> --format gguf|compressed_tensors [--type q8_0]``.

Reads the model a run saved (``<run>/quantized`` from technique=quantize, ``<run>/model`` from
technique.save_model=true or export=hf, or a model directory itself), writes the export next to
it, and adds the path to the run's ``results.json`` (``technique.artifacts``) when there is one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from infopt.errors import InfoptError, ResourceError
from infopt.export import CT_DIR, FORMATS, GGUF_NAME


def load_source(path: Path):
    """(model, tokenizer, where) from a run dir or a model dir; quantized codes preferred."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for cand in (path / "quantized", path):
        if (cand / "quantization.json").is_file():
            from infopt.techniques.quantize.save import load_quantized

            return load_quantized(cand, kernel="reference"), AutoTokenizer.from_pretrained(str(cand)), cand
    for cand in (path / "model", path):
        if (cand / "config.json").is_file():
            return (
                AutoModelForCausalLM.from_pretrained(str(cand)).eval(),
                AutoTokenizer.from_pretrained(str(cand)),
                cand,
            )
    raise ResourceError(
        f"no saved model in {path}: expected {path}/quantized (technique=quantize), {path}/model "
        "(technique.save_model=true or technique.export=hf) or a model directory with config.json"
    )


def main(argv: list[str] | None = None) -> int:
    from infopt.config.exports import FLOAT_TYPES, GGUF_TYPES

    p = argparse.ArgumentParser(prog="python -m infopt.export", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a run directory (outputs/runs/...) or a model directory")
    p.add_argument("--format", choices=FORMATS, default="gguf")
    p.add_argument(
        "--type",
        default="auto",
        help=f"gguf tensor type: {', '.join(GGUF_TYPES)} (auto: quantized layers keep their codes)",
    )
    p.add_argument(
        "--float-type", default="f16", choices=FLOAT_TYPES, help="gguf type of float matrices under --type auto"
    )
    p.add_argument(
        "--output-type",
        default=None,
        choices=GGUF_TYPES[1:],
        help="gguf type of token_embd/output.weight (default: as --type)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"output file/dir (default: <path>/{GGUF_NAME} or <path>/{CT_DIR})"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.format == "gguf":
            from infopt.config.exports import check_type

            check_type(args.type, args.float_type)  # before the model loads
        model, tokenizer, where = load_source(args.path)
        if args.format == "gguf":
            from infopt.export.gguf import export_gguf

            info = export_gguf(
                model,
                tokenizer,
                args.out or args.path / GGUF_NAME,
                qtype=args.type,
                float_type=args.float_type,
                output_type=args.output_type,
            )
            out, summary = info.path, info.summary()
        else:
            from infopt.export.compressed_tensors import export_compressed_tensors

            out = export_compressed_tensors(model, tokenizer, args.out or args.path / CT_DIR)
            summary = {"path": str(out)}
        _record(args.path, args.format, out)
        print(f"exported {where} -> {out}")
        for k, v in summary.items():
            print(f"  {k}: {v}")
        return 0
    except InfoptError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _record(run_dir: Path, fmt: str, out: Path) -> None:
    """Add the artifact to the run's results.json, if this is a run directory."""
    from infopt.io import atomic_write_json, read_json

    record = read_json(run_dir / "results.json")
    if isinstance(record, dict) and isinstance(record.get("technique"), dict):
        record["technique"].setdefault("artifacts", {})[fmt] = str(out)
        atomic_write_json(run_dir / "results.json", record)


if __name__ == "__main__":
    sys.exit(main())
