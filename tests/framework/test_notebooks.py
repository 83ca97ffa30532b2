"""Every study has a notebook that runs on its committed records and asserts the claims its text makes,
and is committed with its outputs (a reader sees the tables and plots on the repository page)."""

from __future__ import annotations

import pytest

from conftest import REPO
from infopt.studies.records import committed_studies

# Studies without committed records have no notebook yet (docs/studies.md lists them as pending).
NOTEBOOKS = {name: REPO / "notebooks" / f"{name}.ipynb" for name in committed_studies()}


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_study_notebook_runs_on_its_records_and_its_claims_hold(name, monkeypatch):
    """The notebook's code cells, executed in order (in this process: the same code, without a kernel's
    start-up), on results/<study>/; its last cell asserts the study's claims."""
    import matplotlib
    import nbformat

    matplotlib.use("Agg")
    monkeypatch.delenv("INFOPT_RESULTS", raising=False)
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{name}.ipynb", "exec"), namespace)  # noqa: S102 - our own notebook
    assert namespace["rows"], f"{name}: no records"

    import matplotlib.pyplot as plt

    assert plt.get_fignums(), f"{name} drew no figure"
    plt.close("all")


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_study_notebook_is_committed_with_its_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name}.ipynb has no rendered figure: python scripts/make_notebooks.py --execute {name}"
