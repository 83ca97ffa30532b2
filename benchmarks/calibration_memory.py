"""Peak memory of the layer-by-layer calibration pass, against model depth (a client of the public API).

The sequential runner (``infopt.calibration``) holds one block's inputs for every calibration batch and
one block's statistics at a time, so the memory above the model's own weights should not grow with the
number of layers. This measures it: a calibrated method (GPTQ: Hessians; Wanda: column norms) on a model
and on the same shape with half (and a quarter) of its layers, peak RSS above the loaded model.

    python benchmarks/calibration_memory.py --model smollm2_135m --method gptq
    python benchmarks/calibration_memory.py --model llama_1b_shape --method wanda --samples 8

Writes results/benchmarks/calibration_memory_<model>_<method>.json (with the command, load and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def measure(model_name: str, method: str, layers: int | None, samples: int, seq_len: int) -> dict:
    import copy

    import torch

    from infopt.bench.measure import PeakMemory
    from infopt.context import RunContext
    from infopt.models import surgery

    technique = ["technique=quantize", "technique.method=gptq"] if method == "gptq" else ["technique=prune"]
    overrides = [f"model={model_name}", *technique, f"data.calibration_samples={samples}",
                 f"data.seq_len={seq_len}", "logger=none", "bench=none"]  # fmt: skip
    ctx, model = RunContext.standalone(overrides)
    if layers is not None:
        surgery.keep_layers(model, list(range(layers)))
    from infopt.techniques.registry import build

    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    with PeakMemory(torch.device("cpu")) as mem:
        t = time.perf_counter()
        build(copy.deepcopy(ctx.cfg.technique)).apply(model, ctx)
        wall = time.perf_counter() - t
    return {
        "model": model_name, "method": method, "layers": surgery.num_layers(model),
        "calibration_tokens": samples * seq_len, "weights_mb": weights_mb,
        "peak_above_start_mb": (mem.peak - mem.start) / 2**20, "wall_s": wall,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--method", choices=("gptq", "wanda"), default="gptq")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    import subprocess

    from infopt.bench.hardware import cpu_name
    from infopt.composition import compose
    from infopt.composition.validate import to_object
    from infopt.models.load import architecture_config
    from infopt.models.surgery import unit_counts

    total = unit_counts(architecture_config(to_object(compose([f"model={args.model}"])).model, None))["layers"]
    rows = []
    for layers in (total // 4, total // 2, total):  # each depth in a fresh process: a clean peak
        code = (f"import json, sys; sys.argv = ['x']; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
                f"import calibration_memory as m; print(json.dumps(m.measure({args.model!r}, {args.method!r}, {layers}, "
                f"{args.samples}, {args.seq_len})))")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    record = {"command": " ".join(["python", *sys.argv]), "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
              "loadavg_end": list(os.getloadavg()), "rows": rows}  # fmt: skip
    target = REPO / "results" / "benchmarks" / f"calibration_memory_{args.model}_{args.method}.json"
    from infopt.io import atomic_write_json

    atomic_write_json(target, record)
    print(target.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
