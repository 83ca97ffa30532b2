"""Rotations before quantization (QuaRot) on the tiny models: the float function is kept, a tied
embedding/head is rotated exactly once, and RTN W4 loses less on weights with outlier columns.

Tolerance for "same logits": float32 weights, Q built in float64; max |rotated - original| below
1e-4 times the largest |logit| (what float32 round-off of a few matmuls leaves; a wrong fold, a
missed layer or a double rotation is off by O(1)).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import compose_config

LOGIT_TOL = 1e-4  # relative to max |logit|


def _logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits


def _assert_same_logits(model, rotated, tokens):
    ref, out = _logits(model, tokens), _logits(rotated, tokens)
    assert (out - ref).abs().max() < LOGIT_TOL * ref.abs().max()


def _random_norms(model, final: bool) -> None:
    """Norm weights away from 1 (a trained model's), so fusing them is exercised."""
    gen = torch.Generator().manual_seed(1)
    for name, m in model.named_modules():
        if type(m).__name__.endswith("RMSNorm") and (final or name != "model.norm"):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5


def _tiny_llama(tokenizer, hidden: int):
    from infopt.config.schema import TinyArchConfig
    from infopt.models.tiny import build_tiny

    return build_tiny(TinyArchConfig(hidden_size=hidden, num_heads=4, num_kv_heads=2), vocab_size=len(tokenizer))


# --- the matrices -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 20, 28, 36, 48, 64, 576, 1536])
def test_hadamard_matrices_are_hadamard(n):
    """+-1 entries and H H^T = n I exactly (Sylvester, Paley I/II and their Kronecker products)."""
    from infopt.techniques.quantize.rotate import hadamard

    h = hadamard(n)
    assert torch.equal(h.abs(), torch.ones_like(h))
    assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["hadamard", "block_hadamard"])
@pytest.mark.parametrize("n", [32, 48, 64, 576])
def test_random_hadamard_is_orthogonal(kind, n):
    from infopt.techniques.quantize.rotate import random_hadamard

    q = random_hadamard(n, kind, seed=3)
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.equal(q, random_hadamard(n, kind, seed=4))  # the seed draws the signs


def test_576_is_paley_36_times_sylvester_16_or_nine_blocks_of_64():
    from infopt.techniques.quantize.rotate import describe, hadamard_factors

    assert hadamard_factors(576) == (36, 16)
    assert describe("hadamard", 576) == "Paley order 36 (x) Sylvester order 16"
    assert describe("block_hadamard", 576) == "block-diagonal: 9 Sylvester block(s) of 64"
    assert hadamard_factors(9 * 2) is None  # no Hadamard of order 9 or 18: block_hadamard is the way there
    assert hadamard_factors(92) is None  # order 92 exists (Williamson), but is no Paley order


# --- the float function is kept ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hadamard", "block_hadamard"])
def test_rotated_model_keeps_logits_and_rotates_the_tied_matrix_once(tiny_llama, text_data, kind):
    """Tied embedding/head with a final norm of ones (the tie kept): the shared matrix is W Q, not W Q Q."""
    from infopt.techniques.quantize.rotate import random_hadamard, rotate_model

    _random_norms(tiny_llama, final=False)
    tokens = text_data.calibration_blocks(2, 32)
    w = tiny_llama.get_input_embeddings().weight.detach().double().clone()
    rotated = copy.deepcopy(tiny_llama)
    done = rotate_model(rotated, kind, seed=5)
    _assert_same_logits(tiny_llama, rotated, tokens)
    assert done.tied and not done.untied
    head, emb = rotated.get_output_embeddings(), rotated.get_input_embeddings()
    assert head.weight is emb.weight and rotated.config.tie_word_embeddings
    q = random_hadamard(w.shape[1], kind, seed=5)
    torch.testing.assert_close(emb.weight.double(), w @ q, rtol=0, atol=1e-6)
    assert not torch.allclose(emb.weight.double(), w @ q @ q, atol=1e-3)
    norms = [m.weight for m in rotated.modules() if type(m).__name__.endswith("RMSNorm")]
    assert all(torch.equal(g, torch.ones_like(g)) for g in norms)  # fused


def test_tied_head_is_untied_when_the_final_norm_is_not_ones(tiny_llama, text_data, tmp_path):
    """Embedding needs W Q, head needs W diag(g) Q: two matrices, and the untied model saves and loads plainly."""
    from transformers import AutoModelForCausalLM

    from infopt.techniques.quantize.rotate import random_hadamard, rotate_model

    _random_norms(tiny_llama, final=True)
    tokens = text_data.calibration_blocks(2, 32)
    w = tiny_llama.get_input_embeddings().weight.detach().double().clone()
    g = tiny_llama.model.norm.weight.detach().double().clone()
    rotated = copy.deepcopy(tiny_llama)
    done = rotate_model(rotated, "hadamard", seed=0)
    _assert_same_logits(tiny_llama, rotated, tokens)
    assert done.untied and not rotated.config.tie_word_embeddings
    q = random_hadamard(w.shape[1], "hadamard", seed=0)
    torch.testing.assert_close(rotated.get_input_embeddings().weight.double(), w @ q, rtol=0, atol=1e-6)
    torch.testing.assert_close(rotated.get_output_embeddings().weight.double(), (w * g) @ q, rtol=0, atol=1e-6)
    rotated.save_pretrained(tmp_path / "rotated")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "rotated").eval()
    _assert_same_logits(tiny_llama, reloaded, tokens)


@pytest.mark.parametrize("kind", ["hadamard", "block_hadamard"])
def test_width_not_a_power_of_two(tokenizer, text_data, kind):
    """Width 48 = 12 x 4 (Paley order 12 (x) Sylvester 4) or 3 blocks of 16."""
    from infopt.techniques.quantize.rotate import rotate_model

    model = _tiny_llama(tokenizer, 48)
    _random_norms(model, final=True)
    rotated = copy.deepcopy(model)
    done = rotate_model(rotated, kind, seed=0)
    assert done.width == 48
    assert ("Paley order 12" if kind == "hadamard" else "3 Sylvester block(s) of 16") in done.construction
    _assert_same_logits(model, rotated, text_data.calibration_blocks(2, 32))


# --- what it is for -----------------------------------------------------------------------------------


def test_rotation_brings_rtn_w4_per_channel_closer_on_outlier_columns(tiny_llama, text_data):
    """A few input columns of every residual reader 20x larger (the outlier channels of trained LLMs):
    each row's RTN scale is set by them and the other weights round coarsely; rotated, the rows are
    spread out and W4 per-channel reconstructs the readers' outputs (on their real inputs) much better,
    and the logits move less.

    The outliers are planted in the weights with the norms at 1, not as residual channels compensated
    by the norm weight: the rotation fuses the norms first, which would undo such a planting by itself,
    and this test is about the rotation alone (here the fusion changes nothing).
    """
    from infopt.calibration import input_hooks
    from infopt.models.surgery import get_weight
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers, rtn_quantize
    from infopt.techniques.quantize.rotate import rotate_model
    from infopt.techniques.quantize.rtn import quantize_rtn

    readers = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    with torch.no_grad():
        for block in tiny_llama.model.layers:
            for name in readers:
                block.get_submodule(("self_attn." if name[0] in "qkv" else "mlp.") + name).weight[:, [3, 17, 40]] *= 20
    tokens = text_data.calibration_blocks(4, 48)
    ref = _logits(tiny_llama, tokens)
    cfg = QuantizeConfig(method="rtn", bits=4, group_size=-1)  # lm_head left in float (the default)

    def w4_errors(model) -> tuple[float, float]:
        """(mean over readers of ||X (Q(W) - W)^T|| / ||X W^T||, relative logit error) after RTN W4 per channel."""
        layers = find_layers(model, cfg)
        errors: list[float] = []

        def output_error(name: str, x: torch.Tensor) -> None:  # x: (B*T, in)
            w = get_weight(layers[name][0])
            err = x @ (rtn_quantize(w, layers[name][1]).dequantize() - w).T
            errors.append(float(err.norm() / (x @ w.T).norm()))

        with input_hooks({n: m for n, (m, _) in layers.items() if n.endswith(readers)}, output_error):
            _logits(model, tokens)
        quantize_rtn(layers)
        return sum(errors) / len(errors), float((_logits(model, tokens) - ref).norm() / ref.norm())

    plain = w4_errors(copy.deepcopy(tiny_llama))
    rotated = copy.deepcopy(tiny_llama)
    rotate_model(rotated, "hadamard", seed=0)
    _assert_same_logits(tiny_llama, rotated, tokens)
    layer_error, logit_error = w4_errors(rotated)
    assert layer_error < 0.5 * plain[0]  # about 2.7x lower here
    assert logit_error < 0.75 * plain[1]  # about 1.7x lower (attention on 20x queries/keys amplifies the rest)


def test_quantize_with_rotation_records_it_and_exports_a_plain_model(tiny_llama, run_context):
    """technique.rotate runs before the quantizer; the packed export reloads with the rotated weights."""
    from infopt.techniques.quantize.save import load_quantized
    from infopt.techniques.quantize.technique import Quantize

    ctx = run_context(["technique=quantize", "technique.method=gptq", "technique.bits=4", "technique.group_size=32",
                       "technique.rotate=hadamard", "technique.calibration_samples=4",
                       "technique.calibration_seq_len=32"])  # fmt: skip
    tokens = ctx.data.calibration_blocks(2, 24)
    applied = Quantize(ctx.cfg.technique).apply(tiny_llama, ctx)
    assert applied.metrics["rotated"] == 1.0 and applied.metrics["rotate_untied_head"] == 0.0
    assert any("QuaRot" in n and "Sylvester of order 64" in n for n in applied.notes)
    reloaded = load_quantized(applied.artifacts["quantized"])
    torch.testing.assert_close(_logits(reloaded, tokens), _logits(applied.model, tokens), rtol=1e-4, atol=1e-4)


# --- config errors ------------------------------------------------------------------------------------


def _validate(overrides, tmp_path):
    from infopt.composition.validate import validate_config

    return validate_config(compose_config(["technique=quantize", "technique.method=rtn", *overrides], tmp_path))


def test_unknown_rotation_names_the_choices(tmp_path):
    from infopt.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _validate(["model=tiny_llama", "technique.rotate=givens"], tmp_path)
    assert "technique.rotate='givens'" in str(err.value)
    assert "choose one of: none, hadamard, block_hadamard" in str(err.value)
    assert "\n" not in str(err.value)


def test_gpt2_refused_before_loading(tiny_gpt2, monkeypatch, tmp_path):
    """GPT-2's LayerNorm (mean, bias) needs QuaRot's LayerNorm -> RMSNorm conversion, not built: refused
    from the config before any weight loads, and by rotate_model itself before it touches anything."""
    from infopt.errors import ConfigError
    from infopt.techniques.quantize.rotate import rotate_model

    def boom(*a, **k):
        raise AssertionError("model loaded before the config error")

    monkeypatch.setattr("infopt.models.load.load_model", boom)
    with pytest.raises(ConfigError, match=r"model_type='gpt2' is not supported.*technique.rotate=none") as err:
        _validate(["model=tiny_gpt2", "technique.rotate=hadamard"], tmp_path)
    assert "llama" in str(err.value) and "\n" not in str(err.value)
    before = {k: v.clone() for k, v in tiny_gpt2.state_dict().items()}
    with pytest.raises(ConfigError, match="gpt2"):
        rotate_model(tiny_gpt2, "hadamard")
    assert all(torch.equal(v, tiny_gpt2.state_dict()[k]) for k, v in before.items())
    _validate(["model=tiny_gpt2", "technique.rotate=none"], tmp_path)  # the default stays valid
