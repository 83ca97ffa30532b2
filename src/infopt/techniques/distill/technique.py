"""``technique=distill``: train a student on the model under study (the teacher) with Lightning.

The teacher is held frozen outside the module tree (``Frozen``: eval mode, no gradients, not in
``state_dict`` or checkpoints). Losses are a weighted sum of the terms in ``technique.loss``
(``losses.py`` cites each one's paper). Data modes: ``online`` (teacher forward inside the step),
``cached`` (teacher top-k logits computed once per teacher x data x k and stored as safetensors,
``cache.py``) and ``sequence`` (sequence-level KD on teacher-generated continuations, Kim & Rush
2016). The trained student is what the run evaluates and benchmarks against the teacher's baseline,
and is saved as a normal transformers checkpoint in ``<run dir>/student`` (usable as a speculative
draft with ``technique.draft.kind=path``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn

from infopt.errors import ConfigError
from infopt.models.surgery import hidden_size, num_layers, parameter_count
from infopt.techniques.base import Applied, Technique
from infopt.techniques.distill import losses
from infopt.techniques.distill.config import DistillConfig
from infopt.training.module import CausalLMModule, Frozen, mean_lm_loss

if TYPE_CHECKING:
    from infopt.config.schema import InfoptConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)

KD_TERMS = ("forward_kl", "reverse_kl", "gjs", "skew_kl")


class DistillModule(CausalLMModule):
    """Student training step: weighted CE + divergences to the teacher + hidden-state matching.

    ``hidden_pairs`` lists (student hidden-state index, teacher hidden-state index) in the
    ``output_hidden_states`` tuples (index i + 1 is the output of layer i). A learned linear
    projection maps student states to the teacher's width when they differ (trained with the
    student, kept in checkpoints, not part of the saved student).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        cfg: DistillConfig,
        vocab_size: int,
        hidden_pairs: list[tuple[int, int]] | None = None,
        widths: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(student, cfg.train)
        self.teacher = Frozen(teacher) if teacher is not None else None
        self.loss_cfg = cfg.loss
        self.weights = cfg.loss.weights()
        self.vocab_size = vocab_size
        self.hidden_pairs = hidden_pairs or []
        self.proj: nn.ModuleList | None = None
        if self.weights.get("hidden") and self.hidden_pairs:
            assert widths is not None
            d_s, d_t = widths
            self.proj = nn.ModuleList(
                nn.Linear(d_s, d_t, bias=False) if d_s != d_t else nn.Identity() for _ in self.hidden_pairs
            )

    def on_fit_start(self) -> None:
        if self.teacher is not None:  # not registered, so Lightning neither moves nor casts it
            precision = str(self.trainer.precision)
            dtype = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision)
            self.teacher.module.to(device=self.device, dtype=dtype)  # "-mixed": autocast covers the teacher

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = batch["input_ids"]
        w, cfg = self.weights, self.loss_cfg
        want_hidden = bool(w.get("hidden"))
        out = self.model(input_ids=ids, output_hidden_states=want_hidden)
        logits = out.logits[..., : self.vocab_size]
        parts: dict[str, torch.Tensor] = {}
        if "ce" in w:
            parts["ce"] = losses.cross_entropy(logits, ids)
        kd = [t for t in KD_TERMS if t in w]
        t_out = None
        if (kd and "topk_values" not in batch) or want_hidden:
            if self.teacher is None:
                raise RuntimeError("this loss needs the teacher's forward but no teacher was given")
            t_out = self.teacher(input_ids=ids, output_hidden_states=want_hidden)
        if kd:
            T = cfg.temperature
            if "topk_values" in batch:
                s_lp, t_lp = losses.topk_buckets(
                    logits, batch["topk_values"], batch["topk_indices"], batch["topk_rest"], T
                )
            else:
                assert t_out is not None
                s_lp, t_lp = losses.log_probs(logits, T), losses.log_probs(t_out.logits[..., : self.vocab_size], T)
            scale = T * T  # Hinton et al. 2015: keeps gradient size independent of T
            if "forward_kl" in w:
                parts["forward_kl"] = scale * losses.forward_kl(s_lp, t_lp)
            if "reverse_kl" in w:
                parts["reverse_kl"] = scale * losses.reverse_kl(s_lp, t_lp)
            if "gjs" in w:
                parts["gjs"] = scale * losses.gjs(s_lp, t_lp, cfg.gjs_beta)
            if "skew_kl" in w:
                parts["skew_kl"] = scale * losses.skew_kl(s_lp, t_lp, cfg.skew_alpha)
        if want_hidden:
            assert t_out is not None and self.proj is not None
            terms = [
                losses.hidden_loss(proj(out.hidden_states[si]), t_out.hidden_states[ti], cfg.hidden_metric)
                for proj, (si, ti) in zip(self.proj, self.hidden_pairs, strict=True)
            ]
            parts["hidden"] = torch.stack(terms).mean()
        loss = sum(w[name] * value for name, value in parts.items())
        assert isinstance(loss, torch.Tensor)
        return loss, {k: v.detach() for k, v in parts.items()}


class _StepStats(L.Callback):
    """Per-step tokens/s (for a median) and the fit's wall time, on rank zero."""

    def __init__(self) -> None:
        self.tokens_per_s: list[float] = []
        self.t0: float | None = None
        self.wall_s = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        v = trainer.callback_metrics.get("train/tokens_per_s")
        if v is not None:
            self.tokens_per_s.append(float(v))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.t0 is not None:
            self.wall_s = time.perf_counter() - self.t0


@dataclass
class TeacherData:
    """Training blocks and what the teacher precomputed for them."""

    blocks: torch.Tensor  # (N, seq_len) token ids
    extras: dict[str, torch.Tensor] | None = None  # cached mode: per-block top-k logits
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)


def _logit_width(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


class Distill(Technique):
    """Knowledge distillation into a smaller student (see the module docstring)."""

    config: DistillConfig
    needs_data = True

    @property
    def needs_float_weights(self) -> bool:  # type: ignore[override]
        """Only a student trained in place (init=incoming) modifies the incoming weights. Otherwise the
        teacher is only read, so distillation may follow a quantization stage (a from_teacher student
        needs the teacher's float tensors: build_from_teacher rejects real low-bit kernels)."""
        return self.config.student.init == "incoming"

    @property
    def needs_original_model(self) -> bool:
        """The pipeline keeps a copy of the model as loaded for a teacher=original stage."""
        return self.config.teacher == "original"

    def check(self, cfg: InfoptConfig) -> None:
        from infopt.techniques.pipeline import has_training_documents

        if has_training_documents(cfg.data) is False:
            raise ConfigError(
                f"technique=distill needs training text but data.max_docs={cfg.data.max_docs} leaves no training documents"
            )
        hw = cfg.hardware
        if hw.devices > 1 and hw.strategy == "auto":
            raise ConfigError(
                f"hardware.devices={hw.devices} with hardware.strategy=auto: set hardware.strategy=ddp_spawn (or ddp) for data-parallel training"
            )
        seq_len = self.config.train.seq_len or cfg.data.seq_len
        if self.config.data.mode == "sequence" and self.config.data.prompt_len >= seq_len:
            raise ConfigError(
                f"technique.data.prompt_len={self.config.data.prompt_len} must be < the training seq_len {seq_len} (room to generate)"
            )

    # --- pieces ---------------------------------------------------------------------------------

    def _student(self, teacher: nn.Module, incoming: nn.Module, ctx: RunContext) -> tuple[nn.Module, list[int] | None]:
        s = self.config.student
        if s.init == "incoming":
            for p in incoming.parameters():
                p.requires_grad_(True)
            return incoming.train(), None
        if s.init == "from_teacher":
            from infopt.techniques.distill.student import build_from_teacher, chosen_layers

            total = num_layers(teacher)
            layers = chosen_layers(total, s.layer_stride, s.layers)
            if len(layers) == total and s.mlp_ratio == 1.0 and s.head_ratio == 1.0:
                log.warning("the student keeps all %d teacher layers at full width", total)
            student, _ = build_from_teacher(teacher, layers, s.mlp_ratio, s.head_ratio)
            return student.to(ctx.device), layers
        return self._load_student_model(teacher, ctx), None

    def _load_student_model(self, teacher: nn.Module, ctx: RunContext) -> nn.Module:
        """A separate student model; its tokenizer must be the teacher's (checked before its weights load)."""
        from infopt.models.load import load_model, load_tokenizer, resolve

        mcfg = self.config.student.model
        assert mcfg is not None
        resolved = resolve(mcfg)
        student_tok = load_tokenizer(resolved.tokenizer, ctx.cache_dir, mcfg.trust_remote_code)
        check_same_vocabulary(ctx.tokenizer, student_tok)
        student = load_model(mcfg, resolved, student_tok, ctx.cache_dir, seed=self.config.train.seed)
        return student.to(ctx.device)

    def _train_blocks(self, ctx: RunContext, seq_len: int) -> torch.Tensor:
        blocks = self._own_blocks(ctx, seq_len)
        if self.config.data.mix == "none":
            return blocks
        from infopt.data.blocks import contiguous_blocks, tokenize_stream
        from infopt.data.corpus import EXTRA_SOURCES

        other = contiguous_blocks(tokenize_stream(ctx.tokenizer, EXTRA_SOURCES[self.config.data.mix]()), seq_len)
        n = min(len(blocks), len(other))  # equal token shares: as many blocks of each
        return torch.cat([blocks[:n], other[:n]])

    def _own_blocks(self, ctx: RunContext, seq_len: int) -> torch.Tensor:
        from infopt.data.blocks import contiguous_blocks, tokenize_stream

        n = self.config.data.train_docs
        if n is None:
            return ctx.data.train_blocks(seq_len)
        docs = ctx.data.corpus.train
        if n > len(docs):
            raise ConfigError(f"technique.data.train_docs={n} but the data group has {len(docs)} training documents")
        try:
            return contiguous_blocks(tokenize_stream(ctx.tokenizer, docs[:n]), seq_len)
        except ValueError:
            raise ConfigError(
                f"technique.data.train_docs={n}: those documents hold fewer than one block of {seq_len} tokens; raise it"
            ) from None

    # --- apply ----------------------------------------------------------------------------------

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        cfg = self.config
        teacher = (ctx.original if cfg.teacher == "original" and ctx.original is not None else model).eval()
        seq_len = cfg.train.seq_len or ctx.cfg.data.seq_len
        L.seed_everything(cfg.train.seed, workers=True)
        student, layers = self._student(teacher, model, ctx)
        vocab = len(ctx.tokenizer)
        widths = (_logit_width(teacher), _logit_width(student))
        if min(widths) < vocab:
            raise ConfigError(
                f"teacher and student logits ({widths[0]} and {widths[1]} wide) do not cover the tokenizer's {vocab} tokens"
            )
        data = self._teacher_data(teacher, ctx, seq_len)
        val_blocks = ctx.data.heldout_blocks(seq_len)
        # The teacher's loss on exactly the held-out blocks the student's val/loss is computed on.
        n_val = cfg.train.val_batches * cfg.train.batch_size
        data.metrics["teacher_val_loss"] = mean_lm_loss(teacher, val_blocks[:n_val], cfg.train.batch_size, vocab)
        module = self._module(teacher, student, layers, data.extras is None, vocab)
        masks = self._kept_zeros(student)
        trainer, stats, resumed = self._fit(module, data, val_blocks, ctx, masks)
        student = module.model
        if cfg.train.lora.enabled:
            from infopt.training.lora import merge_lora

            student = merge_lora(student)
        student = student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
        metrics = {
            **data.metrics,
            **self._train_metrics(teacher, student, trainer, stats, resumed, seq_len, val_blocks[:n_val], vocab),
        }
        if masks:  # the pruned student's zeros: how many are still zero after training (1.0: all kept)
            kept = [(module.model.get_submodule(n).weight == 0)[~m].float().mean() for n, m in masks.items()]
            metrics["kept_zero_fraction"] = float(torch.stack(kept).mean())
        artifacts = dict(data.artifacts)
        if cfg.save_student:
            from infopt.models.save import save_hf

            artifacts["student"] = str(save_hf(student, ctx.tokenizer, ctx.output_dir / "student"))
        data.notes.append(
            f"student: {metrics['student_layers']:.0f} layers, {metrics['param_ratio']:.2f}x the teacher's parameters, "
            f"{cfg.data.mode} mode, loss {cfg.loss.weights()}"
        )
        return Applied(model=student, execution="dense", metrics=metrics, notes=data.notes, artifacts=artifacts)

    def _teacher_data(self, teacher: nn.Module, ctx: RunContext, seq_len: int) -> TeacherData:
        """The training blocks, with the teacher's signal where it is precomputed (cached logits, sequences)."""
        from infopt.techniques.distill import cache

        cfg = self.config
        out = TeacherData(self._train_blocks(ctx, seq_len))
        t = time.perf_counter()
        if cfg.data.mode == "cached" and cfg.loss.needs_teacher_logits:
            out.extras, path, hit = cache.topk_logits(
                teacher, out.blocks, cfg.data.top_k, ctx.cache_dir, cfg.data.gen_batch_size
            )
            out.artifacts["teacher_topk"] = str(path)
            out.notes.append(
                f"cached mode: teacher top-{cfg.data.top_k} logits {'reused from' if hit else 'computed into'} {path.name}; "
                "divergences over top-k + rest buckets (exact at T=1)"
            )
            out.metrics["cache_hit"] = float(hit)
        elif cfg.data.mode == "sequence":
            out.blocks, path, hit = cache.teacher_sequences(
                teacher, out.blocks, cfg.data.prompt_len, seq_len, ctx.cache_dir,
                count=cfg.data.num_sequences, sample=cfg.data.sample, seed=cfg.train.seed,
                batch_size=cfg.data.gen_batch_size, pad_token_id=ctx.tokenizer.pad_token_id,
            )  # fmt: skip
            out.artifacts["teacher_sequences"] = str(path)
            out.notes.append(
                f"sequence mode: {out.blocks.shape[0]} teacher continuations of {cfg.data.prompt_len}-token prompts"
            )
            out.metrics["cache_hit"] = float(hit)
        out.metrics["teacher_data_s"] = time.perf_counter() - t
        if out.blocks.shape[0] < cfg.train.batch_size:
            raise ConfigError(
                f"{out.blocks.shape[0]} training blocks of {seq_len} tokens < technique.train.batch_size={cfg.train.batch_size}"
            )
        return out

    def _module(
        self, teacher: nn.Module, student: nn.Module, layers: list[int] | None, online: bool, vocab: int
    ) -> DistillModule:
        cfg = self.config
        hidden_pairs = self._hidden_pairs(teacher, student, layers) if cfg.loss.hidden else None
        needs_teacher = cfg.loss.hidden > 0 or (cfg.loss.needs_teacher_logits and online)
        if cfg.train.lora.enabled:
            from infopt.training.lora import apply_lora

            student = apply_lora(student, cfg.train.lora)
        widths = (hidden_size(student.config), hidden_size(teacher.config))
        return DistillModule(student, teacher if needs_teacher else None, cfg, vocab, hidden_pairs, widths)

    def _kept_zeros(self, student: nn.Module) -> dict[str, torch.Tensor] | None:
        """A student trained in place keeps its exact zeros (a pruned model's masks), unless told not to."""
        s = self.config.student
        if s.init != "incoming" or not s.keep_zeros:
            return None
        from infopt.training.masks import module_masks, zero_masks

        return module_masks(student, zero_masks(student)) or None

    def _fit(self, module: DistillModule, data: TeacherData, val_blocks: torch.Tensor, ctx: RunContext,
             masks: dict[str, torch.Tensor] | None = None):  # fmt: skip
        from infopt.training.data import BlockDataModule, BlockDataset
        from infopt.training.masks import MaskKeeper
        from infopt.training.trainer import build_trainer, fit

        train = self.config.train
        datamodule = BlockDataModule(
            BlockDataset(data.blocks, data.extras), BlockDataset(val_blocks), train.batch_size,
            seed=train.seed, accumulate=train.accumulate,
        )  # fmt: skip
        stats = _StepStats()
        callbacks: list = [stats]
        if masks:
            callbacks.append(MaskKeeper(module.model, masks))
        trainer = build_trainer(
            ctx.cfg.hardware, train, ctx.output_dir, logger=ctx.logger.lightning_logger(), callbacks=callbacks
        )
        resumed = fit(trainer, module, datamodule, ctx.output_dir, resume=train.resume)
        if masks:
            MaskKeeper(module.model, masks).apply()
        if resumed is not None:
            ctx.resumed_from.append(str(resumed))
        return trainer, stats, resumed

    def _train_metrics(self, teacher, student, trainer, stats: _StepStats, resumed, seq_len: int,
                       val_blocks: torch.Tensor, vocab: int) -> dict[str, float]:  # fmt: skip
        from infopt.training.trainer import train_metrics

        train = self.config.train
        # The last logged train/* values (restored with a checkpoint) and the final student's loss on
        # the teacher_val_loss blocks: both the same whether or not the run was resumed.
        cm = {**train_metrics(trainer), "val/loss": mean_lm_loss(student, val_blocks, train.batch_size, vocab)}
        devices = max(1, int(getattr(trainer, "world_size", 1)))
        # Under ddp_spawn the main process gets the weights and metrics back, not the loop counters.
        steps = trainer.global_step or (train.max_steps if trainer.state.finished else 0)
        metrics = {
            "teacher_params": float(parameter_count(teacher)),
            "student_params": float(parameter_count(student)),
            "param_ratio": parameter_count(student) / parameter_count(teacher),
            "student_layers": float(getattr(student.config, "num_hidden_layers", 0)),
            "train_tokens": float(train.max_steps * train.batch_size * train.accumulate * seq_len * devices),
            "train_wall_s": stats.wall_s,
            "train_steps": float(steps),
            "resumed": float(resumed is not None),
        }
        if stats.tokens_per_s:
            metrics["train_tokens_per_s_median"] = statistics.median(stats.tokens_per_s)
        # train/tokens_per_s: the last step's (the median above needs rank zero's callback, not ddp_spawn's)
        logged = ("train/loss", "val/loss", "train/peak_memory_mb", "train/tokens_per_s",
                  *(f"train/{t}" for t in ("ce", *KD_TERMS, "hidden")))  # fmt: skip
        metrics.update({k.replace("/", "_"): cm[k] for k in logged if k in cm})
        return metrics

    def _hidden_pairs(self, teacher: nn.Module, student: nn.Module, layers: list[int] | None) -> list[tuple[int, int]]:
        n_s, n_t = num_layers(student), num_layers(teacher)
        mapping = self.config.loss.hidden_layers
        if mapping is not None:
            if len(mapping) != n_s or max(mapping) >= n_t:
                raise ConfigError(
                    f"technique.loss.hidden_layers={list(mapping)}: need one teacher layer (0..{n_t - 1}) per student layer ({n_s})"
                )
        elif layers is not None:
            mapping = layers
        else:
            mapping = [max(0, round((j + 1) * n_t / n_s) - 1) for j in range(n_s)]
        # hidden_states[i + 1] is layer i's output; the student's last entry is after its final norm,
        # so its last layer is matched only when it maps to the teacher's last layer too.
        return [(j + 1, t + 1) for j, t in enumerate(mapping) if j < n_s - 1 or t == n_t - 1]


def check_same_vocabulary(teacher_tok: Any, student_tok: Any) -> None:
    """Raise ConfigError when teacher and student cannot share token ids (before the student loads)."""
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a != b:
        diff = len(set(a.items()) ^ set(b.items()))
        raise ConfigError(
            f"technique.student.model: the student's tokenizer differs from the teacher's ({len(b)} vs {len(a)} tokens, "
            f"{diff} differing token-id pairs); distillation here needs the same tokenizer and vocabulary"
        )
