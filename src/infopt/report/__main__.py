"""`python -m infopt.report <run or sweep dirs> [--out DIR] [--metric M]`: HTML page + Markdown table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infopt.errors import InfoptError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infopt.report", description=__doc__)
    parser.add_argument(
        "paths", nargs="+", help="run dirs, sweep dirs or results.json files (searched recursively)"
    )
    parser.add_argument("--out", help="output directory (default: <first path>/report)")
    parser.add_argument(
        "--metric",
        help="quality metric, an eval key such as heldout/word_perplexity (default: chosen from what every run has)",
    )
    parser.add_argument("--title", default="infopt report")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
