"""make report on a real usps2 search: report.md and a self-contained report.html, the SpArSe
paper's published points beside our exported models, the page rendered by a real headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.deploy import paper

REPO = Path(__file__).resolve().parent.parent
TAB_RED = np.array([214, 39, 40]) / 255  # our Pareto models in both plots


@pytest.fixture(scope="module")
def usps2_run(tmp_path_factory, data_dir) -> Path:
    """A 2-trial, 1-epoch usps2 search, exported and reported."""
    out = tmp_path_factory.mktemp("usps2") / "run"
    for command in (["search", "--dataset", "usps2", "--trials", "2", "--epochs", "1", "--out", str(out),
                     "--quiet", "--data-dir", str(data_dir)],
                    ["export", str(out), "--data-dir", str(data_dir)],
                    ["report", str(out)]):
        result = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=REPO, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr
    return out


def test_report_puts_the_papers_usps2_points_beside_every_exported_model(usps2_run):
    text = (usps2_run / "report.md").read_text()
    section = text.split("## Against the SpArSe paper")[1]
    for point in paper.points_for("usps2"):
        assert f"| USPS-binary | {100 * point.accuracy:.2f} | {point.wm_bytes:,.0f} | {point.ms_bytes:,.0f} |" in section
    ours = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \|", section, re.M)
    exported = sorted(p.parent.name for p in usps2_run.glob("models/*/model.json"))
    assert sorted(trial for trial, *_ in ours) == exported and exported
    assert "0-4" in (REPO / "reference" / "sparse_paper_points.tsv").read_text()  # the grouping is stated
    assert (usps2_run / "paper.png").is_file() and "](paper.png)" in section


def test_a_model_dominates_a_published_point_only_when_no_worse_in_all_three_and_better_in_one():
    low, high = sorted(paper.points_for("usps2"), key=lambda p: p.ms_bytes)  # 96.21 % at 1.48 KB, 97.56 %
    assert paper.dominates(0.97, 1400, 900, low) and not paper.dominates(0.97, 1400, 900, high)
    assert not paper.dominates(low.accuracy, low.ms_bytes, low.wm_bytes, low)  # equal is not better
    assert not paper.dominates(0.99, 1481, 500, low)  # bigger than the point: no claim
    models = [{"trial": "7", "test_accuracy": 0.99, "ms_bytes": 1000, "wm_bytes": 900},
              {"trial": "8", "test_accuracy": None, "ms_bytes": 10, "wm_bytes": 10}]
    wins = paper.comparison(models, [low, high])
    assert wins == {"7": [0, 1], "8": []}


def test_report_html_opens_from_disk_alone_and_chromium_renders_its_plots(usps2_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium on PATH: install Debian's chromium package (.ci/run does)"
    page = (usps2_run / "report.html").read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:|file:|[^d#])", page)
    assert page.count('<img src="data:image/png;base64,') == 2
    alone = tmp_path / "report.html"  # no sibling files: everything it shows is inside it
    alone.write_text(page)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    subprocess.run([chromium, *flags, "--window-size=1200,4000", f"--screenshot={shot}", alone.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([chromium, *flags, "--dump-dom", alone.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "Against the SpArSe paper" in dom and dom.count("<img") == 2
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    red_rows = np.flatnonzero((np.abs(pixels - TAB_RED).max(axis=-1) < 0.08).sum(axis=1) >= 3)
    assert red_rows.size, "no plot pixels in the screenshot: the images did not render"
    bands = 1 + int(np.count_nonzero(np.diff(red_rows) > 150))
    assert bands >= 2, f"red points in {bands} band(s) of the page: expected both plots to render"
