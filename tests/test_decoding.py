"""Decoding in keyframe segments gives exactly the frames and timestamps of one sequential decode:
H.264 with closed and open GOPs in MP4, H.264 in MPEG-TS (seeks by byte estimate), HEVC,
VP8 in WebM, MPEG-2 program stream, and an old-x264 4:4:4 file that only decodes right after
the stream's first packet has been seen."""

from __future__ import annotations

import av
import numpy as np
import pytest
from conftest import REPO, SHARED_VIDEOS
from make_synthetic import FPS, render

from vidcurate.stages import decoding
from vidcurate.stages.decoding import analysis_decoder, keyframe_starts
from vidcurate.stages.media import read_small_frames, small_yuv

ENCODERS = {  # file name: (encoder, options)
    "h264-closed-gop.mp4": ("libx264", {"x264-params": "keyint=40:min-keyint=40:scenecut=0:log-level=error"}),
    "h264-open-gop.mp4": ("libx264", {"x264-params": "keyint=40:min-keyint=40:open-gop=1:log-level=error"}),
    "h264.ts": ("libx264", {"x264-params": "keyint=40:log-level=error"}),
    "hevc.mp4": ("libx265", {"x265-params": "keyint=40:log-level=error"}),
}


def _encode(path, codec: str, options: dict) -> None:
    frames, _ = render(31, height=144, width=256)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module", params=[*ENCODERS, "vp8.webm", "mpeg2.mpg", "x264-444.mp4"])
def video(request, tmp_path_factory) -> str:
    if request.param in ENCODERS:
        path = tmp_path_factory.mktemp("segments") / request.param
        _encode(path, *ENCODERS[request.param])
        return str(path)
    return str(
        {
            "vp8.webm": REPO / "sample_data" / "videos" / "big_buck_bunny_0_30.webm",
            "mpeg2.mpg": SHARED_VIDEOS / "kivy_cityCC0.mpg",
            "x264-444.mp4": SHARED_VIDEOS / "imageio_cockatoo.mp4",
        }[request.param]
    )


def _sequential(path: str, analysis_width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Frames and pts from one decoder reading the whole stream in order."""
    frames, pts = [], []
    with av.open(path) as container:
        stream = container.streams.video[0]
        analysis_decoder(stream, 1)
        for frame in container.decode(stream):
            if frame.time is not None:
                frames.append(small_yuv(frame, max(frame.width // analysis_width, 1)))
                pts.append(frame.pts)
    return np.stack(frames), np.asarray(pts)


def _assert_same_as_sequential(path: str) -> None:
    frames, pts = _sequential(path)
    segmented = read_small_frames(path)
    assert np.array_equal(segmented.pts, pts)
    assert np.array_equal(segmented.yuv, frames)


def test_segments_decode_exactly_the_sequential_frames(video, monkeypatch):
    monkeypatch.setattr(decoding, "decode_threads", lambda: 2)  # segments even on a 1-CPU machine
    with av.open(video) as container:
        assert len(keyframe_starts(container, 4)) >= 2, "the video must be cut into several segments"
    _assert_same_as_sequential(video)


@pytest.mark.parametrize("name", ["h264-closed-gop.mp4", "h264.ts"])
def test_segments_starting_between_keyframes_are_still_exact(name, tmp_path, monkeypatch):
    """A start that is no keyframe (a stream whose flags lie) decodes from the keyframe before it."""
    path = tmp_path / name
    _encode(path, *ENCODERS[name])
    with av.open(str(path)) as container:
        pts = sorted(p.pts for p in container.demux(video=0) if p.size)
    monkeypatch.setattr(decoding, "decode_threads", lambda: 2)
    monkeypatch.setattr(decoding, "keyframe_starts", lambda container, parts: [pts[57], pts[130], pts[131]])
    _assert_same_as_sequential(str(path))


def test_a_seek_past_the_segment_start_falls_back_to_one_decoder(tmp_path, monkeypatch):
    path = tmp_path / "h264.mp4"
    _encode(path, *ENCODERS["h264-closed-gop.mp4"])
    monkeypatch.setattr(decoding, "decode_threads", lambda: 2)
    missed = []
    original = decoding._from_keyframe

    def recording(packets, start):
        try:
            yield from original(packets, start)
        except decoding.SeekMissed:
            missed.append(start)
            raise

    monkeypatch.setattr(decoding, "_from_keyframe", recording)
    monkeypatch.setattr(decoding, "keyframe_starts", lambda container, parts: [-1000])  # before the first frame
    _assert_same_as_sequential(str(path))
    assert missed == [-1000]


def test_a_stream_that_cannot_seek_is_not_cut(tmp_path):
    """A raw H.264 elementary stream refuses seeks: no segment starts, one decoder reads it."""
    path = tmp_path / "raw.h264"
    _encode(path, *ENCODERS["h264-closed-gop.mp4"])
    with av.open(str(path)) as container:
        assert container.format.name == "h264"
        assert keyframe_starts(container, 4) == []
