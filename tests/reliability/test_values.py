"""Values that pass every comparison and text that rich would read: NaN/inf in configs and records, a
sparsity that empties rows, markup in names, and records the report cannot trust (issue 18: 3, 5, 7, 8)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import typing

import pytest

from conftest import CACHE_DIR, REPO, compose_config
from infopt.cli import CONF_DIR as CLI_CONF_DIR  # importing the CLI registers the schemas, as run.py does
from infopt.errors import ConfigError

NON_FINITE = [math.nan, math.inf, -math.inf]


# ---- non-finite floats in configs ----------------------------------------------------------------


def _float_keys(node, prefix=""):
    """Dotted keys of every float field (float or Optional[float]) in a validated config tree."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value, kind = getattr(node, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            yield from _float_keys(value, key)
        elif kind is float or float in typing.get_args(kind):
            yield key


def _technique_options() -> list[str]:
    """Each registered technique by its own config (a pipeline's stages: see the pipeline test)."""
    from infopt.techniques.registry import names

    return [n for n in names() if n != "pipeline" and (REPO / "conf" / "technique" / f"{n}.yaml").is_file()]


@pytest.mark.parametrize("technique", _technique_options())
def test_every_float_field_rejects_nan_and_inf_naming_the_key(technique, tmp_path):
    """Every float of the technique (its train/loss/student/... sub-configs too), data, eval, bench and
    objective: NaN and +-inf are refused with one line naming the key, before anything loads."""
    from omegaconf import OmegaConf

    from infopt.composition.validate import to_object, validate_config

    cfg = compose_config(["model=tiny_llama", f"technique={technique}"], tmp_path)
    keys = [k for k in _float_keys(to_object(cfg)) if k != "objective.budget"]
    assert "objective.penalty" in keys
    for key in keys:
        for value in NON_FINITE:
            bad = cfg.copy()
            OmegaConf.update(bad, key, value)
            with pytest.raises(ConfigError) as err:
                validate_config(bad)
            message = str(err.value)
            assert message == f"{key}={value!r} is not a finite number", (key, value, message)


def test_the_float_fields_found_include_the_ones_the_issue_names(tmp_path):
    from infopt.composition.validate import to_object

    found = {t: set(_float_keys(to_object(compose_config(["model=tiny_llama", f"technique={t}"], tmp_path))))
             for t in ("prune", "quantize", "distill")}  # fmt: skip
    assert "technique.sparsity" in found["prune"] and "technique.recover.lr" in found["prune"]
    assert "technique.gptq_damp" in found["quantize"]
    assert {"technique.train.lr", "technique.loss.temperature"} <= found["distill"]


@pytest.mark.parametrize(
    "argv,key",
    [
        (["technique=prune_recover_quantize", "technique.stages.0.sparsity=nan"], "technique.stages[0].sparsity"),
        (["+objective.budget.stored_mb=inf"], "objective.budget.stored_mb"),
        (["technique=prune", "technique.structured.target=heads", "technique.structured.ratio=-inf"],
         "technique.structured.ratio"),
    ],
)  # fmt: skip
def test_non_finite_values_in_stages_and_budgets_are_refused(argv, key):
    from infopt.composition.precheck import precheck

    message = precheck(["model=tiny_llama", *argv], CLI_CONF_DIR)
    assert message is not None and message.startswith(key) and "is not a finite number" in message


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    "check",
    [
        lambda v: __import__("infopt.config.checks", fromlist=["x"]).in_range("k", v, 0.0, 1.0),
        lambda v: __import__("infopt.config.checks", fromlist=["x"]).in_range("k", v, None, None),
        lambda v: __import__("infopt.config.checks", fromlist=["x"]).positive("k", v),
        lambda v: __import__("infopt.config.checks", fromlist=["x"]).non_negative("k", v),
    ],
    ids=["in_range", "in_range_unbounded", "positive", "non_negative"],
)
def test_every_validator_refuses_non_finite_numbers(check, value):
    with pytest.raises(ConfigError, match=r"^k=(nan|inf|-inf) is not a finite number$"):
        check(value)


def test_nan_sparsity_on_the_command_line_exits_2_with_one_line_before_the_model_loads(tmp_path):
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "run.py", "model=tiny_llama", "technique=prune", "technique.sparsity=nan",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["infopt: error: technique.sparsity=nan is not a finite number"], proc.stderr
    assert not (tmp_path / "run").exists(), "nothing is created before validation passes"


# ---- sizes bounded by the model's context and the corpus ------------------------------------------

TINY_CONTEXT = "the context of model tiny_llama: 512 tokens (model.tiny.max_positions)"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench.prompt_tokens=100000"],
         f"bench.prompt_tokens=100000 plus bench.new_tokens=32 (100032 tokens) do not fit {TINY_CONTEXT}; "
         "use bench.prompt_tokens<=480; or raise model.tiny.max_positions"),
        (["data.seq_len=100000"],
         f"data.seq_len=100000 is longer than {TINY_CONTEXT}; use data.seq_len<=512; or raise model.tiny.max_positions"),
        (["bench.new_tokens=600"], f"bench.prompt_tokens=128 plus bench.new_tokens=600 (728 tokens) do not fit {TINY_CONTEXT}; "
         "keep bench.prompt_tokens + bench.new_tokens <= 512; or raise model.tiny.max_positions"),
        (["eval.token_perplexity_window=1024"], "eval.token_perplexity_window=1024 is longer than"),
        (["eval.max_length=4096"], "eval.max_length=4096 is longer than"),
        (["technique=prune_recover_quantize", "technique.stages.1.train.seq_len=1024"],
         "technique.stages[1].train.seq_len=1024 is longer than"),
        (["technique=quantize", "technique.calibration_seq_len=600"], "technique.calibration_seq_len=600 is longer than"),
        (["technique=kv_cache", "technique.agreement_prompt_tokens=500"],
         "technique.agreement_prompt_tokens=500 plus technique.agreement_new_tokens=32 (532 tokens) do not fit"),
        (["technique=speculative", "technique.prompt_lookup=3", "technique.prompt_tokens=500"],
         "technique.prompt_tokens=500 plus technique.new_tokens=64 (564 tokens) do not fit"),
        (["model=smollm2_135m", "data.seq_len=8193"],
         "data.seq_len=8193 is longer than the context of model smollm2_135m: 8192 tokens (max_position_embeddings of "
         "SmolLM2-135M); use data.seq_len<=8192; or use a model with a longer context"),
        # at the limit, or with the limit raised, nothing is refused
        (["data.seq_len=512", "bench.prompt_tokens=480", "eval.token_perplexity_window=512"], None),
        (["model.tiny.max_positions=100000", "data.seq_len=100000", "bench.prompt_tokens=99968"], None),
        (["bench=none", "bench.prompt_tokens=100000"], None),  # no bench, no prompt
    ],
)  # fmt: skip
def test_lengths_beyond_the_models_context_are_refused_in_the_config_check(argv, message):
    """Checked from the architecture config in precheck, which imports no torch and loads no model."""
    from infopt.composition.precheck import precheck

    got = precheck(["model=tiny_llama", *argv], CLI_CONF_DIR)
    if message is None:
        assert got is None, got
    else:
        assert got is not None and got.startswith(message) and "\n" not in got, got


def test_a_local_checkpoint_is_bounded_by_its_config_json(tmp_path):
    from infopt.composition.precheck import precheck

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 128}))
    got = precheck(["model=hf", "model.source=local", f"model.name_or_path={tmp_path}"], CLI_CONF_DIR)
    assert got == ("data.seq_len=512 is longer than the context of model hf: 128 tokens (n_positions of its "
                   "config.json); use data.seq_len<=128; or use a model with a longer context")  # fmt: skip


@pytest.mark.parametrize("override,key", [("bench.prompt_tokens=100000", "bench.prompt_tokens"),
                                          ("data.seq_len=100000", "data.seq_len")])  # fmt: skip
def test_the_issue_sizes_exit_2_with_one_line_before_the_model_loads(tmp_path, override, key):
    """Before: the OOM killer (no message) and a traceback after the baseline. Now the config check stops
    the run before Hydra makes its dir (so before any load)."""
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "run.py", "model=tiny_llama", override, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"infopt: error: {key}=100000 ") and "512 tokens (model.tiny.max_positions)" in line, line
    assert f"{key}<=" in line, line
    assert not (tmp_path / "run").exists(), "nothing is created, nothing loads, before the config check passes"


def test_a_block_longer_than_the_corpus_is_refused_naming_its_tokens_and_the_maximum(tokenizer):
    from infopt.config.schema import DataConfig
    from infopt.data.blocks import TooFewTokens
    from infopt.data.corpus import Corpus
    from infopt.data.text import TextData

    corpus = Corpus("small", train=("A short training document.", "And another one."),
                    calibration=("One calibration line.",), heldout=("Held out.",))  # fmt: skip
    data = TextData(DataConfig(name="small", source="text_files", files=["x.txt"], seq_len=256), tokenizer, corpus)
    n = data.train_stream.numel()  # calibration falls back to the training text when its own is too short
    more = "give more text (data.files, data.max_docs, data.calibration_docs)"
    with pytest.raises(ConfigError) as err:
        data.train_blocks()
    assert str(err.value) == (f"data.seq_len=256 is longer than the text it is cut from allows: {n} tokens, "
                              f"so at most {n}; use data.seq_len<={n}, or {more}")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        data.calibration_blocks()
    assert f"{n} tokens, so at most {n - 1}; use data.seq_len<={n - 1}" in str(err.value)  # a window needs one more
    assert isinstance(err.value, ValueError) and isinstance(err.value, TooFewTokens)  # older callers catch ValueError
    assert data.train_blocks(n).shape == (1, n) and data.calibration_blocks(2, n - 1).shape == (2, n - 1)


# ---- records are strict JSON ---------------------------------------------------------------------


def _strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} in a record")

    return json.loads(text, parse_constant=refuse)


def test_a_record_with_a_nan_metric_is_written_as_strict_json(tmp_path):
    from infopt.io import atomic_write_json, non_finite

    record = {"result": {"eval": {"heldout/word_perplexity": math.nan, "analogy/acc": 0.5}},
              "ratios": {"bench/x/speedup": math.inf}, "list": [1.0, -math.inf]}  # fmt: skip
    assert non_finite(record) == ["result.eval.heldout/word_perplexity", "ratios.bench/x/speedup", "list[1]"]
    atomic_write_json(tmp_path / "results.json", record)
    back = _strict_loads((tmp_path / "results.json").read_text())
    assert back == {"result": {"eval": {"heldout/word_perplexity": None, "analogy/acc": 0.5}},
                    "ratios": {"bench/x/speedup": None}, "list": [1.0, None]}  # fmt: skip


def test_a_cache_entry_with_nan_reads_back_as_intact(tmp_path):
    """The checksum is of what is written (null), so the entry is not re-measured on every run."""
    from infopt.io import read_checked_json, write_checked_json

    write_checked_json(tmp_path / "entry.json", {"eval": {"x": math.nan, "y": 1.0}})
    _strict_loads((tmp_path / "entry.json").read_text())
    assert read_checked_json(tmp_path / "entry.json") == {"eval": {"x": None, "y": 1.0}}


# ---- a sparsity that empties rows --------------------------------------------------------------


def test_a_sparsity_that_would_zero_whole_rows_is_refused_naming_the_real_bound(tiny_llama, run_context):
    from infopt.models.surgery import get_weight
    from infopt.techniques.prune.config import PruneConfig
    from infopt.techniques.prune.technique import Prune, target_layers

    c = PruneConfig(method="magnitude", sparsity=0.999)
    c.validate()  # inside the schema's [0, 1)
    with pytest.raises(ConfigError) as err:
        Prune(c).apply(tiny_llama, run_context())
    message = str(err.value)
    assert "technique.sparsity=0.999 would zero whole rows of 64-wide layers" in message
    assert "at most 0.9844 (63 of 64)" in message and "\n" not in message
    assert all(bool((get_weight(m) != 0).all()) for m in target_layers(tiny_llama, c).values()), "pruned anyway"

    at_bound = PruneConfig(method="magnitude", sparsity=63 / 64)  # the bound the message names is accepted
    Prune(at_bound).apply(tiny_llama, run_context())
    for name, module in target_layers(tiny_llama, at_bound).items():
        kept = (get_weight(module) != 0).sum(dim=1)  # (out,)
        assert int(kept.min()) >= 1, f"{name} has an all-zero row"


# ---- markup in names ---------------------------------------------------------------------------

MARKUP = "x [/abs/path] [bold]b[/bold] [red] C:\\dir\\"


def test_the_summary_prints_markup_in_user_text_literally(capsys, monkeypatch):
    from infopt.summary import print_summary

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the strings compared below
    record = {
        "run": {"name": MARKUP, "output_dir": f"/runs/{MARKUP}"},
        "technique": {"name": "prune", "execution": "[/x]", "notes": [f"note {MARKUP}"], "metrics": {"[bold]": 1.0}},
        "baseline": {}, "ratios": {}, "result": {"eval": {"heldout/[/abs/path]": 2.0}, "bench": {}},
        "stages": [{"step": 1, "name": "[/s]", "method": "[bold]", "execution": "[/e]", "ratios": {}}],
    }  # fmt: skip
    print_summary(record)
    out = capsys.readouterr().out
    for text in (MARKUP, "execution=[/x]", f"note: note {MARKUP}", f"results: /runs/{MARKUP}/results.json",
                 "technique/[bold]", "eval/heldout/[/abs/path]", "[/s] ([bold])", "[/e]"):  # fmt: skip
        assert text in out, (text, out)


def test_phase_lines_print_markup_in_names_literally(capsys):
    from infopt.console import phase, progress

    with phase(f"load {MARKUP}"):
        progress("block [/x] 1/2")
    err = capsys.readouterr().err
    assert f"infopt: load {MARKUP} done (" in err, err


# ---- the report's records ----------------------------------------------------------------------


def _records():
    from support.report_fixtures import record

    return [record("a", "prune", 25.0, 50.0, 8.0), record("b", "quantize", 22.0, 40.0, 9.0)]


def test_a_record_of_another_schema_version_is_skipped_with_one_warning(tmp_path, caplog):
    from infopt.report.load import rows
    from support.report_fixtures import write

    recs = _records()
    recs[0]["schema_version"] = 2
    write(tmp_path, recs)
    with caplog.at_level("WARNING"):
        out = rows(tmp_path)
    assert [r["run_name"] for r in out] == ["b"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(tmp_path / "00" / "results.json") in warning and "schema_version 2, this infopt reads 1" in warning


@pytest.mark.parametrize(
    "path,value,why",
    [
        (("result", "eval", "heldout/word_perplexity"), "25.0", "result.eval.heldout/word_perplexity is '25.0', not a number"),
        (("result", "bench"), [1], "no result with eval and bench sections"),
        (("ratios",), "1.2", "ratios is a string, expected an object or null"),
        (("baseline", "eval"), [20.0], "baseline.eval is a list, expected an object or null"),
        (("technique",), "prune", "technique is a string"),
        (("technique", "name"), 3, "technique.name is a number, expected a string or null"),
        (("config", "model"), "m", "config.model is a string"),
        (("config", "eval", "tasks"), [1], "config.eval.tasks is not a list of names"),
        (("environment", "hardware"), "CPU A", "environment.hardware is a string"),
        (("run",), "complete", "not a complete run"),
        ((), [1, 2], "not a JSON object"),
    ],
)
def test_a_record_of_the_wrong_shape_is_skipped_with_a_warning(tmp_path, caplog, path, value, why):
    from infopt.report.build import build_report
    from support.report_fixtures import write

    recs = _records()
    if path:
        node = recs[0]
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    else:
        recs[0] = value
    write(tmp_path, recs)
    with caplog.at_level("WARNING"):
        report = build_report([tmp_path], tmp_path / "report", metric=None, title="t")
    assert len(report.rows) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path / "00" / "results.json") in warnings[0] and why in warnings[0], warnings


def test_an_unknown_metric_exits_2_with_one_line_naming_the_valid_ones(tmp_path, capsys):
    from infopt.report.__main__ import main
    from support.report_fixtures import write

    write(tmp_path, _records())
    assert main([str(tmp_path), "--metric", "heldout/nope"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'heldout/nope'" in lines[0] and "valid: heldout/word_perplexity" in lines[0], lines
    assert not (tmp_path / "report").exists()
