"""Window media: a window's own mp4, its clips' frames in order.

Trainers decode the whole file a record names (none of their training loaders reads a start
or end time), so a window's spans must be times in a file that *is* the window. The clips of a
window are contiguous, so their frames in order are exactly the source frames of the window;
a window whose frame count does not match its span fails rather than ship shifted labels.

The clips' encoded packets are copied one after another, their times shifted by the clips
before them: every clip starts with a keyframe and split encodes them all alike, so the window
decodes to exactly the clips' own frames, with no second lossy encode, in milliseconds. Clips
whose streams differ (codec parameters, time base) are decoded and encoded again instead.

Audio cannot be copied so: AAC packets hold 1024 samples and each clip's track starts with the
encoder's priming, so clip edges do not fall on packet edges. The clips' tracks are decoded, laid
end to end (silence for a clip without one) and encoded once for the window: a second AAC
generation, at split's bit rate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import av
import fsspec

import numpy as np

from vidcurate.stages.audio import AAC_OPTIONS, AudioFormat, audio_frame, read_track
from vidcurate.stages.failures import failed
from vidcurate.stages.media import file_sha256, private_part
from vidcurate.stages.split import ClipEncoder

if TYPE_CHECKING:
    from vidcurate.stages.split import SplitConfig


def cut_window(window_id: str, clip_uris: list[str], frames: int, fps: float, out_dir: Path, cfg: SplitConfig) -> dict:
    """Write `<out_dir>/<window_id>.mp4`; returns its uri, sha256 and size."""
    path = Path(out_dir) / f"{window_id}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = window_audio(clip_uris)
    copied = _copy_packets(path, clip_uris, frames, fps, audio, cfg) if clip_uris else None
    return copied if copied is not None else _encode_frames(path, clip_uris, frames, fps, cfg, audio)


def window_audio(clip_uris: list[str]) -> tuple[np.ndarray, AudioFormat] | None:
    """The clips' audio tracks end to end, silence for a clip without one (as long as its video);
    None where no clip has a track."""
    tracks = [read_track(uri) for uri in clip_uris]
    fmt = next((t[1] for t in tracks if t is not None), None)
    if fmt is None:
        return None
    parts = []
    for uri, track in zip(clip_uris, tracks):
        if track is None:
            parts.append(np.zeros((fmt.channels, round(_video_seconds(uri) * fmt.rate)), np.float32))
        else:
            parts.append(track[0] if track[1] == fmt else read_track(uri, fmt.layout, fmt.rate)[0])
    return np.concatenate(parts, axis=1), fmt


def _video_seconds(uri: str) -> float:
    with fsspec.open(uri, "rb") as f, av.open(f) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def _stream_signature(stream) -> tuple:
    """What clips must share for their packets to follow one another in one stream: codec, size,
    parameter sets (the mp4's extradata) and time base."""
    ctx = stream.codec_context
    return ctx.name, ctx.width, ctx.height, ctx.pix_fmt, bytes(ctx.extradata or b""), stream.time_base


def _copy_packets(path: Path, clip_uris: list[str], frames: int, fps: float, audio, cfg: SplitConfig) -> dict | None:
    """The window by packet copy, with `audio` (samples, format) encoded beside it; None (nothing
    written) where a clip's stream differs from the first clip's, or the copied stream's length
    is not its frames at `fps` within half a frame (the times would not be the window's)."""
    tmp = private_part(path)
    count, offset = 0, 0
    try:
        with av.open(str(tmp), mode="w", format="mp4", options={"max_interleave_delta": "0"}) as out:
            target, signature, matched = None, None, True
            for uri in clip_uris:
                with fsspec.open(uri, "rb") as f, av.open(f) as container:
                    stream = container.streams.video[0]
                    if target is None:
                        target, signature = out.add_stream_from_template(stream), _stream_signature(stream)
                        if audio is not None:  # the muxer holds it until the video's packets come
                            track = out.add_stream("aac", rate=audio[1].rate, layout=audio[1].layout, options=AAC_OPTIONS)
                            track.bit_rate = cfg.audio_bitrate
                            out.mux(track.encode(audio_frame(*audio)) + track.encode(None))
                    elif _stream_signature(stream) != signature:
                        matched = False
                        break
                    end = offset
                    for packet in container.demux(stream):
                        if packet.dts is None:  # the demuxer's end-of-stream marker
                            continue
                        end = max(end, offset + packet.pts + (packet.duration or 0))
                        packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                        packet.stream = target
                        out.mux(packet)
                        count += 1
                    offset = end
            size = (target.codec_context.width, target.codec_context.height)
            seconds = float(offset * target.time_base)
        if matched and count != frames:
            raise ValueError(f"frames_missing: its clips hold {count} frames, its span {frames}")
        if not matched or abs(seconds - frames / fps) > 0.5 / fps:
            tmp.unlink()
            return None
        sha = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"media_uri": str(path), "sha256": sha, "width": size[0], "height": size[1]}


def _encode_frames(path: Path, clip_uris: list[str], frames: int, fps: float, cfg: SplitConfig, audio) -> dict:
    encoder = None
    try:
        for uri in clip_uris:
            with fsspec.open(uri, "rb") as f, av.open(f) as container:
                for frame in container.decode(video=0):
                    if encoder is None:
                        encoder = ClipEncoder(path, (frame.width, frame.height), fps, cfg, audio and audio[1])
                        if audio is not None:
                            encoder.add_audio(audio[0])
                    encoder.add(frame)
        if encoder is None or encoder.count != frames:
            got = 0 if encoder is None else encoder.count
            raise ValueError(f"frames_missing: its clips hold {got} frames, its span {frames}")
        sha = encoder.close()
    except BaseException:
        if encoder is not None:
            encoder.abort()
        raise
    return {"media_uri": str(path), "sha256": sha, "width": encoder.size[0], "height": encoder.size[1]}


def cut_window_job(job: dict, cfg: SplitConfig, media_dir: str) -> dict:
    """{window_id, clip_uris, frames, fps} -> its media's {window_id, media_uri, sha256, width,
    height, error}; a window that cannot be cut fails alone: `error` holds its failed row's status fields."""
    try:
        media = cut_window(job["window_id"], job["clip_uris"], job["frames"], job["fps"], Path(media_dir), cfg)
        return {"window_id": job["window_id"], **media, "error": None}
    except Exception as exc:  # noqa: BLE001 - one window fails alone, with its reason
        return {"window_id": job["window_id"], "error": failed("window", exc)}
