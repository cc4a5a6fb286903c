"""Decode once: clip extraction keeps the frames later stages sample, with their times, so
caption, embed, quality and shard keyframes never decode a clip again.

Every reader samples a clip the same way, `evenly_spaced(n, count)` of its n frames (the rule
of `schemas.readers.clip_frames`), so split knows before it encodes a clip which of its frames
the configured stages will ask for: each stage declares a `FrameNeed`. Split keeps those frames
as it encodes them (the pixels the encoder is given, after scaling and rotation) as JPEG in
`media/frames/<clip_id>.npz`, with the clip's frame count and each frame's time on the clip's
clock. A reader asking for frames the file lacks (a need added after split ran, a clip whose
frame count came out short) decodes the clip as before.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
from PIL import Image

from vidcurate.schemas.readers import clip_frames, evenly_spaced, scaled_size
from vidcurate.stages.media import private_part, thread_scaler

JPEG_QUALITY = 95  # ~7 KB (144p) to ~17 KB (240p) a frame: far below the clip itself


@dataclass(frozen=True)
class FrameNeed:
    """How many evenly spaced frames of a clip a stage samples: `count`, or `per_second` of the
    clip capped at `max_count`."""

    count: int
    per_second: float | None = None
    max_count: int | None = None

    def count_for(self, duration_s: float) -> int:
        if self.per_second is None:
            return self.count
        return int(min(self.max_count or self.count, max(1, round(duration_s * self.per_second))))


def wanted_positions(frame_count: int, duration_s: float, needs: tuple[FrameNeed, ...]) -> set[int]:
    """The positions (0-based, presentation order) any of `needs` samples from a clip."""
    return {p for need in needs for p in evenly_spaced(frame_count, need.count_for(duration_s))}


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class FrameKeeper:
    """The frames of one clip being encoded that its stages will sample, and every frame's change
    score from the analysis pass (`changes`; None: not kept)."""

    def __init__(self, frame_count: int, duration_s: float, needs: tuple[FrameNeed, ...], changes: np.ndarray | None = None):
        self.frame_count = frame_count
        self.wanted = wanted_positions(frame_count, duration_s, needs)
        self.changes = changes
        self.jpegs: dict[int, bytes] = {}

    def offer(self, position: int, frame: av.VideoFrame) -> None:
        """Keep the clip's `position`-th frame (as given to the encoder) if a stage samples it."""
        if position in self.wanted:
            self.jpegs[position] = _jpeg(frame.to_ndarray(format="rgb24"))

    def write(self, path: Path, encoded: int, time_base: Fraction) -> str | None:
        """Store the kept frames and change scores; None (nothing stored) unless the clip came out
        with the frame count the positions were chosen for and every wanted frame came."""
        if (not self.wanted and self.changes is None) or encoded != self.frame_count or self.jpegs.keys() != self.wanted:
            return None
        changes = np.zeros(0, np.float32) if self.changes is None else np.asarray(self.changes, np.float32)
        positions = np.asarray(sorted(self.jpegs), dtype=np.int64)
        blobs = [self.jpegs[p] for p in positions]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = private_part(path)
        with open(tmp, "wb") as f:
            np.savez(
                f,
                jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
                ends=np.cumsum([len(b) for b in blobs], dtype=np.int64),
                positions=positions,
                times_s=np.asarray([float(p * time_base) for p in positions]),
                frame_count=np.int64(encoded),
                changes=changes,
                frame_s=np.float64(time_base),
            )
        os.replace(tmp, path)
        return str(path)


def read_changes(frames_uri: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Each frame of the clip's time (on its clock) and its change score from split's analysis
    pass: how much the picture changed from the frame before. None where split kept none."""
    if not frames_uri:
        return None
    try:
        with fsspec.open(frames_uri, "rb") as f, np.load(f, allow_pickle=False) as store:
            if "changes" not in store.files or not len(store["changes"]):
                return None
            changes, frame_s = store["changes"].astype(np.float64), float(store["frame_s"])
    except FileNotFoundError:
        return None
    return np.arange(len(changes)) * frame_s, changes


def _stored(frames_uri: str | None, count: int) -> tuple[list[np.ndarray], np.ndarray] | None:
    """The stored RGB frames and times that `count` evenly spaced picks name, if all are stored."""
    if not frames_uri:
        return None
    try:
        with fsspec.open(frames_uri, "rb") as f, np.load(f, allow_pickle=False) as store:
            positions = store["positions"].tolist()
            picks = evenly_spaced(int(store["frame_count"]), count)
            if not set(picks) <= set(positions):
                return None
            jpeg, ends, times = store["jpeg"], store["ends"], store["times_s"]
    except FileNotFoundError:
        return None
    starts = np.concatenate([[0], ends[:-1]])
    index = [positions.index(p) for p in picks]
    frames = [np.asarray(Image.open(io.BytesIO(jpeg[starts[i] : ends[i]].tobytes())).convert("RGB")) for i in index]
    return frames, times[index]


def _scaled(rgb: np.ndarray, short_side: int | None) -> np.ndarray:
    """As `clip_frames(short_side=...)` scales: bicubic, to that short side, never up."""
    size = scaled_size(rgb.shape[1], rgb.shape[0], short_side)
    return thread_scaler().reformat(av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="rgb24", **size).to_ndarray() if size else rgb


def read_frames(clip: dict, count: int, short_side: int | None = None, mp4: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What `clip_frames(the clip's mp4, count, short_side)` returns, (n, h, w, 3) RGB and times
    in seconds from the clip start, from the frames split stored; the clip (`mp4` where the
    caller holds its bytes already) is decoded only where they do not hold the picks."""
    stored = _stored(clip.get("frames_uri"), count)
    if stored is None:
        if mp4 is None:
            with fsspec.open(clip["clip_uri"], "rb") as f:
                mp4 = f.read()
        return clip_frames(mp4, count, short_side)
    frames, times = stored
    return np.stack([_scaled(rgb, short_side) for rgb in frames]), times
