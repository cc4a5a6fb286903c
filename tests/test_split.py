"""Split: span planning rules, frame-exact extraction, rotation, timestamps."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

import make_moving
import make_spoken
from make_synthetic import Shot, encode

from conftest import SHARED_VIDEOS
from vidcurate.schemas.tables import clip_id
from vidcurate.stages.audio import AudioFormat, read_track
from vidcurate.stages.detect import Cut
from vidcurate.stages.probe import ProbeConfig, probe_video
from vidcurate.stages.split import ClipEncoder, SplitConfig, frame_end_times, plan_spans, split_video


def _times(n: int, fps: float = 25.0):
    times = np.arange(n) / fps
    return times, frame_end_times(times, n / fps)


def test_long_shot_is_windowed_to_max_clip():
    times, ends = _times(250)  # one 10 s shot
    spans = plan_spans([], np.zeros(250, bool), times, ends, SplitConfig(max_clip_s=3.0))
    assert len(spans) == 4
    assert all(s["end_s"] - s["start_s"] <= 3.0 for s in spans)
    assert [s["start_frame"] for s in spans] == [0, 63, 125, 188]
    assert spans[-1]["end_frame"] == 250 and spans[-1]["end_s"] == pytest.approx(10.0)
    assert [s["cut_kind"] for s in spans] == ["start", "window", "window", "window"]


def test_short_shots_merge_into_a_neighbour():
    times, ends = _times(200)
    cuts = [Cut(10, "hard"), Cut(100, "hard"), Cut(110, "hard")]  # 0.4 s lead shot, 0.4 s middle shot
    spans = plan_spans(cuts, np.zeros(200, bool), times, ends, SplitConfig(min_clip_s=1.0, short_shots="merge"))
    assert [(s["start_frame"], s["end_frame"]) for s in spans] == [(0, 110), (110, 200)]
    assert all(s["status"] == "kept" for s in spans)


def test_short_shots_can_be_dropped_with_a_reason():
    times, ends = _times(200)
    spans = plan_spans([Cut(10, "hard")], np.zeros(200, bool), times, ends, SplitConfig(min_clip_s=1.0, short_shots="drop"))
    assert [(s["start_frame"], s["status"]) for s in spans] == [(0, "rejected"), (10, "kept")]
    assert spans[0]["reason"].startswith("too_short:")


def test_black_runs_become_rejected_spans_and_are_never_merged():
    times, ends = _times(200)
    black = np.zeros(200, bool)
    black[:10] = black[100:120] = True  # black lead-in, then a fade through black
    cuts = [Cut(10, "from_black"), Cut(100, "to_black"), Cut(120, "from_black")]
    spans = plan_spans(cuts, black, times, ends, SplitConfig(min_clip_s=1.0))
    assert [(s["start_frame"], s["end_frame"], s["status"]) for s in spans] == [
        (0, 10, "rejected"),
        (10, 100, "kept"),
        (100, 120, "rejected"),
        (120, 200, "kept"),
    ]
    assert spans[0]["reason"].startswith("black:")


def test_a_frozen_lead_in_is_a_rejected_span_never_merged():
    times, ends = _times(200)
    spans = plan_spans([Cut(40, "from_static"), Cut(60, "hard")], np.zeros(200, bool), times, ends, SplitConfig(min_clip_s=1.0))
    assert [(s["start_frame"], s["end_frame"], s["status"]) for s in spans] == [(0, 40, "rejected"), (40, 200, "kept")]
    assert spans[0]["reason"] == "static: 1.60 s frozen lead-in"


def _frozen_then_moving(path, frozen: int, moving: int, first_shot_still: bool = False, black: int = 0) -> None:
    """`black` black frames, then a shot that holds its first frame for `frozen` frames and moves
    for `moving` (or, with `first_shot_still`, stays still to its end), then a hard cut to a
    moving shot of 50 frames."""
    rng = np.random.default_rng(3)
    first, second = Shot(rng, 144, 256, frozen + moving, None), Shot(rng, 144, 256, 50, None)
    first.velocity = np.array([4.0, 4.0])  # visibly moving from its first step
    opening = [first.frame(0)] * (frozen + moving) if first_shot_still else [first.frame(0)] * frozen + [first.frame(t) for t in range(1, moving + 1)]
    frames = [np.zeros((144, 256, 3))] * black + opening + [second.frame(t) for t in range(50)]
    encode([f.clip(0, 255).astype(np.uint8) for f in frames], path)


def test_a_frozen_start_is_trimmed_where_the_picture_starts_moving(tmp_path):
    _frozen_then_moving(tmp_path / "frozen.mp4", frozen=40, moving=60)
    clips = split_video(_probe(tmp_path / "frozen.mp4"), tmp_path, SplitConfig())
    assert [(c["start_frame"], c["end_frame"], c["status"]) for c in clips] == [(0, 40, "rejected"), (40, 100, "kept"), (100, 150, "kept")]
    assert clips[0]["reason"].startswith("static: 1.60 s")
    kept = split_video(_probe(tmp_path / "frozen.mp4"), tmp_path / "off", SplitConfig(static_lead_in_s=0))
    assert [(c["start_frame"], c["status"]) for c in kept] == [(0, "kept"), (100, "kept")]


def test_a_frozen_start_after_black_is_trimmed_too(tmp_path):
    _frozen_then_moving(tmp_path / "black_frozen.mp4", frozen=40, moving=60, black=10)
    clips = split_video(_probe(tmp_path / "black_frozen.mp4"), tmp_path, SplitConfig())
    spans = [(c["start_frame"], c["end_frame"], c["status"], (c["reason"] or "").split(":")[0]) for c in clips]
    assert spans == [(0, 10, "rejected", "black"), (10, 50, "rejected", "static"), (50, 110, "kept", ""), (110, 160, "kept", "")]


def test_a_still_first_shot_is_left_whole(tmp_path):
    """A shot that never moves is a shot (the quality stage's motion score judges it)."""
    _frozen_then_moving(tmp_path / "still.mp4", frozen=40, moving=60, first_shot_still=True)
    clips = split_video(_probe(tmp_path / "still.mp4"), tmp_path, SplitConfig())
    assert [(c["start_frame"], c["end_frame"], c["status"]) for c in clips] == [(0, 100, "kept"), (100, 150, "kept")]


def test_clip_ids_are_deterministic_and_dot_free():
    assert clip_id("abc123", 1.5, 3.25) == "abc123_000001500_000003250"
    assert "." not in clip_id("abc123", 0.0004, 7200.9999)


def _probe(path) -> dict:
    row = probe_video(str(path), ProbeConfig())
    assert row["status"] == "kept", row
    return row


def test_extracted_clips_are_frame_exact(tmp_path, synthetic_videos):
    videos, truth_dir = synthetic_videos
    video = _probe(videos / "synthetic_010.mp4")
    clips = split_video(video, tmp_path, SplitConfig(max_clip_s=2.0, clip_max_height=72))
    assert all(c["status"] == "kept" or c["reason"].startswith("black:") for c in clips)
    assert clips[0]["start_frame"] == 0
    assert clips[-1]["end_frame"] == json.loads((truth_dir / "synthetic_010.json").read_text())["n_frames"]
    for before, after in zip(clips, clips[1:]):
        assert before["end_frame"] == after["start_frame"]  # no frame lost or repeated
        assert before["end_s"] == pytest.approx(after["start_s"])
    kept = [c for c in clips if c["status"] == "kept"]
    assert len(kept) >= 4
    for clip in kept:
        with av.open(clip["clip_uri"]) as c:
            stream = c.streams.video[0]
            assert sum(1 for _ in c.decode(stream)) == clip["end_frame"] - clip["start_frame"]
            assert (stream.height, stream.width) == (72, 128)


SPLIT_TWICE = """
import json, sys
from pathlib import Path
from vidcurate.stages.probe import ProbeConfig, probe_video
from vidcurate.stages.split import SplitConfig, split_video
video = probe_video(sys.argv[1], ProbeConfig())
cfg = SplitConfig(clip_max_height=240)
print(json.dumps([[c["clip_sha256"] for c in split_video(video, Path(sys.argv[2]) / str(i), cfg) if c["status"] == "kept"] for i in (0, 1)]))
"""


def test_the_same_video_splits_into_the_same_clip_bytes_every_time(tmp_path):
    """Moving 640x360 shots cut to 426x240 clips, twice in a fresh process (its first encode
    works on fresh memory, the second on reused): with x264's macroblock tree on (the
    `clip_x264_params` default turns it off), most clips came out with other bytes the second time."""
    [video] = make_moving.make(tmp_path / "videos", count=1, seed=500, height=360, width=640)
    result = subprocess.run([sys.executable, "-c", SPLIT_TWICE, str(video), str(tmp_path / "media")], capture_output=True, text=True, check=True)
    first, second = json.loads(result.stdout)
    assert len(first) >= 5
    assert first == second


def test_two_writers_of_one_clip_both_finish_and_leave_a_whole_file(tmp_path):
    """A killed run's Ray workers outlive their driver and may still be cutting a clip when the
    re-run cuts the same one (CI saw it: with one shared temp name, the first rename took the
    second writer's file away and the re-run failed the video's clips)."""
    path = tmp_path / "clips" / "same.mp4"
    path.parent.mkdir()
    cfg = SplitConfig()
    writers = [ClipEncoder(path, (64, 48), 25.0, cfg) for _ in range(2)]
    for i in range(10):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
        for writer in writers:
            writer.add(frame)
    shas = [writer.close() for writer in writers]
    assert shas[0] == shas[1] == hashlib.sha256(path.read_bytes()).hexdigest()
    with av.open(str(path)) as clip:
        assert sum(1 for _ in clip.decode(video=0)) == 10
    assert [p.name for p in path.parent.iterdir()] == ["same.mp4"]


def test_rotated_video_is_written_upright(tmp_path):
    src = tmp_path / "rotated.mp4"
    with av.open(str(src), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as phones record portrait video
        img = np.zeros((32, 64, 3), np.uint8)
        img[:, :32] = 255  # stored left half white -> displayed bottom half white
        for _ in range(50):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    video = _probe(src)
    assert video["rotation"] == 90
    (clip,) = split_video(video, tmp_path / "clips", SplitConfig())
    with av.open(clip["clip_uri"]) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="gray")
    assert frame.shape == (64, 32)
    assert frame[40:].mean() > 200 and frame[:24].mean() < 50


def test_variable_frame_rate_uses_container_timestamps(tmp_path):
    """Frames 40 ms apart, then 200 ms apart: spans must follow pts, not index / nominal fps."""
    src = tmp_path / "vfr.mp4"
    with av.open(str(src), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = [i * 40 for i in range(50)] + [2000 + i * 200 for i in range(25)]
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 100 + i % 7, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    video = _probe(src)
    clips = split_video(video, tmp_path / "clips", SplitConfig(max_clip_s=3.5))
    assert clips[-1]["end_s"] == pytest.approx(7.0, abs=0.25)  # 50 x 40 ms + 25 x 200 ms
    assert video["duration_s"] == pytest.approx(7.0, abs=0.25)
    for clip in clips:
        assert clip["end_s"] - clip["start_s"] <= 3.5


def test_real_video_splits_at_known_cuts(tmp_path):
    """psd_testvideo.mp4 has hard cuts at frames 30, 180 and 394 (PySceneDetect's truth)."""
    video = _probe(SHARED_VIDEOS / "psd_testvideo.mp4")
    clips = split_video(video, tmp_path, SplitConfig(min_clip_s=0.5, max_clip_s=60))
    kept = [(c["start_frame"], c["end_frame"]) for c in clips if c["status"] == "kept"]
    # black lead-in 0-29 trimmed, cut to black at 180, fade in from black around 394
    assert abs(kept[0][0] - 30) <= 2 and abs(kept[0][1] - 180) <= 2, kept
    assert any(abs(a - 394) <= 2 for a, _ in kept), kept


def test_each_clip_carries_the_sources_audio_over_its_span(tmp_path):
    """Tones at known times, the track starting 0.25 s after the first frame (its own pts): each
    clip's track is exactly its span long and holds the tones at their times on its clock."""
    start = 0.25
    src = make_spoken.write(tmp_path / "beeps.mp4", make_spoken.frames(8.0, [3.0, 6.0]), make_spoken.beeps(7.5, make_spoken.BEEPS_S), audio_start_s=start)
    clips = [c for c in split_video(_probe(src), tmp_path / "media", SplitConfig()) if c["status"] == "kept"]
    assert [(c["start_s"], c["end_s"]) for c in clips] == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]
    for clip in clips:
        samples, fmt = read_track(clip["clip_uri"])
        assert clip["clip_audio"] == "aac" and fmt == AudioFormat(make_spoken.RATE, "mono")
        assert samples.shape[1] == round((clip["end_s"] - clip["start_s"]) * fmt.rate)
        expected = [round(t + start - clip["start_s"], 3) for t in make_spoken.BEEPS_S if clip["start_s"] <= t + start < clip["end_s"] - 0.05]
        assert np.allclose(make_spoken.onsets(samples, fmt.rate), expected, atol=0.005), (clip["start_s"], make_spoken.onsets(samples, fmt.rate), expected)
    (mute,) = [c for c in split_video(_probe(src), tmp_path / "off", SplitConfig(audio=False)) if c["status"] == "kept"][:1]
    with av.open(mute["clip_uri"]) as clip:
        assert not clip.streams.audio and mute.get("clip_audio") is None


def test_clips_with_audio_are_the_same_bytes_in_a_fresh_process(tmp_path):
    src = make_spoken.write(tmp_path / "beeps.mp4", make_spoken.frames(8.0, [3.0, 6.0]), make_spoken.beeps(8.0, make_spoken.BEEPS_S))
    result = subprocess.run([sys.executable, "-c", SPLIT_TWICE, str(src), str(tmp_path / "media")], capture_output=True, text=True, check=True)
    first, second = json.loads(result.stdout)
    assert len(first) == 3 and first == second
    with av.open(str(sorted((tmp_path / "media" / "0" / "clips").glob("*.mp4"))[0])) as clip:
        assert clip.streams.audio  # the bytes compared hold an audio track
