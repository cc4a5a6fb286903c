"""The HTML report, rendered by real headless Chromium: content checked in the rendered DOM,
hostile file names stay text, and a screenshot is kept beside the test's output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SHARED_VIDEOS
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner

HOSTILE_NAME = '"><img src=x onerror=alert(1)><b>bold.mp4'
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/install installs Debian's package)")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthetic_videos, ray_local) -> Path:
    inputs = tmp_path_factory.mktemp("report-inputs")
    shutil.copy(synthetic_videos[0] / "synthetic_010.mp4", inputs / "synthetic_010.mp4")
    shutil.copy(SHARED_VIDEOS / "psd_testvideo.mp4", inputs / HOSTILE_NAME)
    (inputs / "broken.mp4").write_bytes(b"\x00" * 5000)
    run_dir = tmp_path_factory.mktemp("report-run")
    Runner(load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(run_dir))).run_all()
    assert cli_main(["report", str(run_dir)]) == 0
    return run_dir / "report.html"


def _render(chromium: str, page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def test_rendered_report_shows_funnel_reasons_gallery_and_timelines(report, tmp_path):
    chromium = _chromium()
    dom = _render(chromium, report, tmp_path, "--dump-dom").stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    text = re.sub(r"\s+", " ", text)
    assert "input files: 3" in text and "videos past probe: 2" in text
    assert re.search(r"video rejected probe unreadable 1", text)
    assert re.search(r"clip rejected split black \d+", text)
    cards = re.findall(r'<div class="card (kept|rejected|failed)">', dom)
    assert cards.count("kept") >= 4 and cards.count("rejected") >= 2
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/jpeg;base64,', dom)) == len(cards)
    assert dom.count('class="timeline"') == 2
    assert len(re.findall(r'<rect class="span kept"', dom)) == cards.count("kept")
    captioned = dom.count('<details class="annotation">')
    assert captioned == cards.count("kept")  # every kept clip was captioned and grounded
    assert dom.count('<rect class="event"') >= 1 and dom.count('<rect class="qa"') >= captioned
    assert "kept clips: sharpness" in text and "kept clips: clip_score" in text

    screenshot = tmp_path / "report.png"
    _render(chromium, report, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2400")
    assert screenshot.stat().st_size > 20_000
    print(f"report screenshot: {screenshot}")


def test_hostile_file_names_stay_text(report, tmp_path):
    dom = _render(_chromium(), report, tmp_path, "--dump-dom").stdout
    assert 'src="x"' not in dom and "<b>bold" not in dom  # no element was injected
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;b&gt;bold.mp4" in dom  # shown as its name
