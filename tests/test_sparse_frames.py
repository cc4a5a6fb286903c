"""Skipping non-reference frames: exact frames at every cut, same cuts and timestamps as decoding
everything, for MP4 (length-prefixed) and MPEG-TS (start-code) H.264, and a whole decode elsewhere."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from make_synthetic import encode, make, render

from conftest import SHARED_VIDEOS
from pipelines.config import ProbeConfig, SplitConfig
from stages.detect import cut_like_steps, detect_cuts, pair_distances
from stages.media import read_small_frames
from stages.probe import probe_video
from stages.sparse_frames import read_frames_skipping
from stages.split import split_video

CFG = SplitConfig(decode="reference")


def _skipping(path) -> object:
    return read_frames_skipping(
        str(path), CFG.analysis_width, lambda f, g: cut_like_steps(f, g, CFG.threshold, CFG.adaptive_ratio, CFG.window)
    )


def _cuts(frames) -> list:
    return detect_cuts(frames.yuv, CFG.threshold, CFG.adaptive_ratio, CFG.window)[0]


def _encode_hevc(frames: list[np.ndarray], path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"x265-params": "log-level=error"}
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module", params=["h264-mp4", "h264-ts", "hevc-mp4"])
def video(request, tmp_path_factory) -> tuple[str, dict]:
    """A 360p synthetic video with exact truth: H.264 in MP4 (length-prefixed NAL units) or
    MPEG-TS (start codes), or HEVC in MP4."""
    out = tmp_path_factory.mktemp(f"sparse-{request.param}")
    if request.param == "h264-mp4":
        (path,) = make(out / "videos", 1, seed=21, height=360, width=640)
        return str(path), json.loads((out / "truth" / f"{path.stem}.json").read_text())
    frames, truth = render(22, height=360, width=640)
    path = out / ("synthetic.ts" if request.param == "h264-ts" else "synthetic.mp4")
    (encode if request.param == "h264-ts" else _encode_hevc)(frames, path)
    return str(path), {"n_frames": len(frames), "transitions": truth}


def test_frames_beside_every_hard_cut_are_decoded_exactly(video):
    path, truth = video
    full, skipping = read_small_frames(path), _skipping(path)
    assert np.array_equal(full.pts, skipping.pts) and np.allclose(full.times_s, skipping.times_s)
    exact = np.array([np.array_equal(a, b) for a, b in zip(full.yuv, skipping.yuv)])
    assert 0.2 < 1 - exact.mean() < 0.8, "some frames must have been skipped, and not all"
    for t in truth["transitions"]:
        if t["kind"] == "hard":
            cut = t["frames"][0]
            assert exact[cut - 1] and exact[cut], (t, np.flatnonzero(~exact))
    blended = ~exact
    assert pair_distances(full.yuv[blended], skipping.yuv[blended]).mean() < 3.0  # close to the real frames


def test_same_cuts_as_decoding_every_frame(video):
    path, truth = video
    full, skipping = _cuts(read_small_frames(path)), _cuts(_skipping(path))
    hard = lambda cuts: [c.frame for c in cuts if c.kind == "hard"]  # noqa: E731
    assert hard(skipping) == hard(full)
    assert len(skipping) == len(full)
    # a fade edge (black / not black) may land on a blended frame: within the skipped run, <= 2 here
    assert all(a.kind == b.kind and abs(a.frame - b.frame) <= 2 for a, b in zip(full, skipping))


def test_other_codecs_are_decoded_whole():
    path = str(SHARED_VIDEOS / "psd_fades.mp4")  # MPEG-4 part 2
    assert av.open(path).streams.video[0].codec_context.name == "mpeg4"
    full, skipping = read_small_frames(path), _skipping(path)
    assert np.array_equal(full.yuv, skipping.yuv) and np.array_equal(full.pts, skipping.pts)


def test_split_clips_hold_exactly_their_frames(video, tmp_path):
    path, truth = video
    row = probe_video(path, ProbeConfig())
    clips = split_video(row, tmp_path, CFG.model_copy(update={"max_clip_s": 4.0}))
    kept = [c for c in clips if c["status"] == "kept"]
    assert kept and clips[-1]["end_frame"] == truth["n_frames"]
    for clip in kept:
        with av.open(clip["clip_uri"]) as container:
            assert sum(1 for _ in container.decode(video=0)) == clip["end_frame"] - clip["start_frame"]
