"""Decode techniques on tiny models: same outputs as the plain path, and what each one claims.

Tiny models get weights with std 0.2 (instead of 0.02) so greedy decoding visits many tokens and
logit gaps are far above float noise; a random model at std 0.02 repeats one token forever, which
would make every equality test trivially true.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import QUICK, compose_config, run_main
from infopt.errors import ConfigError

PAD = 2


def peaked(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2, generator=g)
    return model.eval()


def tiny(tokenizer, architecture="llama", layers=4, seed=0):
    from infopt.config.schema import TinyArchConfig
    from infopt.models.tiny import build_tiny

    arch = TinyArchConfig(
        architecture=architecture,
        num_layers=layers,
        num_kv_heads=2 if architecture == "llama" else 4,
        intermediate_size=128 if architecture == "llama" else 256,
    )
    m = build_tiny(
        arch,
        vocab_size=len(tokenizer),
        seed=seed,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return peaked(m, seed + 1)


def prompts(text_data, count=2, length=24):
    from infopt.techniques.architecture.common import stream_prompts

    return stream_prompts(text_data.heldout_stream, count, length)


def assert_greedy_equivalent(model, prompt, reference, other, tol=1e-4):
    """Equal tokens, or the first difference sits at a top-2 logit tie (checked, not assumed)."""
    from infopt.techniques.architecture.common import divergence, eos_ids

    d = divergence(model, prompt, reference[0], other[0], tol, suppress=eos_ids(model))
    assert d is None or d.tie, (
        f"diverged at token {d.position} with logit gap {d.gap:.3g} (not a tie)"
    )


# --- the oracle itself -------------------------------------------------------------------------


def test_divergence_detects_ties_and_non_ties(tokenizer, text_data):
    """Two tokens with identical embedding rows (tied head) have equal logits everywhere: a tie."""
    from infopt.techniques.architecture.common import divergence, greedy

    model = tiny(tokenizer)
    p = prompts(text_data, 1)[0]
    ref = greedy(model, p, 6, PAD)[0]
    a = int(ref[2])
    b = (a + 1) % model.config.vocab_size
    with torch.no_grad():
        model.get_input_embeddings().weight[b] = model.get_input_embeddings().weight[a]
    ref = greedy(model, p, 6, PAD)[0]
    assert int(ref[2]) == a  # argmax keeps the first of equal logits
    swapped = ref.clone()
    swapped[2] = b
    d = divergence(model, p, ref, swapped, 1e-4)
    assert d is not None and d.position == 2 and d.tie and d.gap == 0.0
    wrong = ref.clone()
    wrong[2] = (a + 7) % model.config.vocab_size
    d = divergence(model, p, ref, wrong, 1e-4)
    assert d is not None and not d.tie and d.gap > 1e-4
    assert divergence(model, p, ref, ref.clone(), 1e-4) is None


# --- attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("setting", ["sdpa", "sdpa:math", "sdpa:flash"])
def test_sdpa_logits_equal_eager(tokenizer, text_data, architecture, setting):
    from infopt.techniques.architecture.attention import logits_diff

    model = tiny(tokenizer, architecture)
    ids = text_data.heldout_stream[:96].view(1, -1)
    diff = logits_diff(model, setting, "eager", ids)
    with torch.no_grad():
        scale = float(model(input_ids=ids).logits.abs().max())
    assert diff <= 1e-4 * max(scale, 1.0), f"{setting} vs eager: {diff}"
    assert model.config._attn_implementation != "eager"  # left on the setting


def test_attention_technique_sweeps_and_keeps_outputs(run_context, tokenizer):
    from infopt.techniques.registry import build

    ctx = run_context(
        [
            "technique=attention",
            "technique.compare=[eager,sdpa:math,flash_attention_2]",
            "technique.context_lengths=[32,0]",
            "technique.decode_tokens=2",
        ]
    )
    model = tiny(tokenizer)
    applied = build(ctx.cfg.technique).apply(model, ctx)
    m = applied.metrics
    assert m["logits_match_eager"] == 1.0
    assert any("flash_attention_2 skipped" in n for n in applied.notes)
    for s in ("sdpa", "eager", "sdpa:math"):
        for n in (32, 512):  # 0 = the tiny model's maximum (512 positions)
            assert m[f"decode_ms_per_token/{s}/ctx{n}"] > 0
            assert m[f"prefill_ms/{s}/ctx{n}"] > 0
    # One table row per (implementation, context length) measured; timings are compared in
    # docs/architecture.md, not here (a loaded machine reorders them).
    assert len(applied.tables["sweep"]["rows"]) == 3 * 2
    assert model.config._attn_implementation == "sdpa"


def test_flash_attention_on_cpu_is_rejected_before_loading():
    from infopt.composition.validate import validate_config

    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
        validate_config(
            compose_config(
                [
                    "model=tiny_llama",
                    "technique=attention",
                    "technique.implementation=flash_attention_2",
                ]
            )
        )
    with pytest.raises(ConfigError, match="sdpa_backend"):
        validate_config(
            compose_config(
                [
                    "model=tiny_llama",
                    "technique=attention",
                    "technique.implementation=eager",
                    "technique.sdpa_backend=math",
                ]
            )
        )


# --- KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_static_cache_generates_like_dynamic(tokenizer, text_data, architecture):
    from infopt.techniques.architecture.common import greedy

    model = tiny(tokenizer, architecture)
    for p in prompts(text_data):
        ref = greedy(model, p, 16, PAD, cache_implementation="dynamic")
        out = greedy(model, p, 16, PAD, cache_implementation="static")
        assert len(set(ref[0].tolist())) > 3  # a real generation, not one repeated token
        assert_greedy_equivalent(model, p, ref, out)


# fp8 e4m3 keeps 3 mantissa bits: a cached key and a cached value are each rounded by up to 2^-4 of
# themselves (values above the range seen at the first update, when the per-tensor scale freezes,
# are clipped instead). To first order the two errors add in the attention output, so the stated
# bound is 2^-3: over 64 single-token decode steps after a 64-token prefill that set the scale, the
# mean |logit change| stays under 2^-3 x the logits' standard deviation (measured 0.108 for llama
# and about 0.04 for gpt2 with these std-0.2 weights). Zero would mean nothing was quantized.
FP8_MEAN_LOGIT_BOUND = 2**-3


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_quantized_cache_changes_logits_within_bound(tokenizer, text_data, architecture):
    from infopt.composition.validate import validate_config
    from infopt.techniques.architecture.kv_cache import cache_in_loop_nll, make_cache

    cfg = validate_config(
        compose_config(
            ["model=tiny_llama", "technique=kv_cache", "technique.implementation=quantized"]
        ),
        check_technique=False,
    )
    model = tiny(tokenizer, architecture)
    window = text_data.heldout_stream[:128].view(1, -1)
    with torch.no_grad():
        full = model(input_ids=window).logits[0].float()  # (T, V)
        cache = make_cache(model, "quantized", 128, cfg.technique)
        out = model(input_ids=window[:, :64], cache=cache)
        logits = [out.logits[0].float()]
        for t in range(64, 128):
            out = model(input_ids=window[:, t : t + 1], cache=out.cache)
            logits.append(out.logits[0].float())
    quant = torch.cat(logits)
    assert torch.allclose(quant[:64], full[:64], atol=1e-4)  # the prefill attends to exact keys
    change = (quant[64:] - full[64:]).abs().mean()
    assert 0 < change < FP8_MEAN_LOGIT_BOUND * full.std(), (float(change), float(full.std()))
    # The chunked cache-in-the-loop protocol with the dynamic cache is exact (it is the reference).
    _, _, logits_d = cache_in_loop_nll(model, window[0], make_cache(model, "dynamic", 128), 16)
    assert torch.allclose(full, logits_d, atol=1e-4)


def test_kv_cache_technique_reports_memory_and_quality(run_context, tokenizer):
    from infopt.techniques.registry import build

    ctx = run_context(
        [
            "technique=kv_cache",
            "technique.implementation=quantized",
            "technique.context_lengths=[64]",
            "technique.ppl_window=64",
            "technique.ppl_chunk=16",
            "technique.ppl_windows=2",
            "technique.agreement_prompts=2",
            "technique.agreement_new_tokens=8",
            "technique.agreement_prompt_tokens=32",
        ]
    )
    applied = build(ctx.cfg.technique).apply(tiny(tokenizer), ctx)
    m = applied.metrics
    # fp8 stores 1 byte per element against fp32's 4 (plus one scale per layer tensor).
    assert 3.9 < m["cache_memory_ratio/ctx64"] <= 4.0
    assert (
        m["greedy_divergences_not_ties"]
        + m["greedy_divergences_at_ties"]
        + 2 * m["greedy_identical_fraction"]
        == 2
    )
    assert applied.generate_kwargs == {
        "cache_implementation": "quantized",
        "cache_config": {"backend": "fp8"},
    }
    assert m["perplexity_ratio_vs_dynamic"] > 0


def test_offloaded_cache_on_cpu_is_rejected():
    from infopt.composition.validate import validate_config

    with pytest.raises(ConfigError, match="needs hardware=gpu"):
        validate_config(
            compose_config(
                ["model=tiny_llama", "technique=kv_cache", "technique.implementation=offloaded"]
            )
        )


# --- compile -----------------------------------------------------------------------------------


def test_compiled_decode_step_matches_eager(run_context, tokenizer):
    """The plumbing (static cache + compile_config on CPU) with the cheap aot_eager backend; inductor runs in the slow suite."""
    from infopt.techniques.registry import build

    ctx = run_context(
        [
            "technique=compile",
            "technique.backend=aot_eager",
            "technique.check_prompts=2",
            "technique.check_new_tokens=8",
            "technique.repeats=1",
        ]
    )
    model = tiny(tokenizer)
    applied = build(ctx.cfg.technique).apply(model, ctx)
    assert applied.metrics["greedy_divergences_not_ties"] == 0
    assert applied.metrics["compile_s"] > 0
    assert hasattr(model, "_compiled_call")  # generate() really took the compiled path
    assert applied.generate_kwargs["cache_implementation"] == "static"


# --- speculative -------------------------------------------------------------------------------


def test_leviathan_formula_against_direct_sum():
    from infopt.techniques.architecture.speculative import expected_tokens_per_step, predicted_speedup

    for alpha in (0.0, 0.3, 0.8, 0.99):
        for gamma in (1, 3, 5):
            direct = sum(
                alpha**k for k in range(gamma + 1)
            )  # E[tokens] = sum_k P(first k accepted)
            assert expected_tokens_per_step(alpha, gamma) == pytest.approx(direct)
            assert predicted_speedup(alpha, gamma, 0.1) == pytest.approx(direct / (gamma * 0.1 + 1))
    assert expected_tokens_per_step(1.0, 4) == 5.0


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_layer_subset_draft_keeps_tokens(tokenizer, text_data, architecture):
    from infopt.techniques.architecture.common import greedy
    from infopt.techniques.architecture.speculative import layer_subset_draft

    model = tiny(tokenizer, architecture)
    draft = layer_subset_draft(model, 2)
    assert (
        draft.config.num_hidden_layers == 3 and model.config.num_hidden_layers == 4
    )  # layers 0, 2, 3
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    for p in prompts(text_data):
        ref = greedy(model, p, 16, PAD)
        out = greedy(model, p, 16, PAD, assistant_model=draft)
        assert_greedy_equivalent(model, p, ref, out)


def test_unrelated_draft_model_keeps_tokens(tokenizer, text_data):
    """A draft that shares nothing with the target (other seed, 1 layer): output still plain greedy's."""
    from infopt.techniques.architecture.common import greedy

    model = tiny(tokenizer)
    draft = tiny(tokenizer, layers=1, seed=7)
    for p in prompts(text_data):
        ref = greedy(model, p, 16, PAD)
        out = greedy(model, p, 16, PAD, assistant_model=draft)
        assert_greedy_equivalent(model, p, ref, out)


def test_prompt_lookup_keeps_tokens_and_proposes(tokenizer, text_data):
    from infopt.techniques.architecture.common import greedy
    from infopt.techniques.architecture.speculative import Recorder

    model = tiny(tokenizer)
    rec = Recorder(model)
    try:
        for p in prompts(text_data):
            ref = greedy(model, p, 24, PAD)
            # The prompt ends with the start of the plain continuation, repeated: lookup finds matches.
            p2 = torch.cat([p, ref[:, :12], p, ref[:, :4]], dim=1)
            ref2 = greedy(model, p2, 16, PAD)
            out2 = greedy(model, p2, 16, PAD, prompt_lookup_num_tokens=4)
            assert_greedy_equivalent(model, p2, ref2, out2)
    finally:
        rec.close()
    # Lookup was active (it found the repeated n-grams); acceptance depends on the random model.
    assert sum(rec.record.proposed) > 0


def test_speculative_accounting_with_identical_draft(run_context, tokenizer):
    """A draft equal to the target accepts everything: acceptance 1, gamma + 1 tokens per target pass."""
    from infopt.techniques.architecture.speculative import Speculative

    ctx = run_context(
        [
            "technique=speculative",
            "technique.prompts=2",
            "technique.prompt_tokens=32",
            "technique.new_tokens=13",
            "technique.draft.num_tokens=3",
        ]
    )
    model = tiny(tokenizer)
    tech = Speculative(ctx.cfg.technique)
    tech.load_draft = lambda m, c: (tiny(tokenizer), None)  # same seed: the same weights
    m = tech.apply(model, ctx).metrics
    assert m["acceptance_rate"] == 1.0
    # 13 new tokens: 3 steps drafting 3 tokens, all kept, + the target's own = 12; the last step has
    # room for no draft (it would overrun the length) and yields the 13th token alone.
    assert m["mean_tokens_per_step"] == pytest.approx(13 / 4)
    assert m["greedy_identical_fraction"] == 1.0
    # Thm 3.8's expectation per step at a = 1 reproduces the count exactly.
    assert m["predicted_tokens_per_step"] == pytest.approx(13 / 4)


def _save_tiny(tokenizer, path, vocab_size=None, extra_token=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    if extra_token:
        import copy

        tok = copy.deepcopy(tokenizer)
        tok.add_tokens(["<not-in-the-target>"])
        tok.save_pretrained(path)
    return path


def test_draft_with_other_vocabulary_rejected_before_work(tmp_path, tokenizer):
    from infopt.composition.validate import validate_config

    small = _save_tiny(tokenizer, tmp_path / "small_vocab", vocab_size=1000)
    with pytest.raises(ConfigError, match="vocabulary has 1000 entries"):
        validate_config(
            compose_config(
                [
                    "model=tiny_llama",
                    "technique=speculative",
                    "technique.draft.kind=path",
                    f"technique.draft.path={small}",
                ]
            )
        )
    other_tok = _save_tiny(tokenizer, tmp_path / "other_tokenizer", extra_token=True)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        validate_config(
            compose_config(
                [
                    "model=tiny_llama",
                    "technique=speculative",
                    "technique.draft.kind=path",
                    f"technique.draft.path={other_tok}",
                ]
            )
        )
    # A run dir holding model/ with the same tokenizer passes.
    same = tmp_path / "run"
    _save_tiny(tokenizer, same / "model")
    tokenizer.save_pretrained(same / "model")
    validate_config(
        compose_config(
            [
                "model=tiny_llama",
                "technique=speculative",
                "technique.draft.kind=path",
                f"technique.draft.path={same}",
            ]
        )
    )


def test_loaded_draft_with_other_vocabulary_rejected_before_generation(run_context, tokenizer):
    from infopt.techniques.architecture.speculative import Speculative

    ctx = run_context(["technique=speculative"])
    tech = Speculative(ctx.cfg.technique)
    model = tiny(tokenizer)
    calls = []
    model.generate = lambda *a, **k: calls.append(1)  # must never be reached
    from transformers import LlamaConfig, LlamaForCausalLM

    tech.load_draft = lambda m, c: (
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=500,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
            )
        ),
        None,
    )
    with pytest.raises(ConfigError, match="500 entries"):
        tech.apply(model, ctx)
    assert not calls


def test_draft_model_config_composes_and_runs(tmp_path):
    """technique.draft.model from the model group; the bench skips batch > 1 with a note."""
    record = run_main(
        [
            "model=tiny_llama",
            *QUICK,
            "technique=speculative",
            "technique.draft.kind=model",
            "+model@technique.draft.model=tiny_llama",
            "technique.draft.model.tiny.num_layers=1",
            "technique.prompts=2",
            "technique.prompt_tokens=24",
            "technique.new_tokens=6",
        ],
        tmp_path,
    )
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert (
        on_disk["technique"]["metrics"]["greedy_identical_fraction"]
        + on_disk["technique"]["metrics"]["greedy_divergences_at_ties"] / 2
        == 1.0
    )
    assert "decode_tokens_per_s_b1" in record["result"]["bench"]
    assert any("batch 2 skipped" in n for n in record["technique"]["notes"])


# --- slow: real kernels and the real model ------------------------------------------------------


@pytest.mark.slow
def test_inductor_compiled_decode_matches_eager(tokenizer, text_data):
    """Inductor (real generated C++ kernels) on CPU: compiled greedy tokens equal eager ones."""
    from transformers import CompileConfig

    from infopt.techniques.architecture.common import greedy

    model = tiny(tokenizer)
    cc = CompileConfig(mode="default")
    cc._compile_all_devices = True
    for p in prompts(text_data):
        ref = greedy(model, p, 12, PAD)
        out = greedy(
            model, p, 12, PAD, cache_implementation="static", max_cache_len=64, compile_config=cc
        )
        assert_greedy_equivalent(model, p, ref, out)
    assert hasattr(model, "_compiled_call")


@pytest.mark.slow
def test_smollm2_speculative_greedy_equivalence(tokenizer, text_data):
    from transformers import AutoModelForCausalLM

    from conftest import CACHE_DIR
    from infopt.models.embedded import cached_checkpoint
    from infopt.techniques.architecture.common import greedy
    from infopt.techniques.architecture.speculative import layer_subset_draft

    model = AutoModelForCausalLM.from_pretrained(str(cached_checkpoint(CACHE_DIR))).eval()
    draft = layer_subset_draft(model, 3)
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    for p in prompts(text_data, 2, 64):
        ref = greedy(model, p, 24, tokenizer.pad_token_id)
        for kwargs in (
            {"assistant_model": draft},
            {"prompt_lookup_num_tokens": 10},
            {"cache_implementation": "static"},
        ):
            out = greedy(model, p, 24, tokenizer.pad_token_id, **kwargs)
            assert_greedy_equivalent(model, p, ref, out)
