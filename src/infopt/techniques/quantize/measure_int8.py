"""Quantization of the embedded SmolLM2-135M measured in one process: real int8 speed, weight grid.

    python -m infopt.techniques.quantize.measure_int8 --out docs/int8_speed.json
    python -m infopt.techniques.quantize.measure_int8 --grid --out docs/quant_grid.json

The ``--grid`` variants (RTN and GPTQ at 8/4/3 bits, per channel and group 64) run simulated
(de-quantized floats): they are scored for perplexity only, since their speed is fp32's.

Issue 3's goal: a real int8 path decodes at least 2x faster than fp32 with held-out perplexity
within 5%. Each variant starts from the same dense fp32 model and is quantized by
``Quantize.apply``; perplexity is token perplexity over the first ``--heldout`` 512-token
held-out windows; decode speed is batch 1, greedy, ``--new-tokens`` after a 32-token prompt,
timed in interleaved rounds (``infopt.bench.interleaved``) so load hits every model alike.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

VARIANTS = {
    "dynamic_int8": dict(method="dynamic_int8", execution="real"),
    "dynamic_int8_with_head": dict(method="dynamic_int8", execution="real", ignore=[]),
    "dynamic_int8_torch_ao": dict(method="dynamic_int8", execution="real", dynamic_backend="torch_ao"),
    "smoothquant_w8a8": dict(method="smoothquant", execution="real", ignore=[]),
    "llm_int8": dict(method="llm_int8", execution="real"),
}
# Weight-only grid: SmolLM2's width 576 is not a multiple of 128, so groups of 64.
GRID = {
    f"{method}_w{bits}{'g64' if group == 64 else 'pc'}": dict(method=method, bits=bits, group_size=group)
    for method in ("rtn", "gptq")
    for bits in (8, 4, 3)
    for group in (-1, 64)
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/int8_speed.json")
    ap.add_argument("--variants", nargs="*", default=None, choices=[*VARIANTS, *GRID])
    ap.add_argument("--grid", action="store_true", help="the RTN/GPTQ weight-only grid instead of the int8 kernels")
    ap.add_argument("--heldout", type=int, default=16, help="held-out 512-token windows for perplexity")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    specs = {**VARIANTS, **GRID}
    chosen = args.variants or list(GRID if args.grid else VARIANTS)

    from infopt.bench.interleaved import embedded_setup, interleaved_decode, print_row
    from infopt.bench.size import stored_bytes, weight_bytes_per_token
    from infopt.evaluation.perplexity import token_perplexity
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.technique import Quantize

    if args.threads:
        torch.set_num_threads(args.threads)
    setup = embedded_setup(args.heldout)
    dense, data, heldout = setup.model, setup.data, setup.heldout
    tmp = tempfile.TemporaryDirectory()
    ctx = SimpleNamespace(data=data, device=torch.device("cpu"), output_dir=Path(tmp.name), tokenizer=setup.tokenizer, measure=None)
    out: dict = {"load_before": os.getloadavg(), "threads": torch.get_num_threads(), "variants": {}}

    def record(name, model, metrics):
        t = time.perf_counter()
        row = {
            "ppl_tok512": token_perplexity(model, heldout),
            "ppl_wall_s": time.perf_counter() - t,
            "stored_mb": stored_bytes(model) / 2**20,
            "weight_mb_per_token": weight_bytes_per_token(model) / 2**20,
            **metrics,
        }
        out["variants"][name] = row
        print_row(name, row)

    record("fp32", dense, {})
    models = {"fp32": dense}
    base_ppl = out["variants"]["fp32"]["ppl_tok512"]
    for name in chosen:
        c = QuantizeConfig(**specs[name], export_packed=False)
        c.validate()
        applied = Quantize(c).apply(copy.deepcopy(dense), ctx)
        record(name, applied.model.eval(), {**applied.metrics, "execution": applied.execution})
        out["variants"][name]["ppl_ratio"] = out["variants"][name]["ppl_tok512"] / base_ppl
        if applied.execution == "real":  # simulated weights decode at fp32's speed: nothing to time
            models[name] = applied.model

    prompt = data.heldout_blocks(32)[:1]  # (1, 32)
    timed = interleaved_decode(models, prompt, args.new_tokens, args.rounds, reference="fp32") if len(models) > 1 else {}
    for name, speed in timed.items():
        row = out["variants"][name]
        row.update(speed)
        print(name, "tok/s", round(speed["decode_tokens_per_s"], 2), "speedup",
              round(speed["decode_speedup_median_of_rounds"], 3), "ppl ratio", round(row.get("ppl_ratio", 1.0), 4), flush=True)
    out["load_after"] = os.getloadavg()
    from infopt.io import atomic_write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
