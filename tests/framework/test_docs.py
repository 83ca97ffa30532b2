"""The docs tell the truth: every rendered number equals what its records give, every documented
`python run.py ...` command composes, and the ones marked `# fast` run on the tiny models."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, run_main

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = re.compile(r"^\s*(?:\$ )?python run\.py(?P<args>[^\n#]*)(?P<comment>#.*)?$", re.M)
# Appended to a fast command: the tiny model and the quick eval/bench (Hydra: the last value wins).
TINY = ["model=tiny_llama", "eval=quick", "bench=quick", "logger=none"]


def documented_commands() -> list[tuple[str, str, bool]]:
    """(where, argument string, marked fast) of every `python run.py` line in README and docs/."""
    out = []
    for path in DOCS:
        for m in COMMAND.finditer(path.read_text()):
            where = f"{path.relative_to(REPO)}:{path.read_text()[: m.start()].count(chr(10)) + 1}"
            out.append((where, m.group("args").strip(), "# fast" in (m.group("comment") or "")))
    return out


COMMANDS = documented_commands()


def test_the_docs_document_commands():
    assert len(COMMANDS) >= 20 and any(fast for _, _, fast in COMMANDS)


@pytest.mark.parametrize("where,args,fast", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_composes_and_validates(where, args, fast):
    from infopt.composition import CONF_DIR
    from infopt.composition.precheck import precheck

    argv = shlex.split(args)
    assert precheck(argv, CONF_DIR) is None, f"{where}: python run.py {args}"


FAST = [(w, a) for w, a, fast in COMMANDS if fast]


@pytest.mark.parametrize("where,args", FAST, ids=[w for w, _ in FAST])
def test_fast_documented_command_runs_on_the_tiny_model(where, args, tmp_path):
    argv = [a for a in shlex.split(args) if not a.startswith(("-m", "--multirun", "hydra."))]
    record = run_main([*argv, *TINY], tmp_path)
    assert record["run"]["status"] == "complete", where


def test_rendered_numbers_match_the_committed_records():
    """`python -m infopt.report --docs --check`: no rendered block differs from what results/ gives."""
    from infopt.report.docs import render_docs

    assert render_docs(check=True) == []


def test_a_stale_block_is_caught(tmp_path):
    from infopt.report.docs import render_text

    results = tmp_path / "results"
    (results / "s" / "a").mkdir(parents=True)
    from support.report_fixtures import record

    (results / "s" / "a" / "results.json").write_text(json.dumps(record("q8", "baseline", 20.5, 26.0, 6.0)))
    text = "<!-- infopt:render value study=s row=baseline key=stored_mb -->999<!-- infopt:end -->"
    assert render_text(text, results) == "<!-- infopt:render value study=s row=baseline key=stored_mb -->26<!-- infopt:end -->"


def test_every_study_with_records_has_a_page_and_the_others_are_said_to_be_pending():
    """A study with committed records is rendered on a page; docs/studies.md says which have none yet."""
    from infopt.studies.records import RESULTS, STUDIES, committed_studies

    committed = committed_studies()
    assert committed, "no study has committed records under results/"
    studies_page = (REPO / "docs" / "studies.md").read_text()
    for name in STUDIES:
        if name in committed:
            assert any(f"study={name}" in p.read_text() for p in DOCS), f"no doc renders study {name}"
        else:
            line = next((ln for ln in studies_page.splitlines() if f"`{name}`" in ln), "")
            assert "not regenerated" in line, f"results/{name} has no records and docs/studies.md does not say so"
    assert RESULTS.is_dir()


def test_docs_quote_no_unrendered_number_tables():
    """Every Markdown table with numbers in the docs is a rendered block (or quotes a paper)."""
    for path in DOCS:
        text = Path(path).read_text()
        outside = re.sub(r"<!-- infopt:render.*?<!-- infopt:end -->", "", text, flags=re.S)
        for table in re.findall(r"(?:^\|.*\|\n)+", outside, flags=re.M):
            if re.search(r"\d\.\d", table):
                assert re.search(r"(?i)paper|published|quoted|arxiv|source", table), f"{path.name}: {table[:200]}"


def test_every_claim_holds_on_the_committed_records():
    """A conclusion the docs draw (report/claims.py) cannot outlive the numbers behind it."""
    from infopt.report.claims import CLAIMS, check
    from infopt.studies.records import committed_studies

    committed = committed_studies()
    assert {c.study for c in CLAIMS} <= set(committed), "a claim about a study without committed records"
    failed = [c.text for name in committed for c, holds in check(name) if not holds]
    assert not failed, failed
