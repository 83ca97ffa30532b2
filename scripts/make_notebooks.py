"""Write notebooks/<study>.ipynb for every committed study, and (``--execute``) run each on its records.

    python scripts/make_notebooks.py            # write the notebooks (no outputs)
    python scripts/make_notebooks.py --execute  # write, run on results/<study>/ and keep the outputs
                                                # (tables and PNG figures GitHub shows)

Each notebook reads only its study's committed records and asserts the study's claims
(``infopt.report.claims``), so a notebook that renders also says its text still holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SPEED_STUDIES = {"overview", "int8_effects", "llm_int8_hardware", "structured_pruning_tradeoff", "sparsity_speedup",
                 "kd_student", "order_effects", "budget_search"}  # fmt: skip


def cells(name: str, question: str) -> list:
    import nbformat.v4 as nbf

    out = [
        nbf.new_markdown_cell(
            f"# {name.replace('_', ' ')}\n\n{question[0].upper() + question[1:]}.\n\n"
            f"Records: `results/{name}/` (committed; regenerate with `make results STUDY={name}`). "
            "Quality intervals are 95% (bootstrap over held-out documents, or over seeds); speeds show the "
            "min-max of the timed repeats. The embedded SmolLM2 baseline is the package's Q4_1 checkpoint "
            "de-quantized, not the original float model."
        ),
        nbf.new_code_cell(f"from infopt.report import notebook\n\nrows = notebook.study({name!r})\nnotebook.table(rows)"),
    ]
    if name == "layer_sensitivity":
        out.append(nbf.new_code_cell(f"figs = notebook.layer_heatmap_figures({name!r})"))
    else:
        out.append(nbf.new_code_cell('fig = notebook.pareto_figure(rows, cost="stored_mb")'))
    if name in SPEED_STUDIES:
        out.append(nbf.new_code_cell('fig = notebook.pareto_figure(rows, cost="decode_ms_per_token_b1")'))
    out.append(nbf.new_markdown_cell("The conclusions the docs draw from these records, each checked here:"))
    out.append(nbf.new_code_cell(f"for claim in notebook.assert_claims({name!r}):\n    print('-', claim)"))
    return out


def main() -> int:
    import nbformat
    import nbformat.v4 as nbf

    from infopt.studies.records import STUDIES, committed_studies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true")
    parser.add_argument("studies", nargs="*", default=committed_studies(),
                        help="studies (default: every study with committed records)")
    args = parser.parse_args()
    for name in args.studies:
        nb = nbf.new_notebook(cells=cells(name, STUDIES[name].question))
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        if args.execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
        path = REPO / "notebooks" / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
