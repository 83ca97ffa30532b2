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

from infopt.errors import ConfigError
from infopt.techniques.base import Applied, Technique
from infopt.techniques.decode.common import (
    divergence,
    document_prompts,
    eos_ids,
    greedy,
    model_device,
    timed,
)
from infopt.techniques.decode.config import SpeculativeConfig

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


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the decoder's layer ModuleList (Llama-style or GPT-2)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        parent: Any = model
        *head, last = path.split(".")
        try:
            for part in head:
                parent = getattr(parent, part)
            if isinstance(getattr(parent, last), nn.ModuleList):
                return parent, last
        except AttributeError:
            continue
    raise ConfigError(
        f"technique.draft.kind=layer_subset: cannot find the decoder layers of {type(model).__name__}; use draft.kind=model or path"
    )


def layer_subset_indices(num_layers: int, stride: int) -> list[int]:
    """Layers 0, k, 2k, ... and the last one (its output is what the final norm and head were trained on)."""
    keep = list(range(0, num_layers, stride))
    if keep[-1] != num_layers - 1:
        keep.append(num_layers - 1)
    return keep


def layer_subset_draft(model: nn.Module, stride: int) -> nn.Module:
    """A copy of ``model`` keeping every ``stride``-th decoder layer (weights copied, not retrained)."""
    draft = copy.deepcopy(model)
    parent, name = decoder_layers(draft)
    layers = getattr(parent, name)
    keep = layer_subset_indices(len(layers), stride)
    if len(keep) == len(layers):
        raise ConfigError(
            f"technique.draft.layer_stride={stride} keeps all {len(layers)} layers; use a larger stride"
        )
    setattr(parent, name, nn.ModuleList(layers[i] for i in keep))
    # Each attention module indexes the KV cache by its layer_idx: renumber them 0..n-1.
    for new_idx, layer in enumerate(getattr(parent, name)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = draft.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return draft.eval()


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


def _decode_s(
    model: nn.Module, prompt: torch.Tensor, n: int, pad: int | None, **kwargs: Any
) -> float:
    """Seconds per token of plain greedy decoding, prefill excluded: (t(n) - t(1)) / (n - 1)."""
    one = min(timed(lambda: greedy(model, prompt, 1, pad, **kwargs))[1] for _ in range(2))
    full = min(timed(lambda: greedy(model, prompt, n, pad, **kwargs))[1] for _ in range(2))
    return max(full - one, 1e-9) / (n - 1)


# --- the technique -----------------------------------------------------------------------------


class Speculative(Technique):
    """Assisted generation with a draft model, or prompt lookup; greedy outputs must not change."""

    config_class = SpeculativeConfig

    def check(self, cfg: InfoptConfig) -> None:
        c: SpeculativeConfig = self.config  # type: ignore[assignment]
        if c.prompt_lookup > 0 or c.draft.kind == "layer_subset":
            return  # same tokenizer by construction
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
        metrics: dict[str, float] = {}
        notes: list[str] = []
        if c.prompt_lookup > 0:
            gamma = c.prompt_lookup
            kwargs: dict[str, Any] = {
                "prompt_lookup_num_tokens": c.prompt_lookup,
                "max_matching_ngram_size": c.max_matching_ngram_size,
            }
            draft = None
            what = f"prompt lookup ({c.prompt_lookup} tokens, n-grams up to {c.max_matching_ngram_size})"
        else:
            gamma = c.draft.num_tokens
            draft, draft_tok = self.load_draft(model, ctx)
            # Checked again on the loaded objects, before any generation.
            same_vocabulary(
                ctx.tokenizer,
                draft_tok,
                model.config.get_text_config().vocab_size,
                draft.config.get_text_config().vocab_size,
                "technique.draft",
            )
            # A constant draft length and no confidence cut-off: every step drafts exactly gamma tokens,
            # the setting the formula assumes.
            gc = draft.generation_config
            gc.num_assistant_tokens = gamma
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0
            kwargs = {"assistant_model": draft}
            what = {
                "layer_subset": f"layer-subset draft (every {c.draft.layer_stride}th layer: {draft.config.num_hidden_layers} of {model.config.num_hidden_layers})",
                "model": f"draft model {getattr(c.draft.model, 'name', '?')}",
                "path": f"draft from {c.draft.path}",
            }[c.draft.kind]
            metrics["draft_params"] = float(sum(p.numel() for p in draft.parameters()))

        prompts = document_prompts(
            ctx.tokenizer, ctx.data.corpus.heldout, c.prompts, c.prompt_tokens, c.template, c.chat
        )
        n = c.new_tokens
        # Warm-up (allocator, lazy inits) on the first prompt, untimed.
        greedy(model, prompts[0], 4, pad)
        greedy(model, prompts[0], 4, pad, **kwargs)

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
                d = divergence(model, p, ref[0], out[0], c.tie_tolerance, suppress=eos_ids(model))
                identical += d is None
                if d is not None:
                    ties += d.tie
                    non_ties += not d.tie
                    log.warning(
                        "prompt %d: speculative output differs from greedy at token %d (gap %.3g, tie=%s)",
                        i,
                        d.position,
                        d.gap,
                        d.tie,
                    )
                steps = len(recorder.record.accepted) - before
                plain_s, spec_s, prefill_s = plain_s + tp, spec_s + ts, prefill_s + t1
                rows.append(
                    [
                        i,
                        p.shape[1],
                        steps,
                        round(n / max(steps, 1), 3),
                        round(tp, 3),
                        round(ts, 3),
                        d is None or d.tie,
                    ]
                )
        finally:
            recorder.close()
        if non_ties:
            raise RuntimeError(
                f"speculative decoding changed {non_ties} greedy generation(s) at a non-tie: a bug, not a tolerance issue"
            )

        rec = recorder.record
        steps = len(rec.accepted)
        proposed, accepted = sum(rec.proposed), sum(rec.accepted)
        # Bernoulli trials seen: every accepted token, plus the one rejection that ends a step early.
        rejections = sum(1 for p_, a_ in zip(rec.proposed, rec.accepted, strict=True) if a_ < p_)
        alpha = accepted / max(accepted + rejections, 1)
        generated = n * len(prompts)
        metrics.update(
            {
                "prompts": float(len(prompts)),
                "gamma": float(gamma),
                "acceptance_rate": alpha,
                "accepted_fraction_of_proposed": accepted / max(proposed, 1),
                "mean_accepted_per_step": accepted / max(steps, 1),
                "mean_tokens_per_step": generated / max(steps, 1),
                "steps_without_proposal": float(sum(1 for p_ in rec.proposed if p_ == 0)),
                "plain_tokens_per_s": generated / plain_s,
                "speculative_tokens_per_s": generated / spec_s,
                "speedup": plain_s / spec_s,
                # Decode only: the plain prefill time taken off both sides.
                "speedup_decode": (plain_s - prefill_s) / max(spec_s - prefill_s, 1e-9),
                "greedy_identical_fraction": identical / len(prompts),
                "greedy_divergences_at_ties": float(ties),
            }
        )

        # Cost ratio c: one draft token's time over one target decode step, both measured here.
        target_step = _decode_s(model, prompts[0], min(n, 16), pad)
        draft_token_s = rec.draft_s / max(proposed, 1)
        c_ratio = draft_token_s / target_step
        v = verify_cost_ratio(model, prompts[0], gamma)
        # Thm 3.8 per step, averaged: a step proposing g tokens yields E(a, g) tokens for 1 + g c target
        # steps of time. With a constant gamma this is exactly (1 - a^(g+1)) / ((1 - a)(g c + 1)); prompt
        # lookup proposes 0..gamma tokens per step, so its steps enter with their own g.
        expected = sum(expected_tokens_per_step(alpha, g) for g in rec.proposed) / max(steps, 1)
        draft_cost = (
            rec.draft_s / max(steps, 1)
        ) / target_step  # draft time per step, in target steps
        metrics.update(
            {
                "target_step_ms": 1e3 * target_step,
                "draft_ms_per_token": 1e3 * draft_token_s,
                "cost_ratio": c_ratio,
                "verify_cost_ratio": v,
                "predicted_tokens_per_step": expected,
                "predicted_speedup": expected / (1 + draft_cost),
                "predicted_speedup_formula_gamma": predicted_speedup(alpha, gamma, c_ratio),
                # The same with the measured cost of verifying gamma+1 tokens instead of one step's.
                "predicted_speedup_with_verify_cost": expected / (draft_cost + v),
            }
        )
        metrics["speedup_vs_prediction"] = metrics["speedup_decode"] / metrics["predicted_speedup"]
        columns = [
            "prompt",
            "prompt_tokens",
            "steps",
            "tokens_per_step",
            "plain_s",
            "speculative_s",
            "same_as_greedy",
        ]
        ctx.logger.log_table("speculative", columns, rows)
        notes.append(
            f"speculative decoding with {what}: acceptance {alpha:.3f}, {metrics['mean_tokens_per_step']:.2f} tokens per target pass, "
            f"speedup {metrics['speedup']:.2f}x measured vs {metrics['predicted_speedup']:.2f}x predicted (Leviathan et al. 2023, Thm 3.8)"
        )
        notes.append(
            f"greedy outputs: {identical}/{len(prompts)} identical to plain greedy decoding, {ties} differ only at top-2 logit ties"
        )
        if math.isfinite(v) and v > 1.2:
            notes.append(
                f"verifying {gamma + 1} tokens costs {v:.2f}x a one-token step here (the formula assumes 1x)"
            )
        return Applied(
            model=model,
            execution="dense",
            generate_kwargs=kwargs,
            metrics=metrics,
            notes=notes,
            tables={"speculative": {"columns": columns, "rows": rows}},
        )
