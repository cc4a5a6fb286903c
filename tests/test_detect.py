"""Shot detection on synthetic videos with exactly known transitions (decoded for real)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import make_moving
from make_synthetic import FPS, Shot, encode, make

from vidcurate.stages.detect import SHIFT_EXPLAINS, detect_cuts, shift_residual
from vidcurate.stages.media import read_small_frames
from vidcurate.stages.split import SplitConfig

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


@pytest.fixture(scope="module")
def moving_videos(tmp_path_factory):
    """Pans and zooms over photographs, dissolves between moving shots, whip pans, flashes and
    zoom bursts inside shots (seeds outside the 200-211 the blend test was tuned on)."""
    out = tmp_path_factory.mktemp("moving") / "videos"
    make_moving.make(out, count=4, seed=300, height=144, width=256)
    return [(path, json.loads((out.parent / "truth" / f"{path.stem}.json").read_text())) for path in sorted(out.glob("*.mp4"))]


def test_dissolves_between_moving_shots_found_and_traps_give_no_cut(moving_videos):
    dissolves = 0
    for path, truth in moving_videos:
        cuts, black = _detect(path)
        spans = [t["frames"] for t in truth["transitions"]]
        for t in truth["transitions"]:
            a, b = t["frames"]
            assert any(a - TOLERANCE <= c.frame <= b + TOLERANCE for c in cuts), (path.name, t, cuts)
            dissolves += t["kind"] == "dissolve"
        for cut in cuts:
            if not (cut.kind == "to_black" and black[cut.frame :].all()):
                assert any(a - TOLERANCE <= cut.frame <= b + TOLERANCE for a, b in spans), (path.name, cut, truth)
    assert dissolves >= 6 and any(trap["kind"] == "whip" for _, truth in moving_videos for trap in truth["traps"])


def test_a_shift_explains_a_pan_but_not_a_cross_fade():
    rng = np.random.default_rng(3)
    scene = np.kron(rng.integers(0, 255, (12, 20, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # 48 x 80
    other = np.kron(rng.integers(0, 255, (12, 20, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    view, panned = scene[:36, :64], scene[6:42, 9:73]  # the camera moved 9 px right and 6 down
    assert shift_residual(view, panned) < 0.1
    faded = (view.astype(np.float32) * 0.4 + other[:36, :64] * 0.6).astype(np.uint8)
    assert shift_residual(view, faded) > SHIFT_EXPLAINS


@pytest.mark.parametrize("detector", ["transnetv2", "combined"])
def test_transnetv2_finds_every_transition_of_a_video(videos, detector):
    """The bundled TransNetV2 weights, on the same analysis frames (CPU here)."""
    from vidcurate.stages.split import find_cuts

    path, truth = videos[0]
    cfg = SplitConfig(detector=detector)
    cuts, black = find_cuts(read_small_frames(str(path), cfg.analysis_width).yuv, cfg)
    for t in truth["transitions"]:
        a, b = t["frames"]
        assert any(a - TOLERANCE <= c.frame <= b + TOLERANCE for c in cuts), (t, cuts)
    assert len(black) == len(read_small_frames(str(path), cfg.analysis_width).times_s)
