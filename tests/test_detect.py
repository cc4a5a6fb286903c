"""Shot detection on synthetic videos with exactly known transitions (decoded for real)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from make_synthetic import FPS, Shot, encode, make

from pipelines.config import SplitConfig
from stages.detect import detect_cuts
from stages.media import read_small_frames

TOLERANCE = 2


def _detect(path) -> tuple[list, np.ndarray]:
    cfg = SplitConfig()
    frames = read_small_frames(str(path), cfg.analysis_width)
    return detect_cuts(frames.yuv, cfg.threshold, cfg.adaptive_ratio, cfg.window)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "videos"
    make(out, count=5, seed=10)
    return [(path, json.loads((out.parent / "truth" / f"{path.stem}.json").read_text())) for path in sorted(out.glob("*.mp4"))]


def test_every_transition_found_and_nothing_else(videos):
    for path, truth in videos:
        cuts, black = _detect(path)
        spans = [t["frames"] for t in truth["transitions"]]
        for cut in cuts:
            if cut.kind == "to_black" and black[cut.frame :].all():
                continue
            assert any(a - TOLERANCE <= cut.frame <= b + TOLERANCE for a, b in spans), (path.name, cut, spans)
        for t in truth["transitions"]:
            a, b = t["frames"]
            assert any(a - TOLERANCE <= c.frame <= b + TOLERANCE for c in cuts), (path.name, t, cuts)


def test_hard_cuts_are_frame_exact(videos):
    for path, truth in videos:
        cuts, _ = _detect(path)
        for t in truth["transitions"]:
            if t["kind"] == "hard":
                assert t["frames"][0] in [c.frame for c in cuts if c.kind == "hard"], (path.name, t, cuts)


def test_fade_through_black_is_cut_out(videos):
    for path, truth in videos:
        cuts, black = _detect(path)
        for t in (t for t in truth["transitions"] if t["kind"] == "fade"):
            a, b = t["frames"]
            kinds = {c.kind for c in cuts if a <= c.frame <= b}
            assert kinds == {"to_black", "from_black"}, (path.name, t, cuts)
            assert black[a : b + 1].any()


@pytest.mark.parametrize("event", ["flash", "pan"])
def test_flash_or_fast_pan_inside_a_shot_is_no_cut(tmp_path, event):
    rng = np.random.default_rng(7)
    shot = Shot(rng, 144, 256, 4 * FPS, event)
    path = tmp_path / f"{event}.mp4"
    encode([shot.frame(t).clip(0, 255).astype(np.uint8) for t in range(shot.frames)], path)
    cuts, black = _detect(path)
    assert cuts == [] and not black.any()


@pytest.mark.parametrize("detector", ["transnetv2", "combined"])
def test_transnetv2_finds_every_transition_of_a_video(videos, detector):
    """The bundled TransNetV2 weights, on the same analysis frames (CPU here)."""
    from stages.split import find_cuts

    path, truth = videos[0]
    cfg = SplitConfig(detector=detector)
    cuts, black = find_cuts(read_small_frames(str(path), cfg.analysis_width).yuv, cfg)
    for t in truth["transitions"]:
        a, b = t["frames"]
        assert any(a - TOLERANCE <= c.frame <= b + TOLERANCE for c in cuts), (t, cuts)
    assert len(black) == len(read_small_frames(str(path), cfg.analysis_width).times_s)
