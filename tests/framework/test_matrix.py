"""Every registered technique x {tiny Llama, tiny GPT-2}: runs end to end, or is refused with a named reason.

Driven by the registry: a new technique fails ``test_every_technique_has_matrix_settings`` until it
gets fast settings here. Each run goes through ``run_experiment`` (config validation, load, baseline,
technique, measurement, record) with token perplexity as the only eval and the quick bench.
"""

from __future__ import annotations

import pytest

from conftest import run_main
from infopt.errors import ConfigError
from infopt.techniques import registry

FAST = ["eval.tasks=[]", "eval.limit=2", "bench=quick", "logger=none", "data.seq_len=64",
        "data.calibration_samples=4"]  # fmt: skip

# The fastest setting of each technique that still runs its real code path.
SETTINGS: dict[str, list[str]] = {
    "baseline": [],
    "quantize": ["technique.method=rtn", "technique.bits=4", "technique.group_size=32"],
    "prune": ["technique.method=wanda", "technique.sparsity=0.5"],
    "distill": ["technique.train.max_steps=2", "technique.train.batch_size=2", "technique.train.seq_len=32",
                "technique.train.val_every=2", "technique.train.val_batches=1", "technique.train.checkpoint_every=0",
                "technique.student.layers=[0]", "technique.save_student=false"],
    "attention": ["technique.context_lengths=[32]", "technique.decode_tokens=2"],
    "kv_cache": ["technique.context_lengths=[32]", "technique.agreement_prompts=1", "technique.agreement_prompt_tokens=16",
                 "technique.agreement_new_tokens=4", "technique.ppl_windows=1", "technique.ppl_window=32", "technique.ppl_chunk=8"],
    "compile": ["technique.backend=eager", "technique.check_prompts=1", "technique.check_new_tokens=4",
                "technique.repeats=1"],
    "speculative": ["technique.prompt_lookup=3", "technique.prompts=1", "technique.prompt_tokens=32",
                    "technique.new_tokens=4"],
    "pipeline": ["technique.stages=[{name: prune, method: magnitude}, {name: quantize, method: rtn, group_size: 32}]"],
    "layer_sensitivity": ["technique.inner={name: quantize, method: rtn, group_size: 32}", "technique.eval_blocks=1",
                          "technique.seq_len=32"],
}  # fmt: skip

# (technique, architecture) -> part of the reason it is refused (before any model loads).
REFUSED: dict[tuple[str, str], str] = {}


def shipped_techniques() -> list[str]:
    """The registry without the test suite's toy techniques (registered by other tests in this session)."""
    from support.toys import TOYS

    return [n for n in registry.names() if n not in TOYS]


def test_every_technique_has_matrix_settings():
    assert sorted(SETTINGS) == shipped_techniques()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("name", shipped_techniques())
def test_technique_runs_end_to_end_or_is_refused(name, architecture, tmp_path):
    overrides = [f"model=tiny_{architecture}", f"technique={name}", *FAST, *SETTINGS[name]]
    if (name, architecture) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[name, architecture]):
            run_main(overrides, tmp_path)
        return
    record = run_main(overrides, tmp_path)
    assert record["run"]["status"] == "complete"
    assert record["technique"]["name"] == name
    assert record["technique"]["family"] in registry.FAMILIES
    assert record["result"]["eval"]["heldout/token_perplexity_w512"] > 1
    assert record["ratios"]["bench/stored_mb/compression"] > 0
    assert (tmp_path / "results.json").is_file()


@pytest.mark.parametrize(
    "overrides,reason",
    [
        (["model=tiny_gpt2", "technique=prune", "technique.structured.target=heads", "technique.structured.ratio=0.5"],
         "target=heads on GPT-2"),
        (["model=tiny_llama", "technique=speculative"], "keeps all 2 layers"),
    ],
)  # fmt: skip
def test_settings_a_model_cannot_take_are_refused_with_the_reason(overrides, reason, tmp_path):
    with pytest.raises(ConfigError, match=reason):
        run_main([*overrides, *FAST], tmp_path)
