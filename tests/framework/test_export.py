"""Export to GGUF (llama.cpp) and compressed-tensors (vLLM / transformers), read back by the
engines' own loaders: transformers' GGUF loader, compressed-tensors through ``from_pretrained``,
and llama.cpp itself where llama-cpp-python is installed (``make bench-llamacpp``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import QUICK, compose_config

PROMPT = "The capital of France is Paris, and the river that runs through it is"


def _ids(tokenizer):
    return tokenizer(PROMPT, return_tensors="pt").input_ids


@torch.no_grad()
def _logits(model, ids):
    return model(ids).logits.float()


def _load_gguf(path):
    from infopt.bench.backends import load_gguf_model

    return load_gguf_model(path)


def _quantize(model, bits: int, group: int, symmetric: bool, act_order_perm: bool = False):
    """RTN every Linear but lm_head into real PackedLinear layers (as technique=quantize execution=real)."""
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import QuantSpec, find_layers, rtn_quantize
    from infopt.techniques.quantize.technique import to_packed

    layers = find_layers(model, QuantizeConfig(method="rtn", bits=bits, group_size=group, symmetric=symmetric))
    qweights = {}
    for name, (mod, _) in layers.items():
        qw = rtn_quantize(mod.weight.detach(), QuantSpec(bits, group, symmetric))
        if act_order_perm:  # a non-contiguous column -> group map, as GPTQ's act-order leaves
            qw.g_idx = qw.g_idx.flip(0)
        qweights[name] = qw
    return to_packed(model, qweights, layers).eval()


# --- GGUF ---------------------------------------------------------------------------------------


def test_gguf_float_llama_reads_back_identical(tiny_llama, tokenizer, tmp_path):
    from gguf import GGUFReader

    from infopt.export.gguf import export_gguf

    info = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="f32")
    ids = _ids(tokenizer)
    back = _load_gguf(info.path)
    # Float32 throughout and the q/k rope permutation undone by the loader: bit-identical logits.
    torch.testing.assert_close(_logits(back, ids), _logits(tiny_llama, ids), rtol=0, atol=1e-5)
    reader = GGUFReader(str(info.path))
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == tiny_llama.config.vocab_size
    assert reader.fields["tokenizer.ggml.merges"].contents()[:1] == ["Ġ t"]
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id


def test_gguf_q8_0_within_quantization_tolerance(tiny_llama, tokenizer, tmp_path):
    from infopt.export.gguf import export_gguf

    info = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="q8_0")
    assert set(info.tensor_types[n] for n in info.tensor_types if n.endswith("attn_q.weight")) == {"q8_0"}
    ids = _ids(tokenizer)
    ref, got = _logits(tiny_llama, ids), _logits(_load_gguf(info.path), ids)
    err = (got - ref).abs().max().item()
    # 8-bit absmax per 32 weights: a small, non-zero error (zero would mean nothing was quantized).
    assert 0 < err < 0.05 * ref.abs().max().item()
    assert (
        info.path.stat().st_size
        < 0.5 * export_gguf(tiny_llama, tokenizer, tmp_path / "f.gguf", qtype="f32").path.stat().st_size
    )


def test_gguf_float_gpt2_reads_back_identical(tokenizer, tmp_path):
    from infopt.config.schema import TinyArchConfig
    from infopt.export.gguf import export_gguf
    from infopt.models.tiny import build_tiny

    # transformers' GGUF loader builds GPT-2 with n_positions=1024 whatever the file says.
    arch = TinyArchConfig(architecture="gpt2", num_kv_heads=4, intermediate_size=256, max_positions=1024)
    model = build_tiny(
        arch, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    info = export_gguf(model, tokenizer, tmp_path / "g.gguf", qtype="f32")
    ids = _ids(tokenizer)
    torch.testing.assert_close(_logits(_load_gguf(info.path), ids), _logits(model, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "bits,group,symmetric,qtype",
    [
        (4, 32, True, "q4_0"),
        (4, 64, False, "q4_1"),
        (5, 32, True, "q5_0"),
        (5, 32, False, "q5_1"),
        (8, -1, True, "q8_0"),
        (3, 32, True, "q4_0"),
        (2, 0, False, "q4_1"),
    ],
)
def test_quantized_codes_map_into_blocks_without_rounding_again(bits, group, symmetric, qtype):
    from gguf import GGMLQuantizationType, quants

    from infopt.export.gguf import IntWeight, auto_type, pack_exact
    from infopt.techniques.quantize.core import QuantSpec, rtn_quantize

    torch.manual_seed(bits)
    w = torch.randn(24, 128) * torch.rand(24, 1)
    qw = rtn_quantize(w, QuantSpec(bits, group, symmetric))
    g = group if group > 0 else 128
    iw = IntWeight(qw.codes.numpy().astype(np.int32), qw.scales.numpy(), qw.zeros.numpy(), g, bits, symmetric)
    assert auto_type(iw) == qtype
    want = qw.dequantize().numpy()
    blocks = pack_exact(iw, qtype)
    got = quants.dequantize(blocks, GGMLQuantizationType[qtype.upper()]).reshape(want.shape)
    if qtype.endswith("_0"):
        np.testing.assert_array_equal(got, want)  # d = s, q = c - z + offset: exact
    else:  # the offset m = -s z is stored as float16: at most half an ulp of it
        m = np.abs(qw.scales.numpy() * qw.zeros.numpy()).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=m * 2**-11 + 1e-7)
    # Rounding the de-quantized floats again with gguf's own quantizer does not give the same weights.
    again = quants.dequantize(
        quants.quantize(want.astype(np.float32), GGMLQuantizationType[qtype.upper()]),
        GGMLQuantizationType[qtype.upper()],
    ).reshape(want.shape)
    assert np.abs(again - want).max() > np.abs(got - want).max()


def test_gguf_quantized_model_runs_the_scored_weights(tiny_llama, tokenizer, tmp_path):
    from infopt.export.gguf import export_gguf

    model = _quantize(tiny_llama, 4, 32, True)
    info = export_gguf(model, tokenizer, tmp_path / "q.gguf", float_type="f32")  # auto: codes kept, floats f32
    assert info.exact_layers == 14 and info.requantized_layers == 0
    assert info.tensor_types["blk.0.attn_k.weight"] == "q4_0" and info.tensor_types["blk.1.ffn_down.weight"] == "q4_0"
    ids = _ids(tokenizer)
    # Same codes and scales, and the permuted q/k rows: the same logits as the quantized model.
    torch.testing.assert_close(_logits(_load_gguf(info.path), ids), _logits(model, ids), rtol=0, atol=2e-5)


def test_unsupported_models_and_types_are_refused(tiny_llama, tokenizer, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from infopt.errors import ConfigError
    from infopt.export.gguf import ExportError, export_gguf

    mistral = MistralForCausalLM(
        MistralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(ExportError, match="model_type='mistral' is not supported.*llama, gpt2"):
        export_gguf(mistral, tokenizer, tmp_path / "x.gguf")
    tiny_llama.config.attention_bias = True
    with pytest.raises(ExportError, match="attention_bias"):
        export_gguf(tiny_llama, tokenizer, tmp_path / "x.gguf")
    tiny_llama.config.attention_bias = False
    with pytest.raises(ConfigError, match="q4_k.*K-quants"):
        export_gguf(tiny_llama, tokenizer, tmp_path / "x.gguf", qtype="q4_k")
    act_order = _quantize(tiny_llama, 4, 32, True, act_order_perm=True)
    with pytest.raises(ExportError, match="act-order"):
        export_gguf(act_order, tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*x.gguf*"))  # nothing half-written left behind


def test_truncated_gguf_is_detected(tiny_llama, tokenizer, tmp_path):
    from infopt.errors import ResourceError
    from infopt.export.gguf import export_gguf, verify_gguf

    path = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="q8_0").path
    verify_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResourceError, match="truncated or corrupt"):
        verify_gguf(path)
    with pytest.raises(ResourceError, match="truncated"):
        _load_gguf(path)


# --- compressed-tensors --------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (4, 64, False), (8, -1, True)])
def test_compressed_tensors_round_trip(tiny_llama, tokenizer, tmp_path, bits, group, symmetric):
    import json

    from transformers import AutoModelForCausalLM

    from infopt.export.compressed_tensors import export_compressed_tensors

    model = _quantize(tiny_llama, bits, group, symmetric)
    target = export_compressed_tensors(model, tokenizer, tmp_path / "ct")
    qcfg = json.loads((target / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors"
    assert qcfg["format"] == ("pack-quantized" if symmetric else "int-quantized")
    back = AutoModelForCausalLM.from_pretrained(str(target)).eval()
    ids = _ids(tokenizer)
    torch.testing.assert_close(_logits(back, ids), _logits(model, ids), rtol=0, atol=2e-5)
    from safetensors import safe_open

    with safe_open(str(target / "model.safetensors"), "pt") as f:  # integer codes on disk, not floats
        key = "model.layers.0.mlp.down_proj.weight" + ("_packed" if symmetric else "")
        assert f.get_tensor(key).dtype == (torch.int32 if symmetric else torch.int8)


def test_compressed_tensors_refuses_float_model(tiny_llama, tokenizer, tmp_path):
    from infopt.export.compressed_tensors import export_compressed_tensors
    from infopt.export.gguf import ExportError

    with pytest.raises(ExportError, match="no quantized layers"):
        export_compressed_tensors(tiny_llama, tokenizer, tmp_path / "ct")


# --- CLI and run hooks -------------------------------------------------------------------------


def test_cli_exports_a_run_dir_and_records_it(tiny_llama, tokenizer, tmp_path):
    import json

    from infopt.export.__main__ import main
    from infopt.techniques.quantize.save import save_quantized

    model = _quantize(tiny_llama, 4, 32, True)
    save_quantized(model, tmp_path / "quantized", method="rtn", tokenizer=tokenizer)
    (tmp_path / "results.json").write_text(json.dumps({"technique": {"artifacts": {}}}))
    assert main([str(tmp_path), "--format", "gguf"]) == 0
    assert (tmp_path / "model.gguf").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["technique"]["artifacts"]["gguf"] == str(
        tmp_path / "model.gguf"
    )
    assert main([str(tmp_path / "empty"), "--format", "gguf"]) == 2  # no model there: one-line error


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["bench.backend=llamacpp"], "technique.export=gguf"),
        (["bench.backend=vllm"], "technique.export=compressed_tensors"),
        (["technique.export=gguf", "technique.export_type=q4_k_m"], "technique.export_type=q4_k_m"),
        (["technique.export=gguf", "technique.export_float_type=q4_0"], "technique.export_float_type"),
        (
            # act-order with dynamic groups: the group scales follow the permuted columns, which GGUF
            # blocks cannot hold (static groups, the default, can)
            ["technique=quantize", "technique.method=gptq", "technique.group_size=32", "technique.export=gguf",
             "technique.gptq_static_groups=false"],
            "gptq_static_groups=true",
        ),
        (
            ["technique=quantize", "technique.method=rtn", "technique.group_size=16", "technique.export=gguf"],
            "multiple of 32",
        ),
    ],
)
def test_backend_and_export_combinations_checked_before_load(overrides, needle, tmp_path):
    from infopt.composition.validate import validate_config
    from infopt.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        validate_config(compose_config(["model=tiny_llama", *QUICK, *overrides], tmp_path))


def test_vllm_backend_skips_clearly_without_gpu(tiny_llama, tokenizer, tmp_path, monkeypatch):
    from infopt.bench import backends
    from infopt.composition.validate import validate_config

    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    cfg = validate_config(
        compose_config(
            ["model=tiny_llama", *QUICK, "bench.backend=vllm", "technique.export=hf", "bench.batch_sizes=[1]"], tmp_path
        ),
        check_technique=False,
    )
    bench, notes, extra = backends.measure_backend(tiny_llama, tokenizer, cfg, {})
    assert "decode_tokens_per_s_b1" in bench and not any(k.startswith("vllm") for k in bench)
    assert any("vllm skipped: no CUDA GPU" in n for n in notes)


# --- llama.cpp itself (optional extra) ---------------------------------------------------------

needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed (make bench-llamacpp)"
)


@needs_llamacpp
def test_llamacpp_runs_the_export_like_transformers(tiny_llama, tokenizer, tmp_path):
    from llama_cpp import Llama

    from infopt.export.gguf import export_gguf

    path = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="f32").path
    ids = tokenizer(PROMPT).input_ids
    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    try:
        assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids  # same tokenizer
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    np.testing.assert_allclose(got, _logits(tiny_llama, torch.tensor([ids]))[0].numpy(), rtol=0, atol=2e-3)


@needs_llamacpp
def test_measure_llamacpp_reports_speed(tiny_llama, tokenizer, tmp_path):
    from infopt.bench.backends import measure_llamacpp
    from infopt.config.schema import BenchConfig
    from infopt.export.gguf import export_gguf

    path = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="q8_0").path
    out = measure_llamacpp(
        path,
        BenchConfig(prompt_tokens=8, new_tokens=4, warmup=0, repeats=1, threads=1),
        None,
        tiny_llama.config.vocab_size,
    )
    assert out["llamacpp_decode_tokens_per_s_b1"] > 0 and out["llamacpp_prefill_ms_b1"] > 0
    assert out["gguf_mb"] == pytest.approx(path.stat().st_size / 2**20)


def test_run_with_export_gguf_records_the_artifact(tmp_path):
    from conftest import run_main

    record = run_main(
        [
            "model=tiny_llama",
            *QUICK,
            "bench=none",
            "skip_baseline=true",
            "technique=quantize",
            "technique.method=rtn",
            "technique.bits=4",
            "technique.group_size=32",
            "technique.export=gguf",
        ],
        tmp_path,
    )
    t = record["technique"]
    assert t["artifacts"]["gguf"] == str(tmp_path / "model.gguf") and (tmp_path / "model.gguf").is_file()
    # The simulated run's codes come from its packed export: every quantized layer kept, none rounded again.
    assert t["metrics"]["gguf_exact_layers"] == t["metrics"]["layers_quantized"] == 14
    assert t["metrics"]["gguf_requantized_layers"] == 0


def test_output_type_sets_embedding_apart(tiny_llama, tokenizer, tmp_path):
    from infopt.export.gguf import export_gguf

    info = export_gguf(tiny_llama, tokenizer, tmp_path / "m.gguf", qtype="q4_1", output_type="q8_0")
    assert info.tensor_types["token_embd.weight"] == "q8_0"
    assert {
        info.tensor_types[n]
        for n in info.tensor_types
        if n.startswith("blk.") and n.split(".")[2] in ("attn_q", "ffn_up")
    } <= {"q4_1"}
    assert info.type == "q4_1" and info.requantized_layers == 15  # 14 block matrices + the embedding
