"""Lightning's overhead over a plain PyTorch loop doing the same distillation steps.

Both loops call the same ``DistillModule.training_loss`` on the same batches, with AdamW, the same
LR schedule and gradient clipping; the Lightning side is the trainer infopt builds
(``build_trainer``: no logger, no checkpoints, no validation inside the timed steps). Time per
optimizer step is the median of the gaps between consecutive step ends (the first ``--skip``
steps dropped); rounds alternate plain / Lightning so that load drift hits both.

    python benchmarks/lightning_overhead.py --model smollm2_135m --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import tempfile

    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    from infopt.composition.store import register_configs
    from infopt.composition.validate import to_object
    from infopt.config.schema import HardwareConfig
    from infopt.data.text import TextData
    from infopt.models.load import load_model, load_tokenizer, resolve
    from infopt.models.surgery import num_layers
    from infopt.techniques.distill.config import DistillConfig, LossConfig
    from infopt.techniques.distill.student import build_from_teacher, chosen_layers
    from infopt.techniques.distill.technique import DistillModule
    from infopt.training.config import TrainConfig
    from infopt.training.data import BlockDataModule, BlockDataset
    from infopt.training.module import lr_lambda
    from infopt.training.trainer import build_trainer

    torch.set_num_threads(args.threads)
    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"model={args.model}", "paths.output_dir=/tmp", "paths.cache_dir=" + str(Path.home())],
        )
    import os

    cache_dir = Path(os.environ.get("INFOPT_CACHE_DIR", Path.home() / ".cache" / "infopt"))
    mcfg = to_object(cfg).model
    resolved = resolve(mcfg)
    tok = load_tokenizer(resolved.tokenizer, cache_dir)
    teacher = load_model(mcfg, resolved, tok, cache_dir)
    data = TextData(to_object(cfg).data, tok)
    blocks = data.train_blocks(args.seq_len)[: args.batch_size * (args.steps + 1)]
    train = TrainConfig(
        max_steps=args.steps, batch_size=args.batch_size, lr=3e-4, warmup_steps=2, val_every=10**6, checkpoint_every=0
    )
    dcfg = DistillConfig(loss=LossConfig(ce=0.0, forward_kl=1.0), train=train)
    layers = chosen_layers(num_layers(teacher), 2, None)

    def fresh_module() -> DistillModule:
        L.seed_everything(0)
        student, _ = build_from_teacher(teacher, layers)
        return DistillModule(student.train(), teacher, dcfg, len(tok))

    def plain() -> list[float]:
        module = fresh_module()
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train))
        ends = [time.perf_counter()]
        for step in range(args.steps):
            batch = {"input_ids": blocks[step * args.batch_size : (step + 1) * args.batch_size]}
            loss, _ = module.training_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.clip_grad)
            opt.step()
            sched.step()
            ends.append(time.perf_counter())
        return [b - a for a, b in zip(ends, ends[1:], strict=False)]

    class Ends(L.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_start(self, trainer, pl_module) -> None:
            self.ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, *a) -> None:
            self.ends.append(time.perf_counter())

    def lightning() -> list[float]:
        module = fresh_module()
        ends = Ends()
        dm = BlockDataModule(BlockDataset(blocks), BlockDataset(blocks[: args.batch_size]), args.batch_size, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(HardwareConfig(name="cpu"), train, Path(tmp), callbacks=[ends])
            trainer.fit(module, datamodule=dm)
        return [b - a for a, b in zip(ends.ends, ends.ends[1:], strict=False)]

    per = {"plain": [], "lightning": []}
    for _ in range(args.rounds):
        for name, fn in (("plain", plain), ("lightning", lightning)):
            per[name].extend(fn()[args.skip :])
    med = {k: statistics.median(v) for k, v in per.items()}
    result = {
        "model": args.model,
        "student_layers": len(layers),
        "tokens_per_step": args.batch_size * args.seq_len,
        "steps_timed_each": len(per["plain"]),
        "median_s_per_step": med,
        "tokens_per_s": {k: args.batch_size * args.seq_len / v for k, v in med.items()},
        "lightning_overhead": med["lightning"] / med["plain"] - 1.0,
        "threads": args.threads,
        "loadavg": os.getloadavg(),
        "all_steps_s": per,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "all_steps_s"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
