"""Every notebook in notebooks/ runs top to bottom on results from tiny models, and is stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import QUICK, REPO, run_main
from toy_techniques import register_toys

register_toys()
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FAST = [*QUICK, "eval.tasks=[]", "eval.token_perplexity_window=64", "bench.batch_sizes=[1]"]
STAGES = "technique.stages=[{name:toy_scale,factor:0.5,half:false},{name:toy_scale,factor:1.0,half:true}]"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_results")
    run_main(["model=tiny_llama", "technique=baseline", *FAST], root / "baseline")
    for reverse in ("false", "true"):
        run_main(
            [
                "model=tiny_llama",
                *FAST,
                "technique=pipeline",
                STAGES,
                f"technique.reverse={reverse}",
            ],
            root / f"order_{reverse}",
        )
    run_main(
        [
            "model=tiny_llama",
            *FAST,
            "technique=layer_sensitivity",
            "technique.inner={name:toy_scale,factor:0.3,half:false}",
            "technique.parts=[block,mlp]",
            "technique.eval_blocks=2",
            "technique.seq_len=32",
        ],
        root / "layers",
    )
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: strip outputs before committing"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_tiny_results(path, tiny_results, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("INFOPT_RESULTS", str(tiny_results))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    )
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, f"{path.name} drew no figure"
