"""Sizes of tensor-subclass weights (torchao, 2:4 sparse) and the end-of-run table's rendering."""

from __future__ import annotations

import pytest
from torch import nn

from infopt.bench.size import parameter_count, stored_bytes


def test_tensor_subclass_weights_count_by_their_inner_tensors():
    """torchao's weights report data_ptr() 0 and a float element size: each must still count once,
    at the bytes of its int8 data and scales (before the fix, four layers counted as one float one)."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(4)])
    float_bytes = stored_bytes(model)
    assert float_bytes == 4 * 256 * 256 * 4
    quantize_(model, Int8WeightOnlyConfig())
    inner = 0
    for layer in model:
        names, _ = layer.weight.__tensor_flatten__()
        inner += sum(getattr(layer.weight, n).numel() * getattr(layer.weight, n).element_size() for n in names)
    assert inner >= 4 * 256 * 256  # int8 codes at least
    assert stored_bytes(model) == inner
    assert parameter_count(model) == 4 * 256 * 256


def test_tied_weights_still_count_once(tiny_llama):
    emb = tiny_llama.get_input_embeddings().weight
    assert tiny_llama.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert parameter_count(tiny_llama) == sum(p.numel() for p in tiny_llama.parameters())  # parameters() dedups


def test_summary_prints_overrides_and_notes_as_text(capsys):
    """A list override (data.files=[/a.txt]) in the run name is text, not rich markup."""
    from infopt.summary import print_summary

    record = {
        "run": {"name": "data.files=[/tmp/lee.txt],eval.tasks=[]", "output_dir": "/tmp/[x]"},
        "technique": {"name": "baseline", "execution": "dense", "notes": ["kept [/bold] as written"], "metrics": {}},
        "baseline": {"eval": {}, "bench": {"stored_mb": 1.0}},
        "result": {"eval": {}, "bench": {"stored_mb": 1.0}},
        "ratios": {},
    }
    print_summary(record)
    out = capsys.readouterr().out
    assert "[/tmp/lee.txt]" in out
    assert "kept [/bold] as written" in out
