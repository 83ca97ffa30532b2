"""Sweeps end to end in subprocesses: a 2x2 grid, W&B offline runs in one group, rerun skips, report, launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF_DIR, REPO

TOY_RUN = REPO / "tests" / "support" / "run_with_toys.py"
FAST = [
    "eval=quick",
    "bench=quick",
    "eval.tasks=[]",
    "eval.token_perplexity_window=64",
    "bench.batch_sizes=[1]",
]


def run_cli(
    args: list[str], script: Path = TOY_RUN, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
    }
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def wandb_records(path: Path):
    """Records of an offline W&B run file (LevelDB log format: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1 or kind == 4:  # full record, or last fragment
            rec = pb.Record()
            rec.ParseFromString(buf + chunk)
            buf = b""
            yield rec
        elif kind in (2, 3):  # first / middle fragment
            buf += chunk


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2x2 sweep (model x technique, the test-only toy_scale among them), run twice."""
    sweep = tmp_path_factory.mktemp("sweep") / "grid"
    args = [
        "-m",
        "model=tiny_llama,tiny_gpt2",
        "technique=baseline,toy_scale",
        *FAST,
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_cli(args)
    second = run_cli(args)
    return sweep, first, second


def test_grid_sweep_writes_four_results_and_four_wandb_runs_in_one_group(grid):
    sweep, first, _ = grid
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 4
    combos = {
        (
            json.loads(p.read_text())["config"]["model"]["name"],
            json.loads(p.read_text())["technique"]["name"],
        )
        for p in results
    }
    assert combos == {
        (m, t) for m in ("tiny_llama", "tiny_gpt2") for t in ("baseline", "toy_scale")
    }
    runs = sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 4
    seen = []
    for path in runs:
        (run,) = [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
        seen.append((run.run_group, run.display_name, set(run.tags)))
        assert (path.parent / "files" / "media" / "table").is_dir(), "the results table is logged"
    assert {g for g, _, _ in seen} == {sweep.name}, "one group: the sweep"
    assert len({n for _, n, _ in seen}) == 4 and all(
        "model=" in n and "technique=" in n for _, n, _ in seen
    )
    assert all(
        {t for t in tags if t.split(":")[0] in ("model", "technique")} and len(tags) >= 2
        for _, _, tags in seen
    )
    assert "4 job(s) ran, 0 skipped" in first.stdout + first.stderr


def test_rerun_skips_all_four(grid):
    sweep, _, second = grid
    out = second.stdout + second.stderr
    assert out.count("infopt: skipped:") == 4
    assert "0 job(s) ran, 4 skipped" in out
    assert len(sorted(sweep.glob("*/wandb/offline-run-*"))) == 4, "skipped jobs open no W&B run"


def test_report_on_the_sweep(grid, tmp_path):
    from infopt.report.__main__ import main

    sweep, _, _ = grid
    assert main([str(sweep), "--out", str(tmp_path / "report")]) == 0
    from infopt.report.build import build_report

    report = build_report([sweep], tmp_path / "report")
    assert (tmp_path / "report" / "index.html").is_file() and (
        tmp_path / "report" / "report.md"
    ).is_file()
    # Hand computation from the four records: lower token perplexity and fewer MiB are better.
    from infopt.report.labels import names

    recs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    metric = report.rows[0]["metric"]
    pts = {  # rows are named by what differs between the runs
        name: (r["result"]["bench"]["stored_mb"], r["result"]["eval"][metric]) for name, r in zip(names(recs), recs, strict=True)
    }
    expected = []
    for name, (c, q) in pts.items():
        beaten = [
            o
            for o, (c2, q2) in pts.items()
            if o != name and c2 <= c and q2 <= q and (c2 < c or q2 < q)
        ]
        if not beaten:
            expected.append(name)
    size = next(v for k, v in report.pareto.items() if "stored size" in k)
    # The report drops a point from the front only when it is dominated beyond both intervals, so its
    # front holds every point-estimate front member, and only names of runs in the sweep.
    assert set(expected) <= set(size) <= set(pts)
    # toy_scale casts to bfloat16: the smallest run (half the bytes) is always on the size front.
    smallest = min(pts, key=lambda n: pts[n][0])
    assert "toy_scale" in smallest and smallest in size


def test_joblib_launcher_sweep_runs(tmp_path):
    sweep = tmp_path / "joblib"
    run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model=tiny_llama,tiny_gpt2",
            *FAST,
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ],
        script=REPO / "run.py",
    )
    assert len(list(sweep.glob("*/results.json"))) == 2


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from infopt.composition.store import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    init = initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
    init.__enter__()
    cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return cfg, init


@pytest.mark.parametrize("launcher", ["slurm", "slurm_cpu"])
def test_slurm_launcher_config_composes_and_instantiates(tmp_path, launcher):
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    cfg, init = _compose_with_hydra(
        [f"hydra/launcher={launcher}", "model=tiny_llama", f"hydra.sweep.dir={tmp_path}"]
    )
    try:
        assert cfg.hydra.launcher._target_ == "hydra_plugins.infopt_slurm.InfoptSlurmLauncher"
        assert cfg.hydra.launcher.timeout_min == 240 and cfg.hydra.launcher.max_num_timeout == 0
        # A CPU partition needs no GPU flag: slurm_cpu asks for none.
        assert cfg.hydra.launcher.gpus_per_node == (0 if launcher == "slurm_cpu" else 1)
        ctx = HydraContext(
            config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks()
        )
        instance = Plugins.instance().instantiate_launcher(
            hydra_context=ctx, task_function=lambda c: None, config=cfg
        )
        assert type(instance).__name__ == "InfoptSlurmLauncher"
        assert (
            instance.params["timeout_min"] == 240
            and str(tmp_path) in instance.params["submitit_folder"]
        )
    finally:
        init.__exit__(None, None, None)
        GlobalHydra.instance().clear()


def test_slurm_job_states_are_read_from_scontrol_when_accounting_is_off():
    """What submitit's poller sees on a cluster without sacct (tests/test_slurm.py runs the real one)."""
    from infopt.studies.slurm import StateWatcher

    watcher = StateWatcher(use_sacct=False)
    watcher.register_job("41_0")
    assert watcher._make_command() == ["scontrol", "-o", "show", "job"]
    out = (
        "JobId=42 ArrayJobId=41 ArrayTaskId=0 JobState=TIMEOUT NodeList=vm\n"
        "JobId=41 ArrayJobId=41 ArrayTaskId=1-3%2 JobState=PENDING NodeList=(null)\n"
        "JobId=45 JobName=x JobState=COMPLETED NodeList=vm\n"
    )
    info = watcher.read_info(out)
    assert info["41_0"]["State"] == "TIMEOUT" and info["45"]["State"] == "COMPLETED"
    assert [info[f"41_{i}"]["State"] for i in (1, 2, 3)] == ["PENDING"] * 3
    watcher._info_dict.update(info)
    assert watcher.is_done("41_0", mode="cache") and not watcher.is_done("41_2", mode="cache")


def test_optuna_budget_search_composes(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    cfg, init = _compose_with_hydra(["experiment=budget_search", "model=tiny_llama"])
    try:
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.sweeper.direction == "maximize" == cfg.objective.direction
        assert set(cfg.hydra.sweeper.params) == {"technique.bits", "technique.group_size"}
        assert cfg.objective.budget["bench/stored_mb"] == 200
    finally:
        init.__exit__(None, None, None)
        GlobalHydra.instance().clear()


@pytest.mark.slow  # ~40 s of subprocess start-up; the compose test above stays in the fast suite
def test_optuna_search_runs_and_returns_the_objective(tmp_path):
    """Two Optuna trials over toy_scale's factor, under a size budget only bfloat16 meets."""
    sweep = tmp_path / "optuna"
    proc = run_cli(
        [
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.direction=maximize",
            "hydra.sweeper.sampler.seed=0",
            "technique=toy_scale",
            "technique.factor=interval(0.5,1.0)",
            "technique.half=choice(true,false)",
            "model=tiny_llama",
            *FAST,
            "logger=none",
            "objective.metric=ratios/eval/heldout/token_perplexity_w64/recovery",
            "+objective.budget={bench/stored_mb:8}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    recs = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(recs) == 2
    for r in recs:
        d = r["objective_detail"]
        if r["config"]["technique"]["half"]:
            assert d["within_budget"] and r["objective"] == pytest.approx(
                r["ratios"]["eval/heldout/token_perplexity_w64/recovery"]
            )
        else:  # fp32 tiny model is about 12 MiB > 8: penalty -1 minus the overshoot
            assert not d["within_budget"] and r["objective"] == pytest.approx(
                -1.0 - (r["result"]["bench"]["stored_mb"] / 8 - 1)
            )
    assert (sweep / "optimization_results.yaml").is_file(), proc.stdout[-2000:]
