"""Analysis frames without decoding every frame.

Shot detection at full speed is bound by decoding. Non-reference frames (most B-frames of
H.264/HEVC) are the frames a decoder may skip, since no other frame is predicted from them,
so the first pass decodes reference frames only. A skipped frame is then filled by blending
its two decoded neighbours, which is close to exact inside a shot, a dissolve or a fade (all
near-linear over a few frames).

Hard cuts need the real frames. The first pass already decodes the skipped frames next to
any reference frame whose compressed size jumps (a new shot's first frames are coded mostly
intra; `SizeJumps` reads the slice type from the H.264 bitstream). Where two decoded
neighbours still differ like a hard cut with skipped frames between them, the caller asks
for those and they are decoded for real: seek to the keyframe of their group of pictures,
decode reference frames plus exactly those. Cuts stay frame-exact.

Anything unusual (another codec, missing or repeated timestamps, frames the packets do not
explain) falls back to decoding every frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import av
import numpy as np

from schemas.readers import decode_pts
from stages.media import FrameBatch, analysis_decoder, read_small_frames, small_yuv

SKIPPABLE_CODECS = frozenset({"h264", "hevc"})
DRAIN_PACKETS = 32  # packets fed past the last wanted one before a refinement gives up on it
SIZE_JUMP = 2.0  # a reference frame this many times the median size of its slice type is a cut suspect
SIZE_HISTORY = 16  # recent reference frames of each slice type that make the median
SUSPECT_RADIUS = 4  # skipped frames this close (in frames) to a suspect are decoded in the first pass


def _exp_golomb(bits: str, pos: int) -> tuple[int, int]:
    """One ue(v) code of the H.264 bitstream: (value, next position)."""
    zeros = bits.index("1", pos) - pos
    end = pos + 2 * zeros + 1
    return int(bits[pos + zeros : end], 2) - 1, end


class SizeJumps:
    """Per H.264 access unit: is it a reference frame, and is it a cut suspect (intra slice, or
    far larger than recent reference frames of its slice type)? Reads NAL headers only."""

    def __init__(self, extradata: bytes | None):
        avcc = bool(extradata) and extradata[0] == 1
        self.length_size = (extradata[4] & 3) + 1 if avcc else 0  # 0: Annex B start codes
        self.history: dict[str, deque[int]] = {}

    def _first_slice(self, data: bytes) -> tuple[int, int] | None:
        """(nal_ref_idc, slice type 0 P / 1 B / 2 I) of the first coded slice."""
        units = self._units(data)
        for unit in units:
            if unit and unit[0] & 0x1F in (1, 5):
                bits = "".join(f"{b:08b}" for b in unit[1:9].replace(b"\x00\x00\x03", b"\x00\x00"))
                try:
                    _, pos = _exp_golomb(bits, 0)  # first_mb_in_slice
                    slice_type, _ = _exp_golomb(bits, pos)
                except ValueError:
                    return None
                return unit[0] >> 5 & 3, slice_type % 5
        return None

    def _units(self, data: bytes) -> list[bytes]:
        if not self.length_size:
            return [u.lstrip(b"\x00") for u in data.split(b"\x00\x00\x01")]
        units, pos = [], 0
        while pos + self.length_size <= len(data):
            size = int.from_bytes(data[pos : pos + self.length_size], "big")
            units.append(data[pos + self.length_size : pos + self.length_size + size])
            pos += self.length_size + size
        return units

    def classify(self, data: bytes, is_keyframe: bool) -> tuple[bool, bool]:
        """(is_reference, is_suspect); an unreadable unit counts as a reference suspect."""
        info = self._first_slice(data)
        if info is None:
            return True, True
        ref_idc, slice_type = info
        if not ref_idc:
            return False, False
        sizes = self.history.setdefault("PBI"[slice_type] if slice_type < 3 else "?", deque(maxlen=SIZE_HISTORY))
        suspect = is_keyframe or slice_type == 2 or len(sizes) < 3 or len(data) > SIZE_JUMP * float(np.median(sizes))
        sizes.append(len(data))
        return True, suspect


def _frame_ticks(stream: av.video.stream.VideoStream) -> int:
    """One frame's duration in the stream's time base (nominal rate; only sizes a search radius)."""
    rate = stream.average_rate or stream.guessed_rate or 25
    return max(int(round(1 / (float(rate) * float(stream.time_base)))), 1)


class _Scan:
    """Pass one over a video: every packet's pts and keyframe flag, reference frames decoded."""

    def __init__(self, container: av.container.InputContainer, analysis_width: int):
        self.stream = container.streams.video[0]
        analysis_decoder(self.stream)
        context = self.stream.codec_context
        context.skip_frame = "NONREF"
        self.step = max(context.width // analysis_width, 1)
        self.packets: list[tuple[int | None, bool]] = []  # decode order
        self.frames: dict[int, np.ndarray] = {}
        jumps = SizeJumps(context.extradata) if context.name == "h264" else None
        suspects: deque[int] = deque(maxlen=SIZE_HISTORY)  # pts of recent suspect reference frames
        radius = SUSPECT_RADIUS * _frame_ticks(self.stream)
        for packet in container.demux(self.stream):
            if packet.size:
                self.packets.append((packet.pts, packet.is_keyframe))
            if jumps is not None and packet.size and packet.pts is not None:
                is_ref, suspect = jumps.classify(bytes(packet), packet.is_keyframe)
                if suspect:
                    suspects.append(packet.pts)
                near = not is_ref and any(abs(packet.pts - p) <= radius for p in suspects)
                context.skip_frame = "DEFAULT" if near else "NONREF"
            for frame in self.stream.decode(packet):
                if frame.pts is not None:
                    self.frames[frame.pts] = small_yuv(frame, self.step)

    def consistent(self) -> bool:
        """Every packet has its own pts and every decoded frame is one of them."""
        pts = [p for p, _ in self.packets]
        return bool(self.frames) and None not in pts and len(set(pts)) == len(pts) and set(self.frames) <= set(pts)

    def refine(self, container: av.container.InputContainer, wanted: set[int]) -> None:
        """Decode the frames with these pts for real, one seek per group of pictures."""
        groups: dict[int, set[int]] = {}
        keyframe = self.packets[0][0]
        for pts, is_key in self.packets:
            keyframe = pts if is_key else keyframe
            if pts in wanted:
                groups.setdefault(keyframe, set()).add(pts)
        for keyframe, group in groups.items():
            container.seek(keyframe, stream=self.stream, backward=True)
            for frame in decode_pts(container, self.stream, group, patience=DRAIN_PACKETS):
                self.frames[frame.pts] = small_yuv(frame, self.step)


def read_frames_skipping(
    path: str, analysis_width: int, cut_like: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> FrameBatch:
    """All frames of a video, downscaled, decoding reference frames (and the skipped frames near
    size jumps), then exactly the skipped frames between decoded neighbours i, i+1 where
    `cut_like(decoded frames, display gaps between them)[i]` holds. Other codecs are decoded whole."""
    with av.open(path) as container:
        if container.streams.video[0].codec_context.name not in SKIPPABLE_CODECS:
            return read_small_frames(path, analysis_width)
        scan = _Scan(container, analysis_width)
        if not scan.consistent():
            return read_small_frames(path, analysis_width)
        pts = np.array(sorted(p for p, _ in scan.packets), dtype=np.int64)
        decoded = np.flatnonzero(np.isin(pts, list(scan.frames)))
        gaps = np.diff(decoded)
        flagged = cut_like(np.stack([scan.frames[p] for p in pts[decoded]]), gaps) & (gaps > 1)
        wanted = {int(p) for i in np.flatnonzero(flagged) for p in pts[decoded[i] + 1 : decoded[i + 1]]}
        if wanted:
            scan.refine(container, wanted)
        time_base = float(container.streams.video[0].time_base)
    return FrameBatch(_filled(scan.frames, pts), (pts - pts[0]) * time_base, pts)


def _filled(frames: dict[int, np.ndarray], pts: np.ndarray) -> np.ndarray:
    """Frames in display order; each skipped run is blended linearly between its decoded neighbours
    (runs before the first or after the last decoded frame repeat it)."""
    decoded = np.flatnonzero(np.isin(pts, list(frames)))
    out = np.empty((len(pts), *frames[int(pts[decoded[0]])].shape), dtype=np.uint8)
    out[decoded] = np.stack([frames[int(p)] for p in pts[decoded]])
    out[: decoded[0]] = out[decoded[0]]
    out[decoded[-1] + 1 :] = out[decoded[-1]]
    for a, b in zip(decoded[:-1], decoded[1:]):
        if b - a > 1:
            w = (np.arange(1, b - a, dtype=np.float32) / (b - a))[:, None, None, None]
            out[a + 1 : b] = np.rint((1 - w) * out[a] + w * out[b])
    return out
