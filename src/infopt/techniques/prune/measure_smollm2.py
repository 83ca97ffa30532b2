"""Pruning measured on the embedded SmolLM2-135M: wall time, held-out perplexity, size, decode speed.

    flock /tmp/infopt-heavy.lock nice python -m infopt.techniques.prune.measure_smollm2 --out outputs/prune_smollm2.json

Every variant starts from the same dense fp32 model and is pruned by ``Prune.apply`` with the
data group's defaults (Lee corpus, 32 calibration windows of 512 tokens). Perplexity is token
perplexity over the first ``--heldout`` 512-token windows of the held-out documents (GPTQ-paper
protocol, ``infopt.evaluation.perplexity``). Decode speed is batch 1, greedy, ``--new-tokens``
tokens after a 32-token prompt, timed in interleaved rounds (dense, then each variant, repeated)
so that machine load hits all models alike; the median round is reported with the ratio to dense
from the same rounds, beside the speedup predicted from weight bytes read per token.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

VARIANTS = {
    "magnitude_50": dict(method="magnitude", sparsity=0.5),
    "wanda_50": dict(method="wanda", sparsity=0.5),
    "sparsegpt_50": dict(method="sparsegpt", sparsity=0.5),
    "wanda_2:4": dict(method="wanda", nm="2:4"),
    "sparsegpt_2:4": dict(method="sparsegpt", nm="2:4"),
    "channels_25": dict(structured=dict(target="channels", ratio=0.25)),
    "channels_50": dict(structured=dict(target="channels", ratio=0.5)),
    "heads_1of3": dict(structured=dict(target="heads", count=1)),
    "layers_drop_8": dict(structured=dict(target="layers", count=8)),
}
TIMED = ["wanda_50", "channels_50", "channels_25"]


def build_config(spec: dict):
    from infopt.techniques.prune.config import PruneConfig, StructuredSettings

    spec = dict(spec)
    structured = StructuredSettings(**spec.pop("structured", {}))
    c = PruneConfig(structured=structured, **spec)
    c.validate()
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/prune_smollm2.json")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--heldout", type=int, default=16, help="held-out 512-token windows for perplexity")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timed", nargs="*", default=TIMED)
    args = ap.parse_args()

    from infopt.bench.interleaved import embedded_setup, interleaved_decode, print_row
    from infopt.bench.size import weight_bytes_per_token
    from infopt.evaluation.perplexity import token_perplexity
    from infopt.techniques.prune.structured import count_params
    from infopt.techniques.prune.technique import Prune

    setup = embedded_setup(args.heldout)
    dense, data, heldout = setup.model, setup.data, setup.heldout
    ctx = SimpleNamespace(data=data, device=torch.device("cpu"), measure=None)
    out: dict = {"load_before": os.getloadavg(), "threads": torch.get_num_threads(), "variants": {}}

    def record(name, model, metrics):
        t = time.perf_counter()
        ppl = token_perplexity(model, heldout)
        row = {
            "ppl_tok512": ppl,
            "ppl_wall_s": time.perf_counter() - t,
            "params": count_params(model),
            "weight_mb_per_token": weight_bytes_per_token(model) / 2**20,
            **{k: v for k, v in metrics.items() if not k.startswith("block_influence")},
        }
        out["variants"][name] = row
        print_row(name, row)

    record("dense", dense, {})
    kept = {"dense": dense}
    for name in args.variants:
        model = copy.deepcopy(dense)
        applied = Prune(build_config(VARIANTS[name])).apply(model, ctx)
        record(name, applied.model, applied.metrics)
        out["variants"][name]["notes"] = applied.notes
        if name in args.timed:
            kept[name] = applied.model
        else:
            del model, applied

    prompt = data.heldout_blocks(32)[:1]  # (1, 32)
    dense_b = out["variants"]["dense"]["weight_mb_per_token"]
    speeds = interleaved_decode(kept, prompt, args.new_tokens, args.rounds, reference="dense") if args.rounds else {}
    for n, speed in speeds.items():
        predicted = dense_b / out["variants"][n]["weight_mb_per_token"]
        out["variants"][n].update(speed, predicted_speedup_bytes=predicted)
        print(n, "tok/s", round(speed["decode_tokens_per_s"], 2), "speedup",
              round(speed["decode_speedup_median_of_rounds"], 3), "predicted", round(predicted, 3), flush=True)
    out["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from infopt.io import atomic_write_json

    atomic_write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
