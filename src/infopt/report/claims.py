"""The conclusions the docs draw from each study, as checks on its records.

A claim is a sentence and a function of the study's rows (seeds aggregated) that is True when the
records support the sentence. The docs render the claims (``<!-- infopt:render claims study=S -->``),
the notebooks assert them, and the test suite fails when a claim no longer holds on the committed
records: a conclusion cannot outlive the numbers behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    study: str
    text: str
    holds: Callable[[Rows], bool]


def by_name(rows: Rows) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows}


def better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a``'s quality beats ``b``'s beyond both intervals."""
    from infopt.report.analysis import bounds

    qa, qb = bounds(a, "quality"), bounds(b, "quality")
    if qa is None or qb is None:
        return False
    return qa[0] > qb[1] if a["higher_is_better"] else qa[1] < qb[0]


CLAIMS: list[Claim] = []  # filled per study once its records exist (see docs/*.md for the sentences)


def claims(study: str) -> list[Claim]:
    return [c for c in CLAIMS if c.study == study]


def check(study: str, results: Path | None = None) -> list[tuple[Claim, bool]]:
    from infopt.report.docs import RESULTS, study_rows

    rows = study_rows(study, results or RESULTS)
    return [(c, bool(c.holds(rows))) for c in claims(study)]
