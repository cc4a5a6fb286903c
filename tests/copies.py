"""Copies of a video as they turn up in web corpora: re-encoded at another quality and size,
cropped, cut in time, mirrored. Used by tests/test_decontam.py and benchmarks/decontam_bench.py."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def transcode(
    src: Path, dst: Path, crf: int, width: int, crop=(0.0, 0.0, 0.0, 0.0), start_s: float = 0.0, end_s: float | None = None, mirror: bool = False
) -> Path:
    """A copy of `src` with libx264: frames from `start_s` to `end_s`, cut by `crop` (shares of the
    height and width cut at the top, bottom, left and right), mirrored left to right if asked,
    scaled to `width`, encoded at `crf`."""
    top, bottom, left, right = crop
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        encoder = out.add_stream("libx264", rate=stream.average_rate or 25, options={"crf": str(crf), "preset": "veryfast"})
        first, n = None, 0
        for frame in inp.decode(stream):
            first = frame.time if first is None else first
            if frame.time - first < start_s or (end_s is not None and frame.time - first >= end_s):
                continue
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            rgb = rgb[round(h * top) : h - round(h * bottom), round(w * left) : w - round(w * right)]
            rgb = np.ascontiguousarray(rgb[:, ::-1] if mirror else rgb)
            height = round(width * rgb.shape[0] / rgb.shape[1] / 2) * 2
            if not n:
                encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(width=width, height=height, format="yuv420p")
            picture.pts, n = n, n + 1
            out.mux(encoder.encode(picture))
        out.mux(encoder.encode())
    return dst
