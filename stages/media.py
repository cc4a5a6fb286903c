"""Media access shared by stages: input listing, local copies of remote files, and a
downscaled frame reader that keeps the container's timestamps (correct for VFR).

PyAV is used for decoding because a broken file raises an exception instead of
taking the worker process down, and reading the Y/U/V planes with a stride is
about 1.8x faster here than asking any decoder for resized RGB frames.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import fsspec
import numpy as np
from av.video.reformatter import VideoReformatter

from vidcurate.stages.decoding import decode_frames

LIST_FILE_SUFFIXES = (".txt", ".lst")
# A folder with one of these names is listed as an input (and rejected as a folder), not only searched.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv", ".gif"}
PART_SUFFIX = ".part"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def list_inputs(spec: str) -> list[str]:
    """Expand an input spec (directory, glob, list file or remote prefix) into sorted URIs."""
    if is_remote(spec):
        fs, root = fsspec.core.url_to_fs(spec)
        protocol = spec.split("://", 1)[0]
        paths = fs.glob(root) if glob.has_magic(root) else fs.find(root)
        return sorted(f"{protocol}://{p}" for p in paths if not Path(p).name.startswith("."))
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if _an_input(p) and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if path.is_file() and path.suffix in LIST_FILE_SUFFIXES:
        lines = (line.strip() for line in path.read_text().splitlines())
        return sorted({line for line in lines if line and not line.startswith("#")})
    if path.is_file():
        return [str(path)]
    raise FileNotFoundError(f"input spec {spec!r} is not a directory, glob, list file or remote prefix")


def _an_input(path: Path) -> bool:
    """Every entry of an input folder that could be meant as a video ends in the ledger: files, links
    to nothing, and folders named like videos (probe rejects the last two, saying what they are)."""
    if path.is_symlink() and not path.exists():
        return True
    return path.is_file() or (path.is_dir() and path.suffix.lower() in VIDEO_SUFFIXES)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """Yield a local path for `uri`; remote objects are copied to a temp file and removed after."""
    if not is_remote(uri):
        yield uri.removeprefix("file://")
        return
    suffix = Path(uri).suffix
    fd, tmp = tempfile.mkstemp(prefix="vidcurate-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as dst, fsspec.open(uri, "rb") as src:
            shutil.copyfileobj(src, dst, length=8 << 20)
        yield tmp
    finally:
        os.unlink(tmp)


@dataclass(frozen=True)
class FrameBatch:
    """Downscaled frames of one video: planes stacked as (n, h, w, 3) Y/U/V uint8, times in seconds
    from the first frame, and each frame's pts (how a later decode pass finds frame i again)."""

    yuv: np.ndarray
    times_s: np.ndarray
    pts: np.ndarray


def rotation_of(frame: av.VideoFrame) -> int:
    """Display rotation in degrees (0/90/180/270) from the frame's display matrix."""
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def _plane(plane: av.video.plane.VideoPlane, rows: int, cols: int) -> np.ndarray:
    """A zero-copy view of one decoded plane (its rows are line_size apart, padding included)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols]


_scalers = threading.local()


def private_part(path: Path) -> Path:
    """The name a writer builds `path` under before renaming it into place, used by no other
    writer: a killed run's Ray workers outlive their driver (each has a process group of its
    own) and may still be writing the same file when the re-run starts."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}")


def sweep_parts(media_dir: Path) -> int:
    """Remove the unfinished files (`private_part`) that killed writers left under `media_dir`;
    call it only while none of this run's writers is at work. Returns how many went."""
    parts = list(Path(media_dir).rglob(f"*{PART_SUFFIX}")) if Path(media_dir).is_dir() else []
    for part in parts:
        part.unlink(missing_ok=True)
    return len(parts)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` where the file system allows one (shards are large),
    else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def thread_scaler() -> VideoReformatter:
    """This thread's swscale context, kept across frames: `frame.reformat` and
    `to_ndarray(width=...)` build one per call, and that set-up cost more than the scaling (half
    the time of a 720p frame). Per thread, since segments decode in threads of their own."""
    if not hasattr(_scalers, "scaler"):
        _scalers.scaler = VideoReformatter()
    return _scalers.scaler


def small_yuv(frame: av.VideoFrame, step: int) -> np.ndarray:
    """Subsample Y and chroma planes by striding views of the decoder's buffers: only the kept
    pixels are copied, far cheaper than a full swscale resize or a whole-frame copy."""
    h, w = frame.height, frame.width
    if frame.format.name not in ("yuv420p", "yuvj420p") or h % 2 or w % 2:
        small = thread_scaler().reformat(frame, width=max(w // step, 1), height=max(h // step, 1), format="yuv444p")
        return np.moveaxis(small.to_ndarray(), 0, -1)
    half = max(step // 2, 1)
    planes = frame.planes  # a new tuple on every access: read it once
    y = _plane(planes[0], h, w)[::step, ::step]
    u = _plane(planes[1], h // 2, w // 2)[::half, ::half]
    v = _plane(planes[2], h // 2, w // 2)[::half, ::half]
    rows, cols = min(y.shape[0], u.shape[0]), min(y.shape[1], u.shape[1])
    small = np.empty((rows, cols, 3), np.uint8)
    for channel, plane in enumerate((y, u, v)):
        small[..., channel] = plane[:rows, :cols]
    return small


def read_small_frames(path: str, analysis_width: int = 64) -> FrameBatch:
    """Decode every frame, downscaled to about `analysis_width` wide, with presentation times.

    Times come from each frame's pts relative to the first frame, so variable frame rate
    and streams that do not start at zero are handled.
    """
    decoded = decode_frames(path, lambda frame: small_yuv(frame, max(frame.width // analysis_width, 1)))
    if not decoded:
        raise ValueError("no decodable video frames")
    pts, times, frames = zip(*decoded)
    times_s = np.asarray(times, dtype=np.float64) - times[0]
    order = np.argsort(times_s, kind="stable")  # decoders emit in pts order; guard anyway
    return FrameBatch(np.stack(frames)[order], times_s[order], np.asarray(pts, dtype=np.int64)[order])


def pack_frames(frames) -> bytes:
    """Frames (n, h, w, 3) uint8 -> .npy bytes: how decoded frames travel from CPU decode tasks
    to model actors through Ray's object store."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.stack(list(frames))), allow_pickle=False)
    return buf.getvalue()


def unpack_frames(blob: bytes) -> np.ndarray:
    """A read-only view of the packed frames, not a copy: a batch of 360p keyframes is ~90 MB."""
    header = io.BytesIO(blob)
    version = np.lib.format.read_magic(header)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(header)
    frames = np.frombuffer(blob, dtype=dtype, offset=header.tell(), count=int(np.prod(shape)))
    return frames.reshape(shape, order="F" if fortran else "C")
