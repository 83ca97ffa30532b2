"""Pipelines: every stage measured, cumulative and per-stage ratios, bad pipelines rejected at compose time."""

from __future__ import annotations

import math

import pytest

from conftest import CONF_DIR, QUICK, compose_config, run_main
from support.toys import register_toys

register_toys()
# Token perplexity only, batch 1: each stage's eval + bench in well under a second on a tiny model.
FAST = [*QUICK, "eval.tasks=[]", "eval.token_perplexity_window=64", "bench.batch_sizes=[1]"]

SCALE_THEN_HALF = "technique.stages=[{name:toy_scale,factor:0.5,half:false},{name:toy_scale,factor:1.0,half:true}]"


def test_pipeline_records_each_stage_and_cumulative_ratios(tmp_path):
    record = run_main(["model=tiny_llama", *FAST, "technique=pipeline", SCALE_THEN_HALF], tmp_path)
    stages = record["stages"]
    assert [s["name"] for s in stages] == ["toy_scale", "toy_scale"]
    assert [s["step"] for s in stages] == [1, 2]
    for s in stages:
        assert s["result"]["eval"] and s["result"]["bench"], (
            "each stage is evaluated and benchmarked"
        )
    # The last stage's measurement is the run's result (measured once, not twice).
    assert record["result"] == stages[-1]["result"]
    assert stages[-1]["ratios"]["cumulative"] == record["ratios"]
    # Scaling weights changes quality but not size; bfloat16 halves the stored size.
    comp = "bench/stored_mb/compression"
    assert stages[0]["ratios"]["cumulative"][comp] == pytest.approx(1.0)
    assert stages[1]["ratios"]["stage"][comp] == pytest.approx(2.0, rel=0.01)
    ppl = "eval/heldout/token_perplexity_w64/recovery"
    assert stages[0]["ratios"]["cumulative"][ppl] != pytest.approx(1.0)
    # cumulative = product of the per-stage ratios (baseline/s1 * s1/s2 = baseline/s2).
    for key in (comp, ppl):
        product = math.prod(s["ratios"]["stage"][key] for s in stages)
        assert stages[-1]["ratios"]["cumulative"][key] == pytest.approx(product, rel=1e-9)
    assert (
        record["technique"]["notes"][0] == "pipeline order: toy_scale (dense) -> toy_scale (dense)"
    )
    assert "stage1_toy_scale/scaled_modules" in record["technique"]["metrics"]


def test_reverse_applies_stages_in_the_other_order(tmp_path):
    stages = "technique.stages=[{name:toy_scale,factor:0.5,half:false},{name:baseline}]"
    record = run_main(
        [
            "model=tiny_llama",
            *FAST,
            "technique=pipeline",
            stages,
            "technique.reverse=true",
            "technique.measure_stages=false",
        ],
        tmp_path,
    )
    assert [(s["name"], s["index"]) for s in record["stages"]] == [
        ("baseline", 1),
        ("toy_scale", 0),
    ]
    assert record["stages"][0]["result"] is None, (
        "measure_stages=false measures only the last stage"
    )


def _precheck(overrides):
    from infopt.composition.precheck import precheck

    return precheck(["model=tiny_llama", *QUICK, "technique=pipeline", *overrides], CONF_DIR)


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            "[{name:toy_freeze},{name:toy_scale}]",
            "technique.stages[1] (toy_scale, applied as step 2 of 2) modifies float weights, but technique.stages[0] (toy_freeze) leaves real low-bit kernels",
        ),
        (
            "[{name:toy_scale,factr:2}]",
            "technique.stages[0] (toy_scale): Key 'factr' not in 'ToyScaleConfig'",
        ),
        (
            "[{name:toy_scale,factor:-1}]",
            "technique.stages[0] (toy_scale): technique.factor=-1.0 must be > 0",
        ),
        (
            "[{name:quantise}]",
            "technique.name='quantise' is not a registered technique; choose one of:",
        ),
        ("[{name:pipeline}]", "a pipeline cannot be a stage"),
        ("[{factor:2}]", "is not a technique node"),
        ("[]", "technique.stages is empty"),
    ],
)
def test_invalid_pipeline_is_rejected_at_compose_time(stages, expected):
    message = _precheck([f"technique.stages={stages}"])
    assert message is not None and expected in message, message


def test_training_stage_without_training_documents_is_rejected():
    ok = _precheck(["technique.stages=[{name:toy_train}]"])
    assert ok is None
    message = _precheck(["technique.stages=[{name:toy_train}]", "data.max_docs=50"])
    assert (
        message is not None
        and "needs training/calibration text but data.max_docs=50 leaves no training documents"
        in message
    )


def test_freeze_last_is_valid_and_reverse_is_checked():
    # toy_freeze last is fine; reversed, toy_scale would follow the frozen weights.
    assert _precheck(["technique.stages=[{name:toy_scale},{name:toy_freeze}]"]) is None
    message = _precheck(
        ["technique.stages=[{name:toy_scale},{name:toy_freeze}]", "technique.reverse=true"]
    )
    assert message is not None and "modifies float weights" in message


def test_a_study_cannot_be_a_stage():
    message = _precheck(["technique.stages=[{name: layer_sensitivity, inner: {name: quantize}}]"])
    assert message is not None and "technique.stages[0]" in message and "cannot be a stage" in message


def test_combined_execution_is_the_weakest_claim():
    from infopt.techniques.pipeline import combined_execution

    assert combined_execution(["masked_dense", "simulated"]) == "simulated"
    assert combined_execution(["dense", "real"]) == "real"
    assert combined_execution(["dense", "dense"]) == "dense"


def test_pipeline_config_composes_with_schema():
    cfg = compose_config(["model=tiny_llama", "technique=pipeline", SCALE_THEN_HALF])
    assert cfg.technique.stages[1].half is True
