"""The evaluation report as people see it: rendered by headless Chromium (Debian's `chromium`, installed by
`make test`), every chart draws its lines — a chart that renders empty fails."""

import re
import shutil
import subprocess

import pytest
from PIL import Image

from components.charts import COLOURS, line_chart
from components.report import write_report

pytestmark = pytest.mark.integration


def _screenshot(svg: str, tmp_path, name: str) -> Image.Image:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed: apt-get install chromium (make test installs it)"
    page, png = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
    page.write_text(f'<!doctype html><html><body style="margin:0">{svg}</body></html>')
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=640,320",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return Image.open(png).convert("RGB")


def _pixels(img: Image.Image, colour: str) -> int:
    """Pixels within a small distance of ``colour`` (antialiasing blends the edges of a line)."""
    want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in img.getdata() if sum(abs(a - b) for a, b in zip(p, want, strict=True)) < 40)


def test_every_chart_of_the_report_draws_its_lines_in_a_browser(tmp_path):
    curve = [1, 2, 5, 10, 20, 30, 50, 75, 100]
    m = {f"{x}@{k}": k / 200 for k in curve for x in ("recall", "ndcg", "mrr", "hit", "precision")}
    pop = {k: v / 2 for k, v in m.items()}
    ev = {"model": "sasrec", "ks": [10, 20], "curve_ks": curve, "test": m, "val": m, "popularity_test": pop,
          "popularity_val": pop, "production": None, "dataset_fingerprint": "abc"}  # fmt: skip
    history = [{"epoch": e, "loss": 3.0 / e, "ndcg@10": 0.01379 + 0.008 * e} for e in range(1, 9)]
    doc = write_report(ev, history, tmp_path / "report.html", best_epoch=6).read_text()
    svgs = re.findall(r"<svg.*?</svg>", doc, re.S)
    assert len(svgs) == 4
    for i, svg in enumerate(svgs):
        img = _screenshot(svg, tmp_path, f"chart{i}")
        assert _pixels(img, COLOURS[0]) > 150, f"chart {i} of the report renders without its first series"
    # The check can fail: a chart whose series has no finite point renders no line.
    empty = _screenshot(line_chart({"x": [(1, float("nan"))]}, "empty"), tmp_path, "empty")
    assert _pixels(empty, COLOURS[0]) == 0
