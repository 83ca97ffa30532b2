"""The report: Pareto sets checked against hand computations, seed aggregation, hardware grouping, a real browser."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import pytest

from conftest import REPO
from support.report_fixtures import record, write


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
    by_name = {r["run_name"]: r for r in report.rows}
    assert by_name["p"]["n"] == 2 and by_name["p"]["quality"] == pytest.approx(24.0)
    assert by_name["p"]["quality_ci"] == pytest.approx(12.706 * 2.8284271 / 1.4142136, rel=1e-4)
    # Rows are named by what they did; two settings alike but for the machine get the run's name too.
    assert by_name["q8"]["name"] == "quant (q8)" and by_name["q4"]["name"] == "quant4" and by_name["p"]["name"] == "prune 50%"
    # Hand computation, size (lower ppl better, lower MiB better), one eval group, all 6 settings:
    # base (100, 20), q8 (26, 20.5), q4 (14, 24), bad (50, 30), p (60, 24), other-hw (26, 20.5)
    # -> base (best ppl), q8 and other-hw (tie), q4 (smallest); bad is dominated by q8. p's two seeds
    # (22, 26) give a 95% interval of [-1.4, 49.4]: nothing beats it beyond that, so it stays on the front.
    size = next(v for k, v in report.pareto.items() if "stored size" in k)
    assert sorted(size) == ["baseline", "prune 50%", "quant (other-hw)", "quant (q8)", "quant4"]
    # Latency is per hardware: CPU A holds base (10, 20), q8 (6, 20.5), q4 (7, 24), bad (8, 30), p (5, 24)
    # -> base, q8, p (fastest); q4 and bad are beaten by q8 (6 < 7 and 20.5 < 24; 6 < 8 and 20.5 < 30).
    latency = {k: v for k, v in report.pareto.items() if "decode latency" in k}
    assert len(latency) == 2, "two hardware groups: two latency plots, never one mixed plot"
    cpu_a = next(v for k, v in latency.items() if "CPU A" in k)
    assert sorted(cpu_a) == ["baseline", "prune 50%", "quant (q8)"]
    page = report.html.read_text()
    assert "never mixed in one plot" in page and page.count("class='plot'") == 3
    assert (report.html.parent / "plotly.min.js").is_file()  # the page works offline
    md = report.markdown.read_text()
    assert "| run | family |" in md and "24 [-1.412, 49.41]" in md  # p's mean and 95% t-interval over seeds


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
    assert r.returncode == 2 and "no readable results.json found" in r.stderr


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (apt-get install -y chromium) to look at the page in a real browser",
)
def test_report_page_fits_a_1400px_window_and_draws_interactive_plots(tmp_path):
    """A person's view: in a 1400-px wide browser the table needs no horizontal scrollbar, plotly has
    drawn every plot (SVG in the page), and the screenshot is a real, non-blank page."""
    from infopt.report.build import build_report

    long = {"structured": {"target": "channels", "ratio": 0.5}, "method": "wanda", "include": ["mlp\\."]}
    recs = [
        record("base", "baseline", 20.0, 100.0, 10.0),
        record("q8", "quantize", 20.5, 26.0, 6.0, extra={"method": "gptq", "bits": 8, "group_size": 64}),
        record("q4", "quantize", 24.0, 14.0, 7.0, extra={"method": "gptq", "bits": 4, "group_size": 64}),
        record("p", "prune", 22.0, 60.0, 5.0, extra=long),
    ]
    report = build_report([write(tmp_path / "runs", recs)], tmp_path / "out")
    # A probe the test adds: how wide the laid-out page is, once plotly has drawn.
    probe = report.html.parent / "probe.html"
    probe.write_text(report.html.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => setTimeout(() => {document.body.setAttribute('data-probe', "
        "[document.documentElement.scrollWidth, window.innerWidth, document.querySelectorAll('.main-svg').length].join(','))"
        "}, 500));</script></body>")))  # fmt: skip
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--virtual-time-budget=8000"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    scroll, inner, svgs = (int(x) for x in dom.split('data-probe="')[1].split('"')[0].split(","))
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    assert svgs >= 2  # plotly drew the size and the latency plots
    assert "gptq w8" in dom and "channels -50%" in dom  # rows named by what they did, not override strings
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--hide-scrollbars", f"--screenshot={shot}", report.html.as_uri()], capture_output=True,
                   timeout=120, check=False)  # fmt: skip
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1400, 1000)
    from PIL import Image

    colors = Image.open(shot).convert("L").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50, "the page rendered (almost) one colour"


def test_rotated_runs_are_named_apart_from_plain_ones():
    from infopt.report.labels import names

    def record(method: str, rotate: str) -> dict:
        return {"config": {"technique": {"name": "quantize", "method": method, "bits": 4, "group_size": -1,
                                         "rotate": rotate, "execution": "simulated"}}}  # fmt: skip

    runs = [record("rtn", "none"), record("rtn", "hadamard"), record("gptq", "block_hadamard")]
    assert names(runs) == ["rtn w4 pc", "rtn w4 pc, hadamard", "gptq w4 pc, block hadamard"]
