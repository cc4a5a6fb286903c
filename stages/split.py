"""Split stage: shot boundaries -> clip spans -> re-encoded H.264 clip files.

Spans are decided on frame indices and the container's own timestamps, then every
clip of a video is cut in one decode pass (no per-clip seeking).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from vidcurate.schemas.tables import CLIPS, FAILED, KEPT, REJECTED, clip_id, to_table
from vidcurate.stages.audio import AAC_OPTIONS, AudioFormat, AudioUndecodable, SourceAudio, audio_frame
from vidcurate.stages.contract import Stage
from vidcurate.stages.failures import failed
from vidcurate.stages.decoding import decode_threads
from vidcurate.stages.detect import Cut, detect_cuts, frame_differences, frozen_run_end
from vidcurate.stages.frame_store import FrameKeeper, FrameNeed
from vidcurate.stages.media import file_sha256, local_copy, private_part, read_small_frames, thread_scaler
from vidcurate.stages.settings import StageResources, StrictModel


class SplitConfig(StrictModel):
    detector: Literal["content", "transnetv2", "combined"] = Field(
        "content", description="content: frame differences + dissolve (calm and moving shots) and black analysis; "
        "transnetv2: the bundled TransNetV2 network; combined: content cuts plus TransNetV2's transitions away from them"
    )
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2 transition probability")
    device: str = Field("auto", description="TransNetV2: auto, cpu, cuda")
    threshold: float = Field(12.0, gt=0, description="min frame-difference score (0-255 scale) of a hard cut")
    adaptive_ratio: float = Field(3.0, ge=1, description="a cut's score must exceed this multiple of its neighbours'")
    window: int = Field(8, ge=1, description="frames on each side used for the adaptive ratio")
    min_clip_s: float = Field(1.0, ge=0)
    max_clip_s: float = Field(30.0, gt=0)
    short_shots: Literal["merge", "drop"] = "merge"
    static_lead_in_s: float = Field(
        1.0, ge=0, description="a first shot frozen for at least this long before it starts moving loses the frozen "
        "part as rejected(static); 0 keeps it"
    )
    analysis_width: int = Field(64, ge=16, description="approximate width of the frames the detector sees")
    clip_max_height: int = Field(360, ge=16, description="extracted clips are scaled down to at most this height")
    clip_crf: int = Field(23, ge=0, le=51)
    clip_preset: str = "veryfast"
    clip_x264_params: str = Field(
        "mbtree=0", description="extra x264 options (key=value:...); mbtree=0 because with x264's macroblock tree "
        "the same frames encoded to different bytes from one run to the next at most sizes (426x240, 854x480, "
        "480x360), so re-runs shipped different clips; it costs ~18% more bytes at equal PSNR. '' gives x264's defaults"
    )
    audio: bool = Field(True, description="keep the source's audio track in each clip (AAC, the clip's span of it)")
    audio_bitrate: int = Field(96_000, ge=16_000, le=512_000, description="bits per second of a clip's AAC track")
    resources: StageResources = StageResources()

    @model_validator(mode="after")
    def _lengths(self) -> SplitConfig:
        if self.min_clip_s >= self.max_clip_s:
            raise ValueError(f"min_clip_s ({self.min_clip_s}) must be below max_clip_s ({self.max_clip_s})")
        return self


STAGE = "split"


@dataclass(frozen=True)
class ClipMedia:
    """Where a video's clips go, where the frames stages will sample go, and which those are."""

    clips: Path
    frames: Path
    needs: tuple[FrameNeed, ...]


def frame_end_times(times_s: np.ndarray, duration_s: float | None) -> np.ndarray:
    """End time of each frame: the next frame's start, and the stream end for the last one."""
    step = float(times_s[-1] - times_s[-2]) if len(times_s) > 1 else (duration_s or 0.04)
    tail = times_s[-1] + step
    return np.append(times_s[1:], tail)


def static_lead_in(yuv: np.ndarray, black: np.ndarray, cuts: list[Cut], times_s: np.ndarray, ends_s: np.ndarray, min_s: float) -> Cut | None:
    """The cut ending a frozen lead-in: the first shot (after any black) holds still for at least
    `min_s`, then starts moving within the same shot. A shot still to its end is left whole: it
    is a shot, and the quality stage's motion score judges it."""
    if min_s <= 0 or black.all():
        return None
    first = int(np.argmin(black))
    end = frozen_run_end(yuv, first)
    next_cut = min((c.frame for c in cuts if c.frame > first), default=len(black))
    if end >= next_cut or ends_s[end - 1] - times_s[first] < min_s:
        return None
    return Cut(end, "from_static")


def plan_spans(cuts: list[Cut], black: np.ndarray, times_s: np.ndarray, ends_s: np.ndarray, cfg: SplitConfig) -> list[dict]:
    """Shots between cuts: black ones and a frozen lead-in (the shot before a `from_static` cut)
    rejected, short ones merged or dropped, long ones windowed."""
    n = len(times_s)
    inner = [c for c in cuts if 0 < c.frame < n]
    bounds = [0] + [c.frame for c in inner] + [n]
    kinds = ["start"] + [c.kind for c in inner]
    frozen_end = next((c.frame for c in inner if c.kind == "from_static"), None)

    def rejected_as(a: int, b: int) -> str | None:
        return "black" if black[a:b].mean() > 0.5 else "static" if b == frozen_end else None

    shots = [[a, b, k, rejected_as(a, b)] for a, b, k in zip(bounds[:-1], bounds[1:], kinds) if b > a]

    def length(a: int, b: int) -> float:
        return float(ends_s[b - 1] - times_s[a])

    if cfg.short_shots == "merge":
        merged: list[list] = []
        for shot in shots:
            prev = merged[-1] if merged else None
            joinable = prev is not None and not prev[3] and not shot[3]
            if joinable and min(length(prev[0], prev[1]), length(shot[0], shot[1])) < cfg.min_clip_s:
                prev[1] = shot[1]  # a too-short shot joins its neighbour
            else:
                merged.append(shot)
        shots = merged
    spans: list[dict] = []
    for a, b, k, rejected in shots:
        span = length(a, b)
        if rejected == "black":
            spans.append(_span(a, b, k, times_s, ends_s, REJECTED, f"black: {span:.2f} s of black frames"))
        elif rejected == "static":
            spans.append(_span(a, b, k, times_s, ends_s, REJECTED, f"static: {span:.2f} s frozen lead-in"))
        elif span < cfg.min_clip_s:
            spans.append(_span(a, b, k, times_s, ends_s, REJECTED, f"too_short: {span:.2f} s < min_clip_s {cfg.min_clip_s}"))
        else:
            edges = _window_edges(a, b, times_s, ends_s, cfg.max_clip_s)
            for i, (pa, pb) in enumerate(zip(edges[:-1], edges[1:])):
                spans.append(_span(int(pa), int(pb), k if i == 0 else "window", times_s, ends_s, KEPT, None))
    return spans


def _window_edges(a: int, b: int, times_s: np.ndarray, ends_s: np.ndarray, max_s: float) -> list[int]:
    """Frame edges cutting [a, b) into near-equal durations of at most max_s (time-based, so VFR-safe)."""
    pieces = math.ceil((ends_s[b - 1] - times_s[a]) / max_s - 1e-9)
    while True:
        targets = times_s[a] + (ends_s[b - 1] - times_s[a]) * np.arange(1, pieces) / pieces
        edges = [a, *(np.searchsorted(times_s[a:b], targets - 1e-6) + a), b]  # first frame at or after each target
        lengths = [ends_s[q - 1] - times_s[p] for p, q in zip(edges[:-1], edges[1:]) if q > p]
        if max(lengths) <= max_s + 1e-6 or pieces >= b - a:
            return sorted(set(edges))
        pieces += 1


def _span(a: int, b: int, kind: str, times_s, ends_s, status: str, reason: str | None) -> dict:
    return {
        "start_frame": a,
        "end_frame": b,
        "start_s": round(float(times_s[a]), 3),
        "end_s": round(float(ends_s[b - 1]), 3),
        "cut_kind": kind,
        "status": status,
        "reason": reason,
    }


def clip_size(width: int, height: int, rotation: int, max_height: int) -> tuple[int, int]:
    """Output size after display rotation, scaled to at most max_height, even for yuv420p."""
    if rotation in (90, 270):
        width, height = height, width
    scale = min(1.0, max_height / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _upright(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    """Apply the display rotation to the pixels so trainers need no metadata to show it upright."""
    if rotation == 0:
        return frame
    rgb = np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")


class ClipEncoder:
    """One clip file being written: a private temp name first, renamed when complete. With an
    `audio` format it carries an AAC track too, given whole (`add_audio`) before the frames; the
    muxer interleaves it with the video as the frames come."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, cfg: SplitConfig, audio: AudioFormat | None = None):
        self.path = path
        self.tmp = private_part(path)
        # 0: the muxer waits for both streams before it writes, whatever their distance
        self.out = av.open(str(self.tmp), mode="w", format="mp4", options={"max_interleave_delta": "0"})
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(25)
        self.stream = self.out.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        extra = {"x264-params": cfg.clip_x264_params} if cfg.clip_x264_params else {}
        self.stream.options = {"crf": str(cfg.clip_crf), "preset": cfg.clip_preset, **extra}
        self.size = size
        self.time_base = 1 / rate
        self.count = 0
        self.audio = None
        if audio is not None:
            self.audio = self.out.add_stream("aac", rate=audio.rate, layout=audio.layout, options=AAC_OPTIONS)
            self.audio.bit_rate = cfg.audio_bitrate
        self.audio_format = audio

    def add_audio(self, samples: np.ndarray) -> None:
        """The clip's whole audio track, (channels, n) float32 samples from the clip's start."""
        self.out.mux(self.audio.encode(audio_frame(samples, self.audio_format)))

    def add(self, frame: av.VideoFrame) -> av.VideoFrame:
        """Encode the frame scaled to the clip's size; returns it as encoded."""
        frame = thread_scaler().reformat(frame, width=self.size[0], height=self.size[1], format="yuv420p")
        frame.pts = self.count
        frame.time_base = self.time_base
        self.count += 1
        self.out.mux(self.stream.encode(frame))
        return frame

    def close(self) -> str:
        self.out.mux(self.stream.encode(None))
        if self.audio is not None:
            self.out.mux(self.audio.encode(None))
        self.out.close()
        sha = file_sha256(self.tmp)  # these bytes, whatever another writer renames onto the path
        os.replace(self.tmp, self.path)
        return sha

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)


def extract_clips(
    path: str, spans: list[dict], media: ClipMedia, video: dict, cfg: SplitConfig, pts: np.ndarray, changes: np.ndarray
) -> None:
    """Cut every kept span of one video in a single decode pass, keeping the frames later stages
    sample and each frame's change score (`changes`, one per analysis frame: what ground refines
    event boundaries by); fills clip_uri/sha (and frames_uri) or failure.

    Frame i of the spans is the frame whose pts is pts[i] (the analysis pass's frames), so a
    frame either pass could not decode shifts nothing.
    """
    todo = sorted((s for s in spans if s["status"] == KEPT), key=lambda s: s["start_frame"])
    if not todo:
        return
    rotation = int(video.get("rotation") or 0)
    size = clip_size(video["width"], video["height"], rotation, cfg.clip_max_height)
    media.clips.mkdir(parents=True, exist_ok=True)
    current, encoder, keeper, cursor, source = 0, None, None, 0, None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = decode_threads()
            if cfg.audio and container.streams.audio and len(pts):
                source = _source_audio(path, float(int(pts[0]) * stream.time_base), todo)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                while cursor < len(pts) and pts[cursor] < frame.pts:
                    cursor += 1
                if cursor == len(pts) or pts[cursor] != frame.pts:
                    continue  # a frame the analysis pass never saw
                index, cursor = cursor, cursor + 1
                while current < len(todo) and index >= todo[current]["end_frame"]:  # its last frames never came
                    if encoder is None:
                        _no_frames(todo[current])
                    else:
                        _finish(todo[current], encoder, keeper, media)
                    encoder, current = None, current + 1
                if current == len(todo):
                    break
                span = todo[current]
                if index < span["start_frame"]:
                    continue
                if encoder is None:
                    encoder = _open_clip(span, media, size, video["fps"], cfg, source)
                    span_changes = changes[span["start_frame"] : span["end_frame"]]
                    keeper = FrameKeeper(span["end_frame"] - span["start_frame"], span["end_s"] - span["start_s"], media.needs, span_changes)
                keeper.offer(encoder.count, encoder.add(_upright(frame, rotation)))
                if index + 1 >= span["end_frame"]:
                    _finish(span, encoder, keeper, media)
                    encoder, current = None, current + 1
                    if current == len(todo):
                        break
        if encoder is not None:  # stream ended early: keep what was decoded
            _finish(todo[current], encoder, keeper, media)
            current += 1
    except Exception as exc:  # noqa: BLE001 - the remaining spans of this video fail with the cause
        if encoder is not None:
            encoder.abort()
        for span in todo[current:]:
            span.update(failed("extract", exc))
    finally:
        if source is not None:
            source.close()
    for span in todo[current:]:
        if span["status"] == KEPT:
            span.update(status=FAILED, reason="extract: stream ended before the clip's first frame")


def _source_audio(path: str, origin_s: float, spans: list[dict]) -> SourceAudio | None:
    """The video's audio track, read alongside its frames; one that cannot even be opened leaves
    every clip without audio, each row saying why."""
    try:
        return SourceAudio(path, origin_s)
    except Exception as exc:  # noqa: BLE001 - the video's clips are cut all the same
        for span in spans:
            span["audio_error"] = f"undecodable: {type(exc).__name__}: {exc}"
        return None


def _open_clip(span: dict, media: ClipMedia, size: tuple[int, int], fps: float, cfg: SplitConfig, source: SourceAudio | None) -> ClipEncoder:
    """The clip's encoder, given its span of the source's audio first; where the track stops
    decoding, the clip is cut without audio and its row says why (`audio_error`)."""
    samples = None
    if source is not None:
        try:
            samples = source.take(span["start_s"], span["end_s"])
        except AudioUndecodable as exc:
            span["audio_error"] = f"undecodable: {exc}"
    encoder = ClipEncoder(media.clips / f"{span['clip_id']}.mp4", size, fps, cfg, source.format if samples is not None else None)
    if samples is not None:
        encoder.add_audio(samples)
        span["clip_audio"] = "aac"
    return encoder


def _no_frames(span: dict) -> None:
    span.update(status=FAILED, reason="extract: none of the clip's frames decoded")


def _finish(span: dict, encoder: ClipEncoder, keeper: FrameKeeper, media: ClipMedia) -> None:
    span["clip_sha256"] = encoder.close()
    span["clip_uri"] = str(encoder.path)
    span["clip_width"], span["clip_height"] = encoder.size
    span["frames_uri"] = keeper.write(media.frames / f"{span['clip_id']}.npz", encoder.count, encoder.time_base)


def find_cuts(yuv: np.ndarray, cfg: SplitConfig) -> tuple[list[Cut], np.ndarray]:
    """The configured detector's cuts and the per-frame black mask."""
    if cfg.detector == "content":
        return detect_cuts(yuv, cfg.threshold, cfg.adaptive_ratio, cfg.window)
    from vidcurate.stages import transnet

    if cfg.detector == "transnetv2":
        return transnet.transnet_cuts(yuv, cfg.transnet_threshold, cfg.device)
    return transnet.combined_cuts(yuv, cfg)


def split_video(video: dict, media_dir: Path, cfg: SplitConfig, needs: tuple[FrameNeed, ...] = ()) -> list[dict]:
    """One kept video row -> its clip rows; a video-level error becomes one failed whole-video row.
    Clips go to `media_dir`/clips, the frames `needs` name to `media_dir`/frames."""
    media = ClipMedia(media_dir / "clips", media_dir / "frames", tuple(needs))
    base = {"video_id": video["video_id"], "source_uri": video["uri"], "stage": STAGE}
    try:
        with local_copy(video["uri"]) as path:
            frames = read_small_frames(path, cfg.analysis_width)
            cuts, black = find_cuts(frames.yuv, cfg)
            ends = frame_end_times(frames.times_s, video.get("duration_s"))
            frozen = static_lead_in(frames.yuv, black, cuts, frames.times_s, ends, cfg.static_lead_in_s)
            cuts = sorted([*cuts, frozen], key=lambda c: c.frame) if frozen else cuts
            spans = plan_spans(cuts, black, frames.times_s, ends, cfg)
            for span in spans:
                span.update(base, clip_id=clip_id(video["video_id"], span["start_s"], span["end_s"]))
            extract_clips(path, spans, media, video, cfg, frames.pts, frame_differences(frames.yuv))
        return spans
    except Exception as exc:  # noqa: BLE001 - recorded in the ledger, the run goes on
        end_s = float(video.get("duration_s") or 0.0)
        return [
            {
                **base,
                "clip_id": clip_id(video["video_id"], 0.0, end_s),
                "start_s": 0.0,
                "end_s": end_s,
                "start_frame": 0,
                "end_frame": int(video.get("n_frames") or 0),
                **failed("split", exc),
            }
        ]


def split_batch(batch: pa.Table, cfg: SplitConfig, media_dir: str, needs: tuple[FrameNeed, ...] = ()) -> pa.Table:
    """The stage core (a Ray task a batch): videos-table rows -> clips-table rows."""
    return to_table([clip for video in batch.to_pylist() for clip in split_video(video, Path(media_dir), cfg, needs)], CLIPS)


def frames_cut(done: pa.Table) -> dict:
    """What the marker adds: the frames this run's rows span (throughput in the log: frames/s)."""
    spans = pc.subtract(done.column("end_frame"), done.column("start_frame"))
    return {"frames": pc.sum(spans).as_py() or 0}


REASONS = {
    "black": (REJECTED, "black runs, lead-ins and fade gaps, cut out of the clips"),
    "static": (REJECTED, "a frozen start before the picture moves (`split.static_lead_in_s`)"),
    "too_short": (REJECTED, "a shot shorter than `split.min_clip_s` with `short_shots: drop`"),
    "split": (FAILED, "shot detection failed for the whole video"),
    "extract": (FAILED, "the clip's file could not be cut or encoded (a full disk: transient)"),
}

SPEC = Stage(
    name=STAGE,
    config_model=SplitConfig,
    table=CLIPS,
    reads="videos",
    columns=("video_id", "uri", "duration_s", "n_frames", "rotation", "width", "height", "fps"),
    always=True,
    reasons=REASONS,
    marker_fields={"frames": "sum"},
    measure=frames_cut,
    core=split_batch,
    arguments=lambda ctx: {"cfg": ctx.config, "media_dir": str(ctx.store.media), "needs": ctx.run.frame_needs},
    redo_unit="video_id",
)
