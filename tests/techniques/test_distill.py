"""Knowledge distillation: losses, student construction, cached logits, training, resume, DDP, config errors."""

from __future__ import annotations

import copy
import csv
import math

import lightning as L
import pytest
import torch

from conftest import CACHE_DIR, QUICK, REPO, compose_config
from infopt.errors import ConfigError
from infopt.techniques.distill import losses
from infopt.techniques.distill.config import DistillConfig, LossConfig
from infopt.techniques.distill.student import build_from_teacher

TINY_TRAIN = [
    "technique=distill",
    "technique.train.seq_len=32",
    "technique.train.batch_size=4",
    "technique.train.warmup_steps=2",
    "technique.train.val_batches=2",
    "technique.train.checkpoint_every=0",
    "technique.save_student=false",
]

# --- losses ------------------------------------------------------------------------------------

DIVERGENCES = {
    "forward_kl": losses.forward_kl,
    "reverse_kl": losses.reverse_kl,
    "gjs": lambda s, t: losses.gjs(s, t, beta=0.3),
    "skew_kl": lambda s, t: losses.skew_kl(s, t, alpha=0.1),
}


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_is_zero_for_equal_and_positive_otherwise_with_grads_only_in_student(name):
    fn = DIVERGENCES[name]
    gen = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(2, 5, 50, generator=gen) * 3
    same = teacher_logits.clone().requires_grad_(True)
    t_lp = losses.log_probs(teacher_logits, 2.0)
    zero = fn(losses.log_probs(same, 2.0), t_lp)
    assert abs(zero.item()) < 1e-6
    other = torch.randn(2, 5, 50, generator=gen).requires_grad_(True)
    value = fn(losses.log_probs(other, 2.0), t_lp)
    assert value.item() > 1e-3
    value.backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    assert not teacher_logits.requires_grad and teacher_logits.grad is None


def test_divergences_match_hand_computed_values():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    kl = lambda a, b: float((a * (a / b).log()).sum())  # noqa: E731
    pl, ql = p.log(), q.log()
    assert losses.forward_kl(ql, pl).item() == pytest.approx(kl(p, q), rel=1e-5)
    assert losses.reverse_kl(ql, pl).item() == pytest.approx(kl(q, p), rel=1e-5)
    m = 0.3 * p + 0.7 * q
    assert losses.gjs(ql, pl, beta=0.3).item() == pytest.approx(0.3 * kl(p, m) + 0.7 * kl(q, m), rel=1e-5)
    assert losses.skew_kl(ql, pl, alpha=0.1).item() == pytest.approx(kl(p, 0.1 * p + 0.9 * q), rel=1e-5)


@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_hidden_loss_zero_for_equal_states(metric):
    h = torch.randn(2, 4, 8)
    assert losses.hidden_loss(h.clone(), h, metric).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.hidden_loss(torch.randn(2, 4, 8), h, metric).item() > 1e-3


# --- student ----------------------------------------------------------------------------------


def _layers(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


@pytest.mark.parametrize("keep", [[1], [0], [0, 1]])
def test_from_teacher_copies_exactly_the_chosen_layers(tiny_model, keep):
    student, source = build_from_teacher(tiny_model, keep)
    assert student.config.num_hidden_layers == len(keep) == len(_layers(student))
    t_sd = tiny_model.state_dict()
    for name, tensor in student.state_dict().items():
        torch.testing.assert_close(tensor, t_sd[source[name]], rtol=0, atol=0, msg=name)
    # Layer j of the student is teacher layer keep[j], and no other.
    for j, i in enumerate(keep):
        for (n_s, p_s), (n_t, p_t) in zip(
            _layers(student)[j].named_parameters(), _layers(tiny_model)[i].named_parameters(), strict=True
        ):
            assert n_s == n_t and torch.equal(p_s, p_t)
    if len(keep) == len(_layers(tiny_model)):  # all layers: the same function
        ids = torch.randint(0, 500, (1, 12))
        torch.testing.assert_close(student(input_ids=ids).logits, tiny_model(input_ids=ids).logits)


def test_narrowed_student_keeps_the_largest_units_and_runs(tiny_llama):
    student, source = build_from_teacher(tiny_llama, [1], mlp_ratio=0.5, head_ratio=0.5)
    assert student.config.intermediate_size == 64 and student.config.num_key_value_heads == 1
    up_t = tiny_llama.model.layers[1].mlp.up_proj.weight
    up_s = student.model.layers[0].mlp.up_proj.weight
    # Every kept row is a teacher row, in order.
    rows = [int((up_t == r).all(1).nonzero()) for r in up_s]
    assert rows == sorted(rows) and len(set(rows)) == 64
    assert student(input_ids=torch.randint(0, 500, (1, 8))).logits.shape[-1] == tiny_llama.config.vocab_size


def test_head_narrowing_on_gpt2_is_rejected(tiny_gpt2):
    with pytest.raises(ConfigError, match="head_ratio"):
        build_from_teacher(tiny_gpt2, [0], head_ratio=0.5)


# --- module -----------------------------------------------------------------------------------


def _module(student, teacher, **loss):
    from infopt.techniques.distill.technique import DistillModule

    cfg = DistillConfig(loss=LossConfig(**{"ce": 0.0, "forward_kl": 0.0, **loss}))
    return DistillModule(student, teacher, cfg, vocab_size=teacher.config.vocab_size)


@pytest.mark.parametrize("term", ["forward_kl", "reverse_kl", "gjs", "skew_kl"])
def test_module_loss_zero_for_a_copy_positive_for_a_student_and_grads_only_in_student(tiny_llama, term):
    ids = torch.randint(0, 1000, (2, 16))
    same = _module(copy.deepcopy(tiny_llama).train(), tiny_llama, **{term: 1.0, "temperature": 2.0})
    loss, _ = same.training_loss({"input_ids": ids})
    assert abs(loss.item()) < 1e-5
    student, _ = build_from_teacher(tiny_llama, [1])
    module = _module(student.train(), tiny_llama, **{term: 1.0})
    loss, parts = module.training_loss({"input_ids": ids})
    assert loss.item() > 1e-4 and term in parts
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_llama.parameters())
    assert not tiny_llama.training
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert not any(k.startswith("teacher") for k in module.state_dict()), "the teacher is not checkpointed"


def test_hidden_matching_learns_a_projection_when_widths_differ(tiny_llama, tokenizer):
    from infopt.config.schema import TinyArchConfig
    from infopt.models.tiny import build_tiny
    from infopt.techniques.distill.technique import DistillModule

    narrow = build_tiny(TinyArchConfig(num_layers=1, hidden_size=32, num_heads=4, num_kv_heads=2), len(tokenizer))
    cfg = DistillConfig(loss=LossConfig(ce=0.0, forward_kl=0.0, hidden=1.0))
    module = DistillModule(narrow.train(), tiny_llama, cfg, len(tokenizer), hidden_pairs=[(1, 2)], widths=(32, 64))
    loss, parts = module.training_loss({"input_ids": torch.randint(0, 1000, (2, 8))})
    loss.backward()
    assert parts["hidden"] > 0 and module.proj[0].weight.shape == (64, 32)
    assert module.proj[0].weight.grad is not None


# --- cached top-k -----------------------------------------------------------------------------


def _peaky(model):
    """A teacher whose next-token distributions are concentrated (like a trained LM's)."""
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    return model


@pytest.mark.parametrize("term", ["forward_kl", "reverse_kl", "gjs", "skew_kl"])
def test_cached_topk_reproduces_the_online_loss(tiny_llama, tokenizer, term):
    teacher = _peaky(tiny_llama)
    student = copy.deepcopy(teacher)  # a student part way there: the teacher's weights, perturbed
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.2 * p.std() * torch.randn_like(p))
    ids = torch.randint(0, 5000, (2, 16))
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits
        s_logits = student(input_ids=ids).logits
    fn = DIVERGENCES[term]
    online = fn(losses.log_probs(s_logits), losses.log_probs(t_logits)).item()
    values, indices, lse = losses.teacher_topk(t_logits, 1024)
    covered = (1 / (1 + (lse - values.logsumexp(-1)).exp())).mean().item()  # teacher mass in the top k
    cached = fn(*losses.topk_buckets(s_logits, values, indices, lse)).item()
    assert covered > 0.9, covered  # the teacher is peaky enough for the comparison to mean something
    assert cached <= online * (1 + 1e-4)  # coarse-graining never increases a divergence
    assert cached == pytest.approx(online, rel=0.1), (covered, online, cached)
    # All of the vocabulary in the "top k": exact.
    v, i, z = losses.teacher_topk(t_logits, t_logits.shape[-1])
    assert fn(*losses.topk_buckets(s_logits, v, i, z)).item() == pytest.approx(online, rel=1e-4)


def test_topk_cache_is_safetensors_reused_and_keyed_by_teacher(tiny_llama, tmp_path):
    from infopt.techniques.distill.cache import topk_logits

    blocks = torch.randint(0, 1000, (3, 16))
    first, path, hit = topk_logits(tiny_llama, blocks, 8, tmp_path)
    assert not hit and path.suffix == ".safetensors" and path.read_bytes()[8:9] == b"{"  # JSON header: not pickle
    again, path2, hit2 = topk_logits(tiny_llama, blocks, 8, tmp_path)
    assert hit2 and path2 == path and torch.equal(first["topk_indices"], again["topk_indices"])
    assert not list(path.parent.glob("*.tmp"))
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        other.lm_head.weight.mul_(0.5)  # another teacher (e.g. quantized): another key
    _, path3, hit3 = topk_logits(other, blocks, 8, tmp_path)
    assert not hit3 and path3 != path
    _, path4, _ = topk_logits(tiny_llama, blocks, 4, tmp_path)
    assert path4 != path


# --- training through the technique -----------------------------------------------------------


def _apply(run_context, overrides, tiny_llama):
    from infopt.techniques.distill.technique import Distill

    ctx = run_context([*TINY_TRAIN, *overrides])
    return Distill(ctx.cfg.technique).apply(tiny_llama, ctx), ctx


@torch.no_grad()
def _heldout(model, text_data):
    blocks = text_data.heldout_blocks(32)[:8]
    return losses.cross_entropy(model(input_ids=blocks).logits, blocks).item()


def test_short_fit_lowers_heldout_loss_and_saves_a_normal_checkpoint(run_context, tiny_llama, text_data, tmp_path):
    from transformers import AutoModelForCausalLM

    student, _ = build_from_teacher(tiny_llama, [0])
    before = _heldout(student, text_data)
    applied, _ = _apply(
        run_context,
        ["technique.train.max_steps=12", "technique.train.lr=5e-3", "technique.train.val_every=12",
         "technique.save_student=true", "technique.student.layers=[0]"],
        tiny_llama,
    )  # fmt: skip
    after = _heldout(applied.model, text_data)
    assert after < before - 0.3, (before, after)
    assert applied.metrics["val_loss"] < before and applied.metrics["train_tokens_per_s_median"] > 0
    reloaded = AutoModelForCausalLM.from_pretrained(applied.artifacts["student"])
    ids = torch.randint(0, 1000, (1, 10))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, applied.model(input_ids=ids).logits)
    assert reloaded.config.num_hidden_layers == 1


@pytest.mark.parametrize("mode", ["cached", "sequence"])
def test_cached_and_sequence_modes_train_and_reuse_the_cache(run_context, tiny_llama, mode):
    extra = ["technique.data.mode=" + mode, "technique.train.max_steps=3", "technique.train.val_every=3",
             "technique.data.prompt_len=8", "technique.data.num_sequences=8", "technique.data.top_k=16",
             "technique.data.train_docs=4"]  # fmt: skip
    first, _ = _apply(run_context, [*extra, "technique.train.resume=false"], copy.deepcopy(tiny_llama))
    second, _ = _apply(run_context, [*extra, "technique.train.resume=false"], copy.deepcopy(tiny_llama))
    assert first.metrics.get("cache_hit") in (0.0, 1.0) and second.metrics["cache_hit"] == 1.0
    assert math.isfinite(second.metrics["train_loss"])
    if mode == "sequence":
        from safetensors.torch import load_file

        seqs = load_file(second.artifacts["teacher_sequences"])["sequences"]
        assert seqs.shape == (8, 32)


class _StopAt(L.Callback):
    """Simulates a kill after the checkpoint of step ``step`` is written (as in test_training.py)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step > self.step:
            raise KeyboardInterrupt


def test_killed_run_resumes_to_the_same_final_metrics(run_context, tokenizer, tmp_path, monkeypatch):
    from conftest import _tiny
    from infopt.techniques.distill.technique import Distill
    from infopt.training import trainer as trainer_mod

    # One document: 12 blocks, 6 batches an epoch; the resumed run goes from step 4 through the next epoch.
    overrides = [*TINY_TRAIN, "technique.train.max_steps=12", "technique.train.val_every=4",
                 "technique.train.checkpoint_every=4", "technique.train.lr=1e-3", "technique.student.layers=[1]",
                 "technique.train.batch_size=2", "technique.data.train_docs=1"]  # fmt: skip
    ctx = run_context(overrides)

    def run(out_dir, stop=None):
        import dataclasses

        c = dataclasses.replace(ctx, output_dir=out_dir)
        real = trainer_mod.build_trainer
        if stop is not None:
            monkeypatch.setattr(
                trainer_mod, "build_trainer", lambda *a, **k: real(*a, **{**k, "callbacks": [*k["callbacks"], stop]})
            )
        try:
            return Distill(c.cfg.technique).apply(_tiny(tokenizer, "llama"), c)
        finally:
            monkeypatch.setattr(trainer_mod, "build_trainer", real)

    straight = run(tmp_path / "a")
    with pytest.raises(SystemExit):
        run(tmp_path / "b", stop=_StopAt(4))
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("teacher" in k for k in ckpt["state_dict"]), "the teacher is not in checkpoints"
    resumed = run(tmp_path / "b")
    assert resumed.metrics["resumed"] == 1.0 and straight.metrics["resumed"] == 0.0
    assert ctx.resumed_from == [str(tmp_path / "b" / "checkpoints" / "last.ckpt")]
    for key in ("train_loss", "val_loss", "train_ce", "train_forward_kl", "train_steps"):
        assert resumed.metrics[key] == straight.metrics[key], key  # bit-identical, not approximately
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_ddp_two_cpu_processes_train_and_log_once(run_context, tiny_llama, tmp_path):
    import dataclasses

    from infopt.techniques.distill.technique import Distill
    from infopt.tracking import CsvLogger

    ctx = run_context(
        [*TINY_TRAIN, "hardware.devices=2", "hardware.strategy=ddp_spawn", "logger=csv", "technique.train.max_steps=4",
         "technique.train.val_every=2", "technique.train.batch_size=2", "technique.student.layers=[1]",
         "technique.data.train_docs=30"]
    )  # fmt: skip
    ctx = dataclasses.replace(ctx, logger=CsvLogger(ctx.cfg.logger, tmp_path))
    start = tiny_llama.model.layers[1].mlp.up_proj.weight.clone()
    applied = Distill(ctx.cfg.technique).apply(tiny_llama, ctx)
    # The trained weights come back from the worker processes.
    assert not torch.equal(applied.model.model.layers[0].mlp.up_proj.weight, start)
    assert math.isfinite(applied.metrics["val_loss"])
    files = list(tmp_path.glob("train/**/metrics.csv"))
    assert len(files) == 1, files  # one logger, from rank zero
    with open(files[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and len(steps) == 4, steps  # each step logged once
    assert applied.metrics["train_steps"] == 4
    assert applied.metrics["train_tokens"] == 4 * 2 * 32 * 2  # steps x batch x seq_len x 2 processes


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("technique.loss.gjs_beta=1.5", "technique.loss.gjs_beta=1.5 is out of range"),
        ("technique.loss.temperature=0", "technique.loss.temperature=0"),
        ("technique.loss.skew_alpha=1", "technique.loss.skew_alpha=1"),
        ("technique.loss.forward_kl=-1", "technique.loss.forward_kl=-1"),
        ("technique.loss.hidden_metric=l1", "choose one of: mse, cosine"),
        ("technique.data.mode=offline", "choose one of: online, cached, sequence"),
        ("technique.data.top_k=0", "technique.data.top_k=0"),
        ("technique.student.init=random", "choose one of: from_teacher, model"),
        ("technique.student.layers=[2,1]", "strictly increasing"),
        ("technique.student.mlp_ratio=0", "technique.student.mlp_ratio=0"),
        ("technique.student.init=model", "technique.student.model.name_or_path is required"),
        ("technique.train.max_steps=0", "technique.train.max_steps=0"),
    ],
)
def test_bad_values_are_rejected_before_the_model_loads(override, expected):
    from infopt.composition.validate import validate_config

    with pytest.raises(ConfigError, match=None) as info:
        validate_config(compose_config(["model=tiny_llama", "technique=distill", override]))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_cross_checks():
    from infopt.composition.validate import validate_config

    both = ["model=tiny_llama", "technique=distill"]
    with pytest.raises(ConfigError, match="only logits are cached"):
        validate_config(compose_config([*both, "technique.data.mode=cached", "technique.loss.hidden=1"]))
    with pytest.raises(ConfigError, match="every weight is 0"):
        validate_config(compose_config([*both, "technique.loss.ce=0", "technique.loss.forward_kl=0"]))
    with pytest.raises(ConfigError, match="strategy=ddp_spawn"):
        validate_config(compose_config([*both, "hardware.devices=2"]))
    with pytest.raises(ConfigError, match="prompt_len"):
        validate_config(compose_config([*both, "technique.data.mode=sequence", "technique.data.prompt_len=600"]))


def test_cli_rejects_a_bad_value_in_one_line_with_exit_2():
    from test_cli import run_cli

    proc = run_cli("model=tiny_llama", "technique=distill", "technique.loss.gjs_beta=2", *QUICK)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "technique.loss.gjs_beta=2" in lines[0], proc.stderr


def test_student_with_another_tokenizer_stops_before_its_weights_load(
    run_context, tiny_llama, tokenizer, tmp_path, monkeypatch
):
    from infopt.models import load as load_mod
    from infopt.techniques.distill.technique import Distill

    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<distill-test-token>"])
    other.save_pretrained(tmp_path / "tok")
    ctx = run_context([*TINY_TRAIN, "technique.student.init=model",
                       f"technique.student.model={{name: s, source: tiny, tokenizer: {tmp_path / 'tok'}}}"])  # fmt: skip

    def no_load(*a, **k):
        raise AssertionError("the student's weights must not load")

    monkeypatch.setattr(load_mod, "load_model", no_load)
    with pytest.raises(ConfigError, match="tokenizer differs from the teacher's"):
        Distill(ctx.cfg.technique).apply(tiny_llama, ctx)


def test_separate_student_model_trains(run_context, tiny_llama):
    applied, _ = _apply(
        run_context,
        ["technique.student.init=model", "technique.student.model={name: s, source: tiny, tiny: {num_layers: 1, hidden_size: 32}}",
         "technique.loss.hidden=1.0", "technique.train.max_steps=2", "technique.train.val_every=2"],
        tiny_llama,
    )  # fmt: skip
    assert applied.model.config.hidden_size == 32 and math.isfinite(applied.metrics["train_hidden"])


def test_distill_then_quantize_and_experiments_compose():
    from infopt.composition.validate import validate_config

    cfg = validate_config(compose_config(["technique=distill_then_quantize", "model=tiny_llama"]))
    assert cfg.technique.stages[0]["name"] == "distill"
    assert (REPO / "conf" / "technique" / "distill.yaml").is_file() and CACHE_DIR


def test_prune_recover_quantize_distils_the_pruned_model_from_the_unpruned_one(tiny_llama, tokenizer, tmp_path):
    """Stage 2 trains the pruned model itself (zeros kept) against the model before pruning."""
    from conftest import QUICK, run_main
    from infopt.config.schema import DataConfig
    from infopt.data.text import TextData
    from infopt.training.module import mean_lm_loss

    small = ("++technique.stages.1.train.max_steps=2", "++technique.stages.1.train.seq_len=32",
             "++technique.stages.1.train.val_every=2", "++technique.stages.1.train.val_batches=1",
             "++technique.stages.1.train.checkpoint_every=0", "++technique.stages.2.group_size=32",
             "++technique.stages.2.method=rtn", "technique.measure_stages=false", "eval.tasks=[]")  # fmt: skip
    record = run_main(["model=tiny_llama", *QUICK, "technique=prune_recover_quantize", *small], tmp_path)
    distill = record["stages"][1]
    assert distill["name"] == "distill"
    assert distill["metrics"]["param_ratio"] == 1.0  # the student is the pruned model, not a smaller one
    assert distill["metrics"]["kept_zero_fraction"] == 1.0  # its masks survived training
    # The teacher is the unpruned model (the tiny_llama fixture is the run's model, same seed): its
    # held-out loss on the validation blocks is the dense model's.
    blocks = TextData(DataConfig(name="lee_news"), tokenizer).heldout_blocks(32)[:4]
    dense_loss = mean_lm_loss(tiny_llama, blocks, 4, len(tokenizer))
    assert distill["metrics"]["teacher_val_loss"] == pytest.approx(dense_loss, rel=1e-5)
