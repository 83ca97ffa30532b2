"""The report: Pareto sets checked against hand computations, seed aggregation, hardware grouping, a real browser."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import pytest

from conftest import REPO
from report_fixtures import record, write


def test_pareto_mask_hand_computed():
    from infopt.report.analysis import pareto_mask

    # (cost, quality): (10, .90) is beaten by (8, .95); (8, .70) too; (5, .60) is cheapest; (12, .99) is best.
    assert pareto_mask([10, 8, 8, 5, 12], [0.9, 0.95, 0.7, 0.6, 0.99]) == [
        False,
        True,
        False,
        True,
        True,
    ]
    # Lower-is-better quality (perplexity): (4, 30) and (2, 50) on the front; (5, 40) beaten by (4, 30).
    assert pareto_mask([4, 2, 5], [30, 50, 40], higher_is_better=False) == [True, True, False]
    # Ties are not dominance; missing values are never optimal.
    assert pareto_mask([1, 1, None], [1.0, 1.0, 2.0]) == [True, True, False]


def test_mean_ci_matches_t_interval():
    from infopt.report.analysis import mean_ci

    mean, half = mean_ci([10.0, 12.0])
    # sd = sqrt(2), n = 2: half-width = t(0.975, 1) * sqrt(2) / sqrt(2) = 12.706
    assert mean == 11.0 and half == pytest.approx(12.706, abs=1e-3)
    assert mean_ci([3.0]) == (3.0, None)


def test_report_pareto_set_seed_aggregation_and_groups(tmp_path):
    from infopt.report.build import build_report

    recs = [
        record("base", "baseline", 20.0, 100.0, 10.0),
        record("q8", "quant", 20.5, 26.0, 6.0),
        record("q4", "quant4", 24.0, 14.0, 7.0),
        record("bad", "worse", 30.0, 50.0, 8.0),  # dominated by q8 on size and latency
        record("p", "prune", 22.0, 60.0, 5.0, seed=0),
        record(
            "p", "prune", 26.0, 60.0, 5.0, seed=1
        ),  # same setting, another seed: aggregated, ppl mean 24
        record("other-hw", "quant", 20.5, 26.0, 3.0, cpu="CPU B"),
    ]
    report = build_report([write(tmp_path / "runs", recs)], tmp_path / "out")
    assert report.html.is_file() and report.markdown.is_file()
    by_name = {r["name"]: r for r in report.rows}
    assert by_name["p"]["n"] == 2 and by_name["p"]["quality"] == pytest.approx(24.0)
    assert by_name["p"]["quality_ci"] == pytest.approx(12.706 * 2.8284271 / 1.4142136, rel=1e-4)
    # Hand computation, size (lower ppl better, lower MiB better), one eval group, all 6 settings:
    # base (100, 20), q8 (26, 20.5), q4 (14, 24), bad (50, 30), p (60, 24), other-hw (26, 20.5)
    # -> base (best ppl), q8 and other-hw (tie), q4 (smallest); bad and p are dominated by q8.
    size = next(v for k, v in report.pareto.items() if "stored size" in k)
    assert sorted(size) == ["base", "other-hw", "q4", "q8"]
    # Latency is per hardware: CPU A holds base (10, 20), q8 (6, 20.5), q4 (7, 24), bad (8, 30), p (5, 24)
    # -> base, q8, p (fastest); q4 is beaten by p (5 < 7, 24 <= 24), bad by q8.
    latency = {k: v for k, v in report.pareto.items() if "decode latency" in k}
    assert len(latency) == 2, "two hardware groups: two latency plots, never one mixed plot"
    cpu_a = next(v for k, v in latency.items() if "CPU A" in k)
    assert sorted(cpu_a) == ["base", "p", "q8"]
    page = report.html.read_text()
    assert "never mixed in one plot" in page and page.count("data:image/png;base64,") == 3
    md = report.markdown.read_text()
    assert (
        "| run | model | technique |" in md and "24 ± 25" in md
    )  # p's mean and CI half-width (25.4)


def test_order_effects_pairs_forward_and_reversed(tmp_path):
    from infopt.report.analysis import order_effects
    from infopt.report.load import rows

    recs = [
        record("fwd", "pipeline", 22.0, 30.0, 6.0, reverse=False),
        record("rev", "pipeline", 25.0, 30.0, 6.5, reverse=True),
    ]
    (effect,) = order_effects(rows(write(tmp_path, recs)))
    assert effect["quality_difference"] == pytest.approx(-3.0)
    assert effect["decode_ms_per_token_b1_difference"] == pytest.approx(-0.5)


def test_report_cli_exit_codes(tmp_path):
    env_py = sys.executable
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(
        [env_py, "-m", "infopt.report", str(empty)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2 and "no results.json found" in r.stderr


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (apt-get install -y chromium) to look at the page in a real browser",
)
def test_report_renders_in_headless_chromium(tmp_path):
    from infopt.report.build import build_report

    recs = [
        record("base", "baseline", 20.0, 100.0, 10.0),
        record("q8", "quant", 20.5, 26.0, 6.0),
        record("q4", "q4", 24.0, 14.0, 7.0),
    ]
    report = build_report([write(tmp_path / "runs", recs)], tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            report.html.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    # Non-blank: the embedded plots make a screenshot far larger than a blank page's (~10 KB).
    assert len(data) > 50_000, len(data)
    from PIL import Image

    img = Image.open(shot).convert("L")
    colors = img.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50, "the page rendered (almost) one colour"
