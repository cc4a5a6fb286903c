"""stages.window_media: a window's mp4 decodes to exactly its clips' frames, at its own times;
clips that cannot share one stream are encoded again; a short window fails."""

from __future__ import annotations

import av
import numpy as np
import pytest

from vidcurate.stages.split import SplitConfig, split_video
from vidcurate.stages.probe import ProbeConfig, probe_video
from vidcurate.stages.audio import read_track
from vidcurate.stages.window_media import _encode_frames, cut_window, window_audio


def _frames(uri: str) -> tuple[list[np.ndarray], list[float]]:
    with av.open(uri) as container:
        decoded = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in decoded], [float(f.time) for f in decoded]


@pytest.fixture(scope="module")
def fps(synthetic_videos) -> float:
    """The frame rate of the video cut_clips come from (its first synthetic video)."""
    videos, _ = synthetic_videos
    return probe_video(str(sorted(videos.glob("*.mp4"))[0]), ProbeConfig(), None)["fps"]


@pytest.fixture(scope="module")
def contiguous(cut_clips) -> list[dict]:
    run = [cut_clips[0]]
    for clip in cut_clips[1:]:
        if clip["start_frame"] != run[-1]["end_frame"]:
            break
        run.append(clip)
    assert len(run) >= 2, "the first synthetic video's first clips should follow one another"
    return run


def test_a_window_is_its_clips_frames_in_order_at_its_own_times(contiguous, fps, tmp_path):
    frames = contiguous[-1]["end_frame"] - contiguous[0]["start_frame"]
    media = cut_window("w", [c["clip_uri"] for c in contiguous], frames, fps, tmp_path, SplitConfig())
    window, times = _frames(media["media_uri"])
    clips = [f for c in contiguous for f in _frames(c["clip_uri"])[0]]
    assert len(window) == len(clips) == frames
    assert all(np.array_equal(a, b) for a, b in zip(window, clips))  # the clips' own pixels: no second encode
    assert np.allclose(times, np.arange(frames) / fps, atol=0.5 / fps)
    assert (media["width"], media["height"]) == window[0].shape[1::-1]


def test_clips_of_different_sizes_are_encoded_again(synthetic_videos, contiguous, fps, tmp_path):
    videos, _ = synthetic_videos
    video = probe_video(str(sorted(videos.glob("*.mp4"))[0]), ProbeConfig(), None)
    taller = [r for r in split_video(video, tmp_path / "tall", SplitConfig(max_clip_s=4.0, clip_max_height=128)) if r["status"] == "kept"]
    mixed = [contiguous[0]["clip_uri"], taller[1]["clip_uri"]]
    assert taller[1]["start_frame"] == contiguous[0]["end_frame"]
    frames = taller[1]["end_frame"] - contiguous[0]["start_frame"]
    media = cut_window("w", mixed, frames, fps, tmp_path, SplitConfig(clip_max_height=96))
    window, times = _frames(media["media_uri"])
    assert len(window) == frames and window[0].shape[:2] == (media["height"], media["width"]) == _frames(mixed[0])[0][0].shape[:2]
    assert np.allclose(times, np.arange(frames) / fps, atol=0.5 / fps)


def test_a_window_missing_frames_fails_and_leaves_no_file(contiguous, fps, tmp_path):
    frames = contiguous[-1]["end_frame"] - contiguous[0]["start_frame"]
    with pytest.raises(ValueError, match="frames_missing"):
        cut_window("w", [c["clip_uri"] for c in contiguous], frames + 1, fps, tmp_path, SplitConfig())
    assert list(tmp_path.iterdir()) == []


def test_a_window_carries_its_clips_audio_end_to_end(tmp_path):
    """Tones at known times: the window's track is its clips' tracks in order, each tone where it
    was in the source, whether its video is copied or encoded again."""
    import make_spoken
    from make_spoken import BEEPS_S, onsets

    src = make_spoken.write(tmp_path / "beeps.mp4", make_spoken.frames(8.0, [3.0, 6.0]), make_spoken.beeps(8.0, BEEPS_S))
    clips = [c for c in split_video(probe_video(str(src), ProbeConfig(), None), tmp_path / "media", SplitConfig()) if c["status"] == "kept"]
    uris, frames = [c["clip_uri"] for c in clips], clips[-1]["end_frame"] - clips[0]["start_frame"]
    copied = cut_window("w", uris, frames, make_spoken.FPS, tmp_path / "copied", SplitConfig())
    encoded = _encode_frames(tmp_path / "encoded.mp4", uris, frames, make_spoken.FPS, SplitConfig(), window_audio(uris))
    for media in (copied, encoded):
        samples, fmt = read_track(media["media_uri"])
        assert samples.shape[1] == 8.0 * fmt.rate and np.allclose(onsets(samples, fmt.rate), BEEPS_S, atol=0.005)
        assert len(_frames(media["media_uri"])[0]) == frames
