"""Decode once: the frames split keeps while it encodes a clip are the clip's own frames, at the
clip's own times, and the stages read them without decoding the clip again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from planted import make_planted_video, frame_index
from conftest import SHARED_VIDEOS
from vidcurate.schemas.readers import clip_frames
from vidcurate.stages.caption import CaptionConfig, decode_clips
from vidcurate.stages.embed import decode_keyframes
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.probe import ProbeConfig, probe_video
from vidcurate.stages.quality import score_clip
from vidcurate.stages.shard import keyframes_jpeg
from vidcurate.stages.split import SplitConfig, split_video

NEEDS = (FrameNeed(8), FrameNeed(4), FrameNeed(1, per_second=2.0, max_count=6))


@pytest.fixture(scope="module")
def planted_clips(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("planted")
    video = probe_video(str(make_planted_video(root / "planted.mp4")), ProbeConfig(), None)
    rows = split_video(video, root / "media", SplitConfig(max_clip_s=4.0, clip_max_height=120), NEEDS)
    return [r for r in rows if r["status"] == "kept"]


def _mp4(clip: dict) -> bytes:
    return Path(clip["clip_uri"]).read_bytes()


def test_stored_frames_are_the_clips_frames_at_its_times(planted_clips):
    """Every need's picks: the same source frames (by their barcodes) at the same times as
    decoding the clip; pixels differ only by the clip's and the store's compression."""
    for clip in planted_clips:
        assert clip["frames_uri"], clip["clip_id"]
        for count in {need.count_for(clip["end_s"] - clip["start_s"]) for need in NEEDS}:
            stored, stored_times = read_frames(clip, count)
            decoded, decoded_times = clip_frames(_mp4(clip), count)
            np.testing.assert_array_equal(stored_times, decoded_times)
            assert [frame_index(f) for f in stored] == [frame_index(f) for f in decoded]
            assert stored.shape == decoded.shape
            assert np.abs(stored.astype(int) - decoded.astype(int)).mean() < 3.0


def test_stored_frames_scale_as_clip_frames_does(planted_clips):
    clip = planted_clips[0]
    stored, _ = read_frames(clip, 4, short_side=64)
    decoded, _ = clip_frames(_mp4(clip), 4, short_side=64)
    assert stored.shape == decoded.shape
    assert np.abs(stored.astype(int) - decoded.astype(int)).mean() < 4.0


def test_a_pick_the_store_lacks_decodes_the_clip(planted_clips):
    clip = planted_clips[0]
    stored, times = read_frames(clip, 16)  # no stage asked for 16 frames
    decoded, decoded_times = clip_frames(_mp4(clip), 16)
    np.testing.assert_array_equal(stored, decoded)
    np.testing.assert_array_equal(times, decoded_times)


def test_stages_read_stored_frames_and_never_the_clip(planted_clips, tmp_path):
    """With every clip's mp4 gone, the stages that sample frames still do all their work: they
    never open the clip. (Shard itself ships the mp4, so it reads the file for that alone.)"""
    clips = []
    for clip in planted_clips:
        moved = tmp_path / Path(clip["clip_uri"]).name
        shutil.copy(clip["clip_uri"], moved)
        clips.append({**clip, "clip_uri": str(tmp_path / "gone" / moved.name)})
    caption = decode_clips(clips, CaptionConfig(frames=8))
    assert all(item["error"] is None for item in caption)
    embed = decode_keyframes(clips, 4, side=64)
    assert all(item["error"] is None for item in embed)
    scores = [score_clip(clip, 8, None) for clip in clips]
    assert all(s["motion"] >= 0 for s in scores)
    assert all(len(keyframes_jpeg(clip, 2, 64)) == 2 for clip in clips)
    with pytest.raises(FileNotFoundError):  # a pick no stage declared needs the clip itself
        read_frames(clips[0], 16)
    unstored = {**clips[0], "frames_uri": None}  # a window: shard holds its bytes already
    assert len(keyframes_jpeg(unstored, 2, 64, mp4=(tmp_path / Path(clips[0]["clip_uri"]).name).read_bytes())) == 2


def test_a_stage_needing_more_frames_per_second_than_declared_decodes(planted_clips):
    """The store is keyed by the needs split was given: per-second picks of another rate are
    not all there, so they come from the clip, identical to decoding it."""
    clip = planted_clips[0]
    duration = clip["end_s"] - clip["start_s"]
    count = FrameNeed(1, per_second=5.0, max_count=32).count_for(duration)
    frames, _ = read_frames(clip, count)
    np.testing.assert_array_equal(frames, clip_frames(_mp4(clip), count)[0])


def test_a_real_files_clips_keep_their_clock(tmp_path):
    """A real file cut by split: stored times equal the clip's decoded times exactly."""
    video = probe_video(str(SHARED_VIDEOS / "psd_testvideo.mp4"), ProbeConfig(), None)
    rows = [r for r in split_video(video, tmp_path, SplitConfig(max_clip_s=5.0), (FrameNeed(8),)) if r["status"] == "kept"]
    assert rows
    for clip in rows:
        _, stored_times = read_frames(clip, 8)
        np.testing.assert_array_equal(stored_times, clip_frames(_mp4(clip), 8)[1])
    assert Path(rows[0]["frames_uri"]).parent.name == "frames"


def test_each_clip_keeps_every_frames_change_score_and_the_planted_events_stand_out(tmp_path):
    """The change score split computed while it decoded (ground refines event boundaries by it):
    one per frame of the clip, on its clock, largest where the planted square comes or goes."""
    from planted import EVENTS, FPS

    from vidcurate.stages.frame_store import read_changes

    video = probe_video(str(make_planted_video(tmp_path / "planted.mp4", barcode=False)), ProbeConfig(), None)
    clips = [r for r in split_video(video, tmp_path / "media", SplitConfig(max_clip_s=4.0, clip_max_height=120), NEEDS) if r["status"] == "kept"]
    edges = [t for event in EVENTS for t in event]
    checked = 0
    for clip in clips:
        times, changes = read_changes(clip["frames_uri"])
        assert len(times) == clip["end_frame"] - clip["start_frame"] and times[1] == pytest.approx(1 / FPS)
        inside = [t - clip["start_s"] for t in edges if clip["start_s"] < t < clip["end_s"] - 1 / FPS]
        for edge in inside:
            near = np.abs(times - edge) < 0.5
            assert times[near][np.argmax(changes[near])] == pytest.approx(edge, abs=1e-6)
            assert changes[near].max() > 3 * np.median(changes)
            checked += 1
    assert checked >= 4
