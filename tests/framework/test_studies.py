"""Layer sensitivity with a test-only technique, objective values, and every experiment config composing."""

from __future__ import annotations

import json
import math

import pytest

from conftest import CONF_DIR, QUICK, compose_config, run_main
from support.toys import register_toys

register_toys()
FAST = [*QUICK, "eval.tasks=[]", "eval.token_perplexity_window=64", "bench.batch_sizes=[1]"]


def test_layer_sensitivity_swaps_one_layer_at_a_time(tmp_path):
    record = run_main(
        [
            "model=tiny_llama",
            *FAST,
            "technique=layer_sensitivity",
            "technique.inner={name:toy_scale,factor:0.3,half:false}",
            "technique.parts=[block,attn,mlp]",
            "technique.eval_blocks=2",
            "technique.seq_len=32",
        ],
        tmp_path,
    )
    m = record["technique"]["metrics"]
    for layer in (0, 1):
        for part in ("block", "attn", "mlp"):
            assert math.isfinite(m[f"layer{layer:02d}/{part}/delta_loss"])
        assert m[f"layer{layer:02d}/block/delta_loss"] != 0.0, (
            "scaling a layer's weights changes the loss"
        )
    assert m["delta_loss_all_layers"] == pytest.approx(m["loss_all_layers"] - m["loss_base"])
    assert (tmp_path / "layer_sensitivity.png").stat().st_size > 1000
    # The report draws the heatmap from the record.
    from infopt.report.build import build_report

    report = build_report([tmp_path], tmp_path / "report")
    assert "layer sensitivity heatmap" in report.html.read_text()


def test_layer_sensitivity_by_hand_matches_one_layer_scaled(
    tmp_path, tiny_llama, text_data, run_context
):
    """The swap is exact: it equals scaling only that layer's weights in a fresh copy."""
    import copy

    import torch

    from infopt.studies.layer_sensitivity import LayerSensitivity, mean_nll
    from infopt.studies.layer_sensitivity_config import LayerSensitivityConfig

    ctx = run_context()
    cfg = LayerSensitivityConfig(
        inner={"name": "toy_scale", "factor": 0.3, "half": False},
        parts=["mlp"],
        eval_blocks=2,
        seq_len=32,
    )
    reference = copy.deepcopy(tiny_llama)
    applied = LayerSensitivity(cfg).apply(tiny_llama, ctx)
    blocks = text_data.heldout_blocks(32)[:2]
    base = mean_nll(reference, blocks)
    with torch.no_grad():
        for module in reference.model.layers[1].mlp.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(0.3)
    assert applied.metrics["layer01/mlp/delta_loss"] == pytest.approx(
        mean_nll(reference, blocks) - base, rel=1e-5
    )


def test_layer_sensitivity_inner_is_validated_at_compose_time():
    from infopt.composition.precheck import precheck

    msg = precheck(
        [
            "model=tiny_llama",
            "technique=layer_sensitivity",
            "technique.inner={name:toy_scale,fctor:2}",
        ],
        CONF_DIR,
    )
    assert msg and "technique.inner (toy_scale): Key 'fctor' not in 'ToyScaleConfig'" in msg
    msg = precheck(
        [
            "model=tiny_llama",
            "technique=layer_sensitivity",
            "technique.inner={name:toy_scale}",
            "technique.parts=[head]",
        ],
        CONF_DIR,
    )
    assert msg and "technique.parts[]='head' is not valid" in msg


def test_objective_within_and_over_budget():
    from infopt.config.schema import ObjectiveConfig
    from infopt.studies.objective import objective_value

    cfg = ObjectiveConfig(metric="ratios/r", budget={"bench/stored_mb": 10.0})
    assert objective_value(cfg, {"ratios/r": 0.9, "bench/stored_mb": 8.0})[0] == 0.9
    value, detail = objective_value(cfg, {"ratios/r": 0.99, "bench/stored_mb": 15.0})
    assert value == pytest.approx(-1.5) and not detail["within_budget"]  # -1 - (15/10 - 1)
    assert objective_value(cfg, {"bench/stored_mb": 1.0})[0] is None
    mini = ObjectiveConfig(
        metric="bench/decode_ms_per_token_b1",
        direction="minimize",
        budget={"bench/stored_mb": 10.0},
    )
    assert objective_value(mini, {"bench/decode_ms_per_token_b1": 3.0, "bench/stored_mb": 20.0})[
        0
    ] == pytest.approx(1e6 + 1.0)


def test_objective_is_recorded(tmp_path):
    record = run_main(
        [
            "model=tiny_llama",
            *FAST,
            "objective.metric=bench/stored_mb",
            "objective.direction=minimize",
        ],
        tmp_path,
    )
    assert record["objective"] == record["result"]["bench"]["stored_mb"]
    assert json.loads((tmp_path / "results.json").read_text())["objective"] == record["objective"]


def test_rerun_in_the_same_dir_skips(tmp_path):
    first = run_main(["model=tiny_llama", "technique=baseline", *FAST], tmp_path)
    second = run_main(["model=tiny_llama", "technique=baseline", *FAST], tmp_path)
    assert second.get("skipped") and second["config_hash"] == first["config_hash"]
    assert (tmp_path / "skipped.json").is_file()
    third = run_main(["model=tiny_llama", "technique=baseline", *FAST, "seed=1"], tmp_path)
    assert not third.get("skipped"), "another config in the same dir runs"


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PIPELINES = sorted(
    p.stem
    for p in (CONF_DIR / "technique").glob("*.yaml")
    if "schema/technique/pipeline@" in p.read_text() and p.stem != "pipeline"
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_composes_and_validates(name):
    from infopt.composition.validate import validate_config

    cfg = compose_config([f"experiment={name}", "model=tiny_llama"])
    assert cfg.experiment == name
    assert validate_config(cfg).experiment == name


@pytest.mark.parametrize("name", PIPELINES)
def test_named_pipeline_validates(name):
    from infopt.composition.validate import validate_config

    cfg = compose_config([f"technique={name}", "model=tiny_llama"])
    assert validate_config(cfg).technique.name == "pipeline"


# Every study on the default model; the tiny models where a study is refused for them.
PRECHECKED = [(name, "smollm2_135m") for name in EXPERIMENTS] + [
    ("structured_pruning_tradeoff", "tiny_gpt2"), ("overview", "tiny_llama"), ("quant_grid", "tiny_gpt2")]


@pytest.mark.parametrize("name,model", PRECHECKED)
def test_every_sweep_combination_of_every_experiment_passes_the_precheck(name, model):
    """What `python run.py experiment=<name> model=<model>` checks before its first job: every value of
    every sweep axis (the experiment's own included), on the model's real shapes. Would have caught a
    group size of 128 on SmolLM2 (576 wide) in budget_search."""
    from infopt.composition import CONF_DIR as conf
    from infopt.composition.precheck import precheck

    message = precheck([f"experiment={name}", f"model={model}", "-m"], conf)
    if (name, model) in REFUSED_STUDIES:
        assert message is not None and REFUSED_STUDIES[name, model] in message
    else:
        assert message is None


# A study that asks for something a model cannot do is refused before any job starts, saying why.
REFUSED_STUDIES = {
    ("structured_pruning_tradeoff", "tiny_gpt2"): "target=heads on GPT-2",
    ("overview", "tiny_llama"): "keeps all 2 layers",  # the layer-subset draft of a 2-layer model
}


def test_regenerate_runs_the_chosen_sweeps_reuses_committed_records_and_collects_complete_ones(tmp_path):
    """A stand-in for run.py writes one record per sweep; only complete ones become committed records."""
    import json
    import stat

    from infopt.studies.records import STUDIES, regenerate

    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys, pathlib\n"
        "sweep = pathlib.Path(next(a.split('=', 1)[1] for a in sys.argv if a.startswith('hydra.sweep.dir=')))\n"
        "job = sweep / ('job%d' % len(list(sweep.glob('job*'))))\njob.mkdir(parents=True)\n"
        "status = 'failed' if 'seed=1,2' in sys.argv else 'complete'\n"
        "(job / 'results.json').write_text(json.dumps({'run': {'status': status}, 'argv': sys.argv[2:]}))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    results, outputs = tmp_path / "results", tmp_path / "outputs"
    committed = results / "overview" / "old" / "results.json"
    committed.parent.mkdir(parents=True)
    committed.write_text(json.dumps({"run": {"status": "complete"}}))

    stats = regenerate("overview", results=results, outputs=outputs, python=str(fake), sweeps=[1])
    assert stats["records_reused"] == 1  # the committed record was put back into the sweep dir
    written = sorted(p.parent.name for p in (results / "overview").rglob("results.json"))
    assert written == ["job0", "old"]  # one sweep ran, and its record was collected beside the reused one
    assert "experiment=overview" in json.loads((results / "overview" / "job0" / "results.json").read_text())["argv"]

    regenerate("overview", results=results, outputs=outputs, python=str(fake), sweeps=[2])
    assert len(list((results / "overview").rglob("results.json"))) == 2  # the failed seed sweep is not a record
    assert len(STUDIES["overview"].sweeps) == 2
    with pytest.raises(SystemExit, match="sweeps 1..2"):
        regenerate("overview", results=results, outputs=outputs, python=str(fake), sweeps=[3])
