"""`python -m infopt.report <run or sweep dirs> [--out DIR] [--metric M]`: HTML page + Markdown table.

`python -m infopt.report --docs [--check]`: render the numbers of README.md and docs/*.md from the
committed records under results/ (``--check``: change nothing, exit 1 if any rendered block is stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infopt.errors import InfoptError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infopt.report", description=__doc__)
    parser.add_argument(
        "paths", nargs="*", help="run dirs, sweep dirs or results.json files (searched recursively)"
    )
    parser.add_argument("--docs", action="store_true", help="render README.md and docs/*.md from results/")
    parser.add_argument("--check", action="store_true", help="with --docs: only check, exit 1 when stale")
    parser.add_argument("--out", help="output directory (default: <first path>/report)")
    parser.add_argument(
        "--metric",
        help="quality metric, an eval key such as heldout/word_perplexity (default: chosen from what every run has)",
    )
    parser.add_argument("--title", default="infopt report")
    args = parser.parse_args(argv)
    if args.docs:
        return _docs(args.check)
    if not args.paths:
        parser.error("give run/sweep dirs or results.json files, or --docs")
    from infopt.report.build import build_report

    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "report"
    try:
        report = build_report(args.paths, out, metric=args.metric, title=args.title)
    except InfoptError as err:
        print(f"infopt.report: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(report.rows)} setting(s) -> {report.html} and {report.markdown}")
    for plot, names in report.pareto.items():
        print(f"Pareto-optimal [{plot}]: {', '.join(names)}")
    return 0


def _docs(check: bool) -> int:
    from infopt.report.docs import render_docs

    try:
        stale = render_docs(check=check)
    except InfoptError as err:
        print(f"infopt.report: error: {err}", file=sys.stderr)
        return 2
    if check and stale:
        print(f"infopt.report: rendered numbers differ from results/ in: {', '.join(stale)} "
              "(python -m infopt.report --docs rewrites them)", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{'stale' if check else 'rendered'}: {', '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
