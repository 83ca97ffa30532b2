"""Speculative decoding (greedy): a draft proposes tokens, the target verifies them in one pass.

Leviathan, Kalman & Matias (2023), "Fast Inference from Transformers via Speculative Decoding"
(also Chen et al. 2023): a cheap draft proposes gamma tokens; the target scores all of them in one
forward; under greedy decoding the longest prefix equal to the target's own argmax is kept, plus the
target's token after it, so the output is exactly plain greedy decoding's (up to float ties). With
a per-token acceptance probability a and draft/target cost ratio c, Thm 3.8 predicts a walltime
speedup of (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1)).

Drafts: ``layer_subset`` (a copy of the target keeping every k-th layer: a zero-training draft
sharing the target's embeddings and head), ``model`` (any model config, e.g. a distilled student),
``path`` (a saved model dir or an earlier run's dir). Prompt-lookup decoding (Saxena 2023) drafts
by matching the last n-gram against the prompt instead: free drafts, useful when the output copies
the input (summaries, edits). transformers' assisted generation does the decoding; this module
builds the draft, rejects one whose vocabulary differs before any work, records what each step
proposed and accepted, and compares tokens and time with plain greedy decoding on the same prompts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from infopt.bench.timing import timed
from infopt.errors import ConfigError
from infopt.models.surgery import keep_layers, model_device, num_layers, parameter_count
from infopt.techniques.architecture.common import decode_step_seconds, divergence, document_prompts, eos_ids, greedy
from infopt.techniques.architecture.config import SpeculativeConfig
from infopt.techniques.base import Applied, Technique

if TYPE_CHECKING:
    from infopt.config.schema import InfoptConfig, ModelConfig
    from infopt.context import RunContext

log = logging.getLogger(__name__)


# --- the formula -----------------------------------------------------------------------------


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """E[tokens per target pass] = (1 - a^(gamma+1)) / (1 - a) (Leviathan et al. 2023, eq. 1)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, gamma: int, cost_ratio: float) -> float:
    """Walltime speedup of Thm 3.8: (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1))."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * cost_ratio + 1)


# --- drafts ----------------------------------------------------------------------------------


def layer_subset_indices(num_layers: int, stride: int) -> list[int]:
    """Layers 0, k, 2k, ... and the last one (its output is what the final norm and head were trained on)."""
    keep = list(range(0, num_layers, stride))
    if keep[-1] != num_layers - 1:
        keep.append(num_layers - 1)
    return keep


def layer_subset_draft(model: nn.Module, stride: int) -> nn.Module:
    """A copy of ``model`` keeping every ``stride``-th decoder layer (weights copied, not retrained)."""
    total = num_layers(model)
    keep = layer_subset_indices(total, stride)
    if len(keep) == total:
        raise ConfigError(f"technique.draft.layer_stride={stride} keeps all {total} layers; use a larger stride")
    return keep_layers(copy.deepcopy(model), keep).eval()


def _model_dir(path: str) -> Path:
    """A saved model dir, or a run dir with the model under model/."""
    p = Path(path).expanduser()
    for candidate in (p, p / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(
        f"technique.draft.path={path!r}: no config.json there or under model/ (give a saved model dir or a run dir saved with technique.save_model=true)"
    )


def _local_tokenizer_source(model_cfg: ModelConfig) -> str | None:
    """The tokenizer source if it can be read without the hub, else None."""
    if model_cfg.source in ("embedded", "tiny") and model_cfg.tokenizer in (None, "embedded"):
        return "embedded"
    src = model_cfg.tokenizer or model_cfg.name_or_path
    if src == "embedded":
        return src
    if src and Path(src).expanduser().is_dir():
        return str(Path(src).expanduser())
    return None


def _has_tokenizer(directory: Path) -> bool:
    return any(
        (directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )


def same_vocabulary(
    target_tok, draft_tok, target_vocab_size: int | None, draft_vocab_size: int | None, what: str
) -> None:
    """Raise ConfigError naming the difference when draft and target cannot share token ids."""
    if (
        target_vocab_size is not None
        and draft_vocab_size is not None
        and target_vocab_size != draft_vocab_size
    ):
        raise ConfigError(
            f"{what}: the draft's vocabulary has {draft_vocab_size} entries, the target's {target_vocab_size}; "
            "speculative decoding here needs the same tokenizer and vocabulary"
        )
    if (
        target_tok is not None
        and draft_tok is not None
        and target_tok.get_vocab() != draft_tok.get_vocab()
    ):
        diff = len(set(target_tok.get_vocab().items()) ^ set(draft_tok.get_vocab().items()))
        raise ConfigError(
            f"{what}: the draft's tokenizer differs from the target's ({diff} differing token-id pairs; "
            f"{len(draft_tok)} vs {len(target_tok)} tokens); speculative decoding here needs the same tokenizer"
        )


# --- recording what each step proposed and accepted -------------------------------------------


@dataclass
class StepRecord:
    proposed: list[int] = field(default_factory=list)  # draft tokens offered per target pass
    accepted: list[int] = field(default_factory=list)  # of those, how many the target kept
    draft_s: float = 0.0  # wall time spent producing drafts

    def clear(self) -> None:
        self.proposed.clear()
        self.accepted.clear()
        self.draft_s = 0.0


class Recorder:
    """Wraps the candidate generator generate() builds, to see every step's proposal and matches."""

    def __init__(self, model: nn.Module) -> None:
        self.record = StepRecord()
        self._model = model
        self._orig = model._get_candidate_generator

        def build(*args: Any, **kwargs: Any):
            gen = self._orig(*args, **kwargs)
            get, update = gen.get_candidates, gen.update_candidate_strategy

            def get_candidates(input_ids, *a, **k):
                t = time.perf_counter()
                out = get(input_ids, *a, **k)
                self.record.draft_s += time.perf_counter() - t
                self.record.proposed.append(int(out[0].shape[1] - input_ids.shape[1]))
                return out

            def update_candidate_strategy(input_ids, scores, num_matches):
                self.record.accepted.append(int(num_matches))
                return update(input_ids, scores, num_matches)

            gen.get_candidates = get_candidates
            gen.update_candidate_strategy = update_candidate_strategy
            return gen

        model._get_candidate_generator = build

    def close(self) -> None:
        self._model.__dict__.pop("_get_candidate_generator", None)


@torch.inference_mode()
def verify_cost_ratio(
    model: nn.Module, prompt: torch.Tensor, gamma: int, repeats: int = 5
) -> float:
    """Time of one target forward over gamma+1 new tokens / over 1 new token, with the prompt cached.

    Leviathan et al. assume verifying gamma+1 tokens costs one decode step (true when decode is
    bound by reading weights); on a CPU the extra tokens' FLOPs are not free.
    """
    from transformers import DynamicCache

    device = model_device(model)
    prompt = prompt.to(device)
    times = {}
    for n in (1, gamma + 1):
        samples = []
        for _ in range(repeats + 1):
            cache = DynamicCache(config=model.config)
            model(input_ids=prompt, cache=cache, use_cache=True)
            ids = prompt[:, -n:]  # any n tokens: only the cost matters
            t = time.perf_counter()
            model(input_ids=ids, cache=cache, use_cache=True)
            samples.append(time.perf_counter() - t)
        times[n] = sorted(samples[1:])[len(samples[1:]) // 2]
    return times[gamma + 1] / times[1]


# --- the technique -----------------------------------------------------------------------------


class Speculative(Technique):
    """Assisted generation with a draft model, or prompt lookup; greedy outputs must not change."""

    def check(self, cfg: InfoptConfig) -> None:
        c: SpeculativeConfig = self.config  # type: ignore[assignment]
        if c.prompt_lookup > 0:
            return
        if c.draft.kind == "layer_subset":  # same tokenizer by construction; enough layers to drop?
            from infopt.models.load import architecture_config
            from infopt.models.surgery import unit_counts

            arch = architecture_config(cfg.model, Path(cfg.paths.cache_dir).expanduser())
            total = unit_counts(arch)["layers"] if arch is not None else None
            if total is not None and len(layer_subset_indices(total, c.draft.layer_stride)) == total:
                raise ConfigError(
                    f"technique.draft.layer_stride={c.draft.layer_stride} keeps all {total} layers of {cfg.model.name}; "
                    "use a larger stride, a draft model (technique.draft.kind=model|path), or technique.prompt_lookup>0"
                )
            return
        from pathlib import Path as _P

        from infopt.models.load import load_tokenizer

        cache_dir = _P(cfg.paths.cache_dir).expanduser()
        target_src = _local_tokenizer_source(cfg.model)
        if c.draft.kind == "model":
            assert c.draft.model is not None
            draft_src = _local_tokenizer_source(c.draft.model)
            draft_vocab = None
        else:
            assert c.draft.path is not None
            d = _model_dir(c.draft.path)
            draft_src = str(d) if _has_tokenizer(d) else None
            draft_vocab = json.loads((d / "config.json").read_text()).get("vocab_size")
        target_vocab = None
        if cfg.model.source == "local" or (
            cfg.model.name_or_path and Path(cfg.model.name_or_path).expanduser().is_dir()
        ):
            target_cfg = Path(cfg.model.name_or_path).expanduser() / "config.json"  # type: ignore[arg-type]
            if target_cfg.is_file():
                target_vocab = json.loads(target_cfg.read_text()).get("vocab_size")
        if target_src and draft_src and target_src != draft_src:
            same_vocabulary(
                load_tokenizer(target_src, cache_dir),
                load_tokenizer(draft_src, cache_dir),
                target_vocab,
                draft_vocab,
                "technique.draft",
            )
        elif draft_vocab is not None and target_src:
            tok = load_tokenizer(target_src, cache_dir)
            if target_vocab is None and draft_vocab < len(tok):
                raise ConfigError(
                    f"technique.draft: the draft's vocabulary has {draft_vocab} entries, fewer than the target tokenizer's {len(tok)}; "
                    "speculative decoding here needs the same tokenizer and vocabulary"
                )
            same_vocabulary(None, None, target_vocab, draft_vocab, "technique.draft")

    def load_draft(self, model: nn.Module, ctx: RunContext) -> tuple[nn.Module, Any]:
        """(draft model, its tokenizer or None when it shares the target's by construction)."""
        c = self.config.draft  # type: ignore[attr-defined]
        if c.kind == "layer_subset":
            return layer_subset_draft(model, c.layer_stride), None
        from transformers import AutoModelForCausalLM

        from infopt.models.load import load_model, load_tokenizer, resolve

        if c.kind == "model":
            resolved = resolve(c.model)
            tok = load_tokenizer(resolved.tokenizer, ctx.cache_dir, c.model.trust_remote_code)
            draft = load_model(c.model, resolved, tok, ctx.cache_dir, seed=ctx.cfg.seed)
        else:
            d = _model_dir(c.path)
            tok = load_tokenizer(str(d), ctx.cache_dir) if _has_tokenizer(d) else None
            draft = AutoModelForCausalLM.from_pretrained(str(d), dtype=model.dtype).eval()
        return draft.to(model_device(model)), tok

    def apply(self, model: nn.Module, ctx: RunContext) -> Applied:
        c: SpeculativeConfig = self.config  # type: ignore[assignment]
        pad = ctx.tokenizer.pad_token_id
        drafting = self._drafting(model, ctx)
        prompts = document_prompts(ctx.tokenizer, ctx.data.corpus.heldout, c.prompts, c.prompt_tokens, c.template, c.chat)
        # Warm-up (allocator, lazy inits) on the first prompt, untimed.
        greedy(model, prompts[0], 4, pad)
        greedy(model, prompts[0], 4, pad, **drafting.kwargs)
        comparison = compare_with_greedy(model, prompts, c.new_tokens, pad, drafting.kwargs, c.tie_tolerance)
        metrics = {
            **drafting.metrics, "prompts": float(len(prompts)), "gamma": float(drafting.gamma),
            **comparison.metrics, **acceptance(comparison.record, c.new_tokens * len(prompts)),
        }  # fmt: skip
        metrics.update(prediction(model, prompts[0], comparison.record, metrics["acceptance_rate"], drafting.gamma, pad, c.new_tokens))
        metrics["speedup_vs_prediction"] = metrics["speedup_decode"] / metrics["predicted_speedup"]
        return Applied(
            model=model, execution="dense", generate_kwargs=drafting.kwargs, metrics=metrics,
            notes=_notes(drafting, metrics, comparison, len(prompts)),
            tables={"speculative": {"columns": COMPARISON_COLUMNS, "rows": comparison.rows}},
        )  # fmt: skip

    def _drafting(self, model: nn.Module, ctx: RunContext) -> Drafting:
        """How drafts are made: prompt lookup, or a draft model with a constant draft length."""
        c: SpeculativeConfig = self.config  # type: ignore[assignment]
        if c.prompt_lookup > 0:
            kwargs = {"prompt_lookup_num_tokens": c.prompt_lookup, "max_matching_ngram_size": c.max_matching_ngram_size}
            what = f"prompt lookup ({c.prompt_lookup} tokens, n-grams up to {c.max_matching_ngram_size})"
            return Drafting(kwargs, c.prompt_lookup, what)
        draft, draft_tok = self.load_draft(model, ctx)
        # Checked again on the loaded objects, before any generation.
        same_vocabulary(
            ctx.tokenizer, draft_tok, model.config.get_text_config().vocab_size,
            draft.config.get_text_config().vocab_size, "technique.draft",
        )  # fmt: skip
        # A constant draft length and no confidence cut-off: every step drafts exactly gamma tokens,
        # the setting the formula assumes.
        gc = draft.generation_config
        gc.num_assistant_tokens = c.draft.num_tokens
        gc.num_assistant_tokens_schedule = "constant"
        gc.assistant_confidence_threshold = 0.0
        what = {
            "layer_subset": f"layer-subset draft (every {c.draft.layer_stride}th layer: {draft.config.num_hidden_layers} of {model.config.num_hidden_layers})",
            "model": f"draft model {getattr(c.draft.model, 'name', '?')}",
            "path": f"draft from {c.draft.path}",
        }[c.draft.kind]
        return Drafting({"assistant_model": draft}, c.draft.num_tokens, what, {"draft_params": float(parameter_count(draft))})


@dataclass
class Drafting:
    kwargs: dict[str, Any]  # generate() kwargs that turn speculative decoding on
    gamma: int  # tokens proposed per step (at most, for prompt lookup)
    what: str  # how drafts are made, in words
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    record: StepRecord  # every step's proposal and acceptance
    rows: list[list[Any]]  # one per prompt (COMPARISON_COLUMNS)
    metrics: dict[str, float]
    identical: int  # prompts whose speculative output equals plain greedy's
    ties: int  # prompts that differ only at a top-2 logit tie


COMPARISON_COLUMNS = ["prompt", "prompt_tokens", "steps", "tokens_per_step", "plain_s", "speculative_s", "same_as_greedy"]


def compare_with_greedy(
    model: nn.Module, prompts: list[torch.Tensor], n: int, pad: int | None, kwargs: dict[str, Any], tolerance: float
) -> Comparison:
    """Plain and speculative greedy decoding of each prompt: tokens compared, times taken.

    A divergence is allowed only where the target's top two logits tie within ``tolerance``; any
    other difference is a bug and raises.
    """
    recorder = Recorder(model)
    plain_s = spec_s = prefill_s = 0.0
    identical = ties = non_ties = 0
    rows = []
    try:
        for i, p in enumerate(prompts):
            _, t1 = timed(lambda: greedy(model, p, 1, pad))  # noqa: B023 - prefill + one token
            ref, tp = timed(lambda: greedy(model, p, n, pad))  # noqa: B023
            before = len(recorder.record.accepted)
            out, ts = timed(lambda: greedy(model, p, n, pad, **kwargs))  # noqa: B023
            d = divergence(model, p, ref[0], out[0], tolerance, suppress=eos_ids(model))
            identical += d is None
            if d is not None:
                ties, non_ties = ties + d.tie, non_ties + (not d.tie)
                log.warning("prompt %d: speculative output differs from greedy at token %d (gap %.3g, tie=%s)",
                            i, d.position, d.gap, d.tie)  # fmt: skip
            steps = len(recorder.record.accepted) - before
            plain_s, spec_s, prefill_s = plain_s + tp, spec_s + ts, prefill_s + t1
            rows.append([i, p.shape[1], steps, round(n / max(steps, 1), 3), round(tp, 3), round(ts, 3), d is None or d.tie])
    finally:
        recorder.close()
    if non_ties:
        raise RuntimeError(
            f"speculative decoding changed {non_ties} greedy generation(s) at a non-tie: a bug, not a tolerance issue"
        )
    generated = n * len(prompts)
    metrics = {
        "plain_tokens_per_s": generated / plain_s,
        "speculative_tokens_per_s": generated / spec_s,
        "speedup": plain_s / spec_s,
        # Decode only: the plain prefill time taken off both sides.
        "speedup_decode": (plain_s - prefill_s) / max(spec_s - prefill_s, 1e-9),
        "greedy_identical_fraction": identical / len(prompts),
        "greedy_divergences_at_ties": float(ties),
    }
    return Comparison(recorder.record, rows, metrics, identical, ties)


def acceptance(rec: StepRecord, generated: int) -> dict[str, float]:
    """Acceptance rate a as Bernoulli trials: every accepted token, plus the one rejection that ends a step early."""
    steps = len(rec.accepted)
    proposed, accepted = sum(rec.proposed), sum(rec.accepted)
    rejections = sum(1 for p, a in zip(rec.proposed, rec.accepted, strict=True) if a < p)
    return {
        "acceptance_rate": accepted / max(accepted + rejections, 1),
        "accepted_fraction_of_proposed": accepted / max(proposed, 1),
        "mean_accepted_per_step": accepted / max(steps, 1),
        "mean_tokens_per_step": generated / max(steps, 1),
        "steps_without_proposal": float(sum(1 for p in rec.proposed if p == 0)),
    }


def prediction(
    model: nn.Module, prompt: torch.Tensor, rec: StepRecord, alpha: float, gamma: int, pad: int | None, n: int
) -> dict[str, float]:
    """Leviathan et al.'s Thm 3.8 from the measured acceptance and costs, three ways.

    Per step, averaged: a step proposing g tokens yields E(a, g) tokens for 1 + g c target steps of
    time. With a constant gamma this is exactly (1 - a^(g+1)) / ((1 - a)(g c + 1)); prompt lookup
    proposes 0..gamma tokens per step, so its steps enter with their own g.
    """
    steps = max(len(rec.accepted), 1)
    target_step = decode_step_seconds(model, prompt, min(n, 16), pad, repeats=2)
    draft_token_s = rec.draft_s / max(sum(rec.proposed), 1)
    expected = sum(expected_tokens_per_step(alpha, g) for g in rec.proposed) / steps
    draft_cost = (rec.draft_s / steps) / target_step  # draft time per step, in target steps
    verify = verify_cost_ratio(model, prompt, gamma)
    return {
        "target_step_ms": 1e3 * target_step,
        "draft_ms_per_token": 1e3 * draft_token_s,
        "cost_ratio": draft_token_s / target_step,
        "verify_cost_ratio": verify,
        "predicted_tokens_per_step": expected,
        "predicted_speedup": expected / (1 + draft_cost),
        "predicted_speedup_formula_gamma": predicted_speedup(alpha, gamma, draft_token_s / target_step),
        # The same with the measured cost of verifying gamma+1 tokens instead of one step's.
        "predicted_speedup_with_verify_cost": expected / (draft_cost + verify),
    }


def _notes(drafting: Drafting, m: dict[str, float], comparison: Comparison, prompts: int) -> list[str]:
    notes = [
        f"speculative decoding with {drafting.what}: acceptance {m['acceptance_rate']:.3f}, "
        f"{m['mean_tokens_per_step']:.2f} tokens per target pass, speedup {m['speedup']:.2f}x measured vs "
        f"{m['predicted_speedup']:.2f}x predicted (Leviathan et al. 2023, Thm 3.8)",
        f"greedy outputs: {comparison.identical}/{prompts} identical to plain greedy decoding, "
        f"{comparison.ties} differ only at top-2 logit ties",
    ]
    v = m["verify_cost_ratio"]
    if math.isfinite(v) and v > 1.2:
        notes.append(f"verifying {drafting.gamma + 1} tokens costs {v:.2f}x a one-token step here (the formula assumes 1x)")
    return notes
