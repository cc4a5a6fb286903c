"""Decoder settings of the analysis passes, and decoding one video on every core by cutting it
at keyframes.

FFmpeg's frame threading scales poorly on the small frames shot detection reads: on 2 cores,
two threads decoded 360p H.264 only 1.19x faster than one, since each frame waits on the
frames it is predicted from. A keyframe starts afresh, so the video is cut at keyframes into
segments that single-threaded decoders take on in parallel threads (PyAV releases the GIL
while decoding): two files decoded that way ran 1.82x faster than one after the other.

The frames are those of one sequential decode: a segment starts at its keyframe, drops
anything shown before it, and stops at the first frame shown at or after the next
segment's keyframe; its decoder first sees the stream's first packet, for the state a stream
sets up once. A seek that lands past its keyframe falls back to one decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import av

T = TypeVar("T")
MIN_SEGMENT_S = 2.0  # shorter segments save less than their seek and open cost
SEGMENTS_PER_WORKER = 2  # keyframes rarely fall evenly; spare segments even out the workers


def decode_threads() -> int:
    """Threads a decoder may use: one per CPU. FFmpeg's automatic choice is CPUs + 1, which
    decoded ~11% slower on 2 cores (decoding bounds the split stage)."""
    return os.cpu_count() or 1


def analysis_decoder(stream: av.video.stream.VideoStream, threads: int | None = None) -> None:
    """Decoder settings of every analysis pass: `threads` frame threads (default one per CPU), and
    no deblocking (it only polishes pixels; cut detection on tiny frames does not need it)."""
    stream.thread_type = "AUTO"
    stream.thread_count = threads or decode_threads()
    stream.codec_context.options = {"skip_loop_filter": "all"}


class SeekMissed(Exception):
    """A seek landed after the keyframe a segment starts at (imprecise seeking formats)."""


def _duration_ticks(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    if stream.duration:
        return int(stream.duration)
    if container.duration and stream.time_base:
        return int(container.duration / av.time_base / float(stream.time_base))
    return 0


def keyframe_starts(container: av.container.InputContainer, parts: int) -> list[int]:
    """pts of up to parts - 1 keyframes spread over the video, increasing: where segments 2.. start."""
    stream = container.streams.video[0]
    duration, first = _duration_ticks(container, stream), stream.start_time or 0
    starts: list[int] = []
    for k in range(1, parts):
        try:
            container.seek(first + duration * k // parts, stream=stream, backward=True)
            key = next((p.pts for p in container.demux(stream) if p.size and p.is_keyframe), None)
        except av.FFmpegError:  # a stream that cannot seek (raw H.264) is decoded in one piece
            break
        if key is not None and key > (starts[-1] if starts else first):
            starts.append(key)
    return starts


def _from_keyframe(packets: Iterator[av.Packet], start: int) -> Iterator[av.Packet]:
    """Packets from the first keyframe on; that keyframe must not come after `start`."""
    for packet in packets:
        if packet.size and packet.is_keyframe:
            if packet.pts is None or packet.pts > start:
                raise SeekMissed(f"seek to pts {start} landed at {packet.pts}")
            yield packet
            break
    yield from packets


def _prime(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
    """Decode the stream's first packet and drop its frames: decoders keep state from a stream's
    start that later keyframes do not repeat (in-band parameter sets; the x264 version that
    FFmpeg's H.264 decoder reads from the first packet to undo old x264 bugs, without which a
    4:4:4 file decoded from a later keyframe came out grey and green)."""
    first = next((packet for packet in container.demux(stream) if packet.size), None)
    if first is not None:
        stream.decode(first)


def _decode_segment(
    path: str, start: int | None, stop: int | None, threads: int, on_frame: Callable[[av.VideoFrame], T]
) -> list[tuple[int, float, T]]:
    """(pts, time, on_frame(frame)) of the frames shown in [start, stop), in display order."""
    out: list[tuple[int, float, T]] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        analysis_decoder(stream, threads)
        packets = container.demux(stream)
        if start is not None:
            _prime(container, stream)
            container.seek(start, stream=stream, backward=True)
            packets = _from_keyframe(container.demux(stream), start)
        for packet in packets:
            for frame in stream.decode(packet):
                if frame.time is None or (start is not None and frame.pts < start):
                    continue
                if stop is not None and frame.pts >= stop:
                    return out
                out.append((frame.pts, frame.time, on_frame(frame)))
    return out


def decode_frames(path: str, on_frame: Callable[[av.VideoFrame], T]) -> list[tuple[int, float, T]]:
    """(pts, time in s, on_frame(frame)) for every decoded frame with a timestamp, in display
    order, decoded in keyframe-cut segments across all CPUs."""
    workers = decode_threads()
    with av.open(path) as container:
        stream = container.streams.video[0]
        seconds = _duration_ticks(container, stream) * float(stream.time_base or 0)
        parts = min(SEGMENTS_PER_WORKER * workers, int(seconds // MIN_SEGMENT_S)) if workers > 1 else 1
        starts = keyframe_starts(container, parts) if parts > 1 else []
    if not starts:
        return _decode_segment(path, None, None, workers, on_frame)
    bounds = list(zip([None, *starts], [*starts, None]))
    threads = max(workers // len(bounds), 1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            segments = list(pool.map(lambda b: _decode_segment(path, *b, threads, on_frame), bounds))
    except SeekMissed:
        return _decode_segment(path, None, None, workers, on_frame)
    return [frame for segment in segments for frame in segment]
