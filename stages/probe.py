"""Probe stage: metadata, content fingerprint and an admission decision for each input.

Reasons are written `code: detail` so the ledger can count by code and a person can read
the detail. `rejected` means the input is unusable by policy or damaged; `failed` means our
own code broke on it (a bug to look at), and both keep the run going.
"""

from __future__ import annotations

import hashlib
import os

import av
import fsspec
import pyarrow as pa
from pydantic import Field

from vidcurate.schemas.tables import FAILED, KEPT, REJECTED, VIDEOS, to_table
from vidcurate.stages.contract import Stage
from vidcurate.stages.failures import failed
from vidcurate.stages.media import is_remote, local_copy, rotation_of
from vidcurate.stages.settings import StageResources, StrictModel


class ProbeConfig(StrictModel):
    min_duration_s: float = Field(0.5, ge=0)
    max_duration_s: float = Field(4 * 3600, gt=0)
    max_width: int = Field(7680, gt=0, description="decoder-bomb guard: larger declared sizes are rejected")
    max_height: int = Field(4320, gt=0)
    max_file_bytes: int = Field(50 * 2**30, gt=0)
    resources: StageResources = StageResources()


STAGE = "probe"
_HASH_CHUNK = 8 << 20


class Rejection(Exception):
    """An input that must not go further, with the reason recorded in the ledger."""


def fingerprint(path: str) -> str:
    """Content hash: the same bytes under any name or location get the same video_id."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:20]


def _demux_extent(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[float, int]:
    """Duration and frame count from the packets themselves (no decoding).

    Containers may lack a duration or declare one the data no longer has (truncation).
    """
    first = last_end = None
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            t = float(packet.pts * packet.time_base)
            end = t + float((packet.duration or 0) * packet.time_base)
            first = t if first is None else min(first, t)
            last_end = end if last_end is None else max(last_end, end)
            count += 1
    except av.error.FFmpegError as exc:
        raise Rejection(f"truncated: demuxing stopped after {count} packets ({exc})") from exc
    if count == 0:
        raise Rejection("no_frames: the video stream has no packets")
    return last_end - first, count


def _declared_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None


def _inspect(path: str, cfg: ProbeConfig) -> dict:
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise Rejection(f"unreadable: not a media container FFmpeg can open ({exc})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Rejection(f"no_video_stream: streams present: {', '.join(kinds)}")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        if width <= 0 or height <= 0:
            raise Rejection(f"bad_dimensions: declared size {width}x{height}")
        if width > cfg.max_width or height > cfg.max_height:
            raise Rejection(
                f"too_large: declared size {width}x{height} exceeds the limit {cfg.max_width}x{cfg.max_height}"
            )
        declared = _declared_duration(container, stream)
        try:
            frame = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise Rejection(f"undecodable: first frame failed to decode ({exc})") from exc
        if frame is None:
            raise Rejection("no_frames: no frame could be decoded")
        rotation = rotation_of(frame)
        container.seek(0)
        duration, n_frames = _demux_extent(container, stream)
        if stream.frames and n_frames < stream.frames:  # the container's index lists more frames
            raise Rejection(f"truncated: data ends after {n_frames} of {stream.frames} indexed frames")
        if declared and duration < declared - max(0.25, 0.02 * declared):
            raise Rejection(f"truncated: data ends at {duration:.2f} s of a declared {declared:.2f} s")
        rate = stream.average_rate or stream.guessed_rate
        return {
            "duration_s": duration,
            "fps": float(rate) if rate else n_frames / max(duration, 1e-9),
            "n_frames": n_frames,
            "width": width,
            "height": height,
            "codec": ctx.name,
            "container": container.format.name,
            "rotation": rotation,
            "has_audio": bool(container.streams.audio),
        }


def _check_inside(uri: str, root: str | None) -> None:
    """A symlink in the input directory must not lead outside it (e.g. to /etc or a secret)."""
    if root is None or is_remote(uri):
        return
    target = os.path.realpath(uri)
    base = os.path.realpath(root)
    if os.path.commonpath([target, base]) != base:
        raise Rejection(f"outside_root: resolves to {target}, outside the input directory {base}")


def _check_a_file(uri: str) -> None:
    """An input folder lists every entry, so a link to nothing and a folder named like a video
    end in the ledger too, each with what it is."""
    if is_remote(uri):
        return
    if os.path.islink(uri) and not os.path.exists(uri):
        raise Rejection(f"unreadable: a link to nothing ({os.readlink(uri)})")
    if os.path.isdir(uri):
        raise Rejection("unreadable: a folder, not a video file")


def probe_video(uri: str, cfg: ProbeConfig, root: str | None = None) -> dict:
    """One input URI -> one videos-table row, never raising. `root`: the input directory, if any."""
    row = {"uri": uri, "stage": STAGE}
    try:
        _check_inside(uri, root)
        _check_a_file(uri)
        size = fsspec.core.url_to_fs(uri)[0].size(uri)
        row["size_bytes"] = size
        if not size:
            raise Rejection("empty: zero-byte file")
        if size > cfg.max_file_bytes:
            raise Rejection(f"too_large: {size} bytes exceeds max_file_bytes {cfg.max_file_bytes}")
        with local_copy(uri) as path:
            row["video_id"] = fingerprint(path)
            row.update(_inspect(path, cfg))
        if row["duration_s"] < cfg.min_duration_s:
            raise Rejection(f"too_short: {row['duration_s']:.2f} s is below min_duration_s {cfg.min_duration_s}")
        if row["duration_s"] > cfg.max_duration_s:
            raise Rejection(f"too_long: {row['duration_s']:.0f} s exceeds max_duration_s {cfg.max_duration_s}")
        row.update(status=KEPT, reason=None)
    except Rejection as exc:
        row.update(status=REJECTED, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - any other error is ours; record it and keep the run alive
        row.update(failed("read", exc))
    return row


def mark_exact_duplicates(rows: list[dict]) -> list[dict]:
    """Same bytes under two names would give clashing clip ids: keep the first URI, reject the rest."""
    first_uri: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["uri"]):
        vid = row.get("video_id")
        if row["status"] != KEPT or vid is None:
            continue
        if vid in first_uri:
            row.update(status=REJECTED, reason=f"duplicate: same content as {first_uri[vid]}")
        else:
            first_uri[vid] = row["uri"]
    return rows


def probe_batch(batch: pa.Table, cfg: ProbeConfig, root: str | None = None) -> pa.Table:
    """The stage core (a Ray task a batch): {uri} rows -> videos-table rows."""
    return to_table([probe_video(row["uri"], cfg, root) for row in batch.to_pylist()], VIDEOS)


def _inputs_set(ctx) -> None:
    if not ctx.run.inputs:
        raise ValueError("no inputs: set `inputs` in the config or pass --inputs")


def arguments(ctx) -> dict:
    """Symlinks must stay inside the input directory, where the inputs are one."""
    inputs = ctx.run.inputs
    return {"cfg": ctx.config, "root": inputs if inputs and os.path.isdir(inputs) else None}


REASONS = {
    "outside_root": (REJECTED, "a symlink in the input directory that leads outside it"),
    "empty": (REJECTED, "a zero-byte file"),
    "unreadable": (REJECTED, "not a media container FFmpeg can open, a link to nothing, or a folder"),
    "no_video_stream": (REJECTED, "streams present, none of them video"),
    "bad_dimensions": (REJECTED, "declared width or height not positive"),
    "too_large": (REJECTED, "file bytes or declared size over `probe.max_*` (decoder bombs)"),
    "undecodable": (REJECTED, "the first frame does not decode"),
    "no_frames": (REJECTED, "no packets, or no frame decodes"),
    "truncated": (REJECTED, "the data ends before the frames or duration the file declares"),
    "too_short": (REJECTED, "shorter than `probe.min_duration_s`"),
    "too_long": (REJECTED, "longer than `probe.max_duration_s`"),
    "duplicate": (REJECTED, "the same bytes as an earlier input"),
    "read": (FAILED, "the file could not be read (I/O; transient ones are retried)"),
}

SPEC = Stage(
    name=STAGE,
    config_model=ProbeConfig,
    table=VIDEOS,
    reads="inputs",
    key="uri",
    columns=("uri",),
    always=True,
    run_fields=("inputs",),
    reasons=REASONS,
    core=probe_batch,
    arguments=arguments,
    finalize=lambda rows, _ctx: mark_exact_duplicates(rows),
    check=_inputs_set,
    redo_unit="uri",
)
