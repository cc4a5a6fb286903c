"""Reading published shards, for trainers and tools: local folders or any fsspec URL.

    from vidcurate.schemas.readers import open_shards, clip_frames
    for sample in open_shards("s3://bucket/dataset/"):
        meta = json.loads(sample["json"]); frames, times_s = clip_frames(sample["mp4"], 8)

Shards are untrusted: every sample passes `schemas.untrusted`'s checks before a reader yields
it; one that fails is left out and reported to `on_skip` (default: a warning line each).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import av
import fsspec
import numpy as np

from vidcurate.schemas.untrusted import Limits, Skipped, checked_samples, log_skipped

if TYPE_CHECKING:  # webdataset imports torch (1.5-2 s): only code that reads shards pays for it
    import webdataset as wds

INDEX = "index.json"
_FSSPEC_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "memory")


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_kw):
    fs, path = fsspec.core.url_to_fs(url)
    return fs.open(path, mode, block_size=max(bufsize, 8 << 20))


def register_fsspec_schemes() -> None:
    """Let webdataset stream object-store URLs through fsspec (credentials from the usual places)."""
    import webdataset.gopen  # noqa: F401 - registers the module under its name

    schemes = sys.modules["webdataset.gopen"].gopen_schemes  # the module; the package re-exports a function
    for scheme in _FSSPEC_SCHEMES:
        schemes[scheme] = _gopen_fsspec


def shard_urls(location: str) -> list[str]:
    """Shard URLs of a dataset: a .tar itself, or a folder/URL holding index.json (else *.tar)."""
    if location.endswith(".tar"):
        return [location]
    base = location.rstrip("/")
    fs, root = fsspec.core.url_to_fs(base)
    protocol = "" if "://" not in base else base.split("://", 1)[0] + "://"
    if fs.exists(f"{root}/{INDEX}"):
        with fs.open(f"{root}/{INDEX}") as f:
            index = json.load(f)
        try:
            return [f"{base}/{_inside_dataset(s['url'])}" for s in index["shardlist"]]
        except (KeyError, TypeError):
            raise ValueError(f"{INDEX} at {location} is not a shard index (a `shardlist` of {{url: ...}})") from None
    urls = sorted(protocol + p for p in fs.glob(f"{root}/*.tar"))
    if not urls:
        raise FileNotFoundError(f"no {INDEX} and no .tar shards at {location}")
    return urls


def _inside_dataset(url: object) -> str:
    """An index entry's shard path, refused unless it stays inside the dataset folder (the index
    is as untrusted as the shards it names)."""
    path = PurePosixPath(url) if isinstance(url, str) else None
    if path is None or path.is_absolute() or ".." in path.parts or "://" in url or "\\" in url or not path.parts:
        raise ValueError(f"{INDEX} names a shard outside its dataset: {url!r}")
    return url


def signed_shard_urls(location: str, expires_s: int = 24 * 3600) -> list[str]:
    """Shard URLs as pre-signed HTTPS links (object stores) for readers that speak only HTTP.

    HF `datasets` 5.2 streams `s3://` URLs by handing `block_size` to s3fs's constructor,
    which rejects it; signed HTTP(S) URLs stream fine and need no credentials on the reader.
    """
    urls = []
    for url in shard_urls(location):
        fs, path = fsspec.core.url_to_fs(url)
        urls.append(fs.sign(path, expiration=expires_s) if "://" in url else url)
    return urls


def open_shards(location: str, *, limits: Limits = Limits(), on_skip: Callable[[Skipped], None] = log_skipped, **kwargs) -> wds.WebDataset:
    """A WebDataset over every shard at `location`, in index order unless kwargs say otherwise
    (webdataset's own: shardshuffle, workersplitter, resampled, handler, ...), whose samples
    passed every check of `schemas.untrusted`; each one left out goes to `on_skip`."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    if {"select_files", "rename_files"} & kwargs.keys():
        raise TypeError("open_shards reads every member through its checks: select_files/rename_files are not taken")
    register_fsspec_schemes()
    kwargs.setdefault("shardshuffle", False)
    dataset = wds.WebDataset(shard_urls(location), **kwargs)
    # webdataset's tar expander and grouper read members unchecked: one checked stage replaces both
    stages = [getattr(stage, "f", None) for stage in dataset.pipeline]
    at = stages.index(tar_file_expander) if tar_file_expander in stages else -1
    if at < 0 or stages[at + 1 : at + 2] != [group_by_keys]:
        raise RuntimeError(f"webdataset {wds.__version__} builds its pipeline differently: open_shards cannot check its samples")
    checked = wds.filters.pipelinefilter(checked_samples)
    dataset.pipeline[at : at + 2] = [checked(limits=limits, on_skip=on_skip, handler=kwargs.get("handler", wds.reraise_exception))]
    return dataset


def decode_pts(container, stream, wanted: set[int]) -> Iterator[av.VideoFrame]:
    """The frames whose pts are in `wanted`, from the container's current position. Non-reference
    frames outside it are not decoded (no frame is predicted from them); stops once every wanted
    frame came."""
    missing = set(wanted)
    for packet in container.demux(stream):
        stream.codec_context.skip_frame = "DEFAULT" if packet.pts in wanted or not packet.size else "NONREF"
        for frame in stream.decode(packet):
            if frame.pts in missing:
                missing.discard(frame.pts)
                yield frame
        if not missing:
            return


def scaled_size(width: int, height: int, short_side: int | None) -> dict:
    """PyAV reformat arguments that bring the short side down to `short_side`; none to keep it."""
    scale = short_side / min(width, height) if short_side else 1
    if scale >= 1:
        return {}
    return {"width": max(short_side, round(width * scale)), "height": max(short_side, round(height * scale)), "interpolation": "BICUBIC"}


def evenly_spaced(n: int, count: int) -> list[int]:
    """`count` evenly spaced positions out of n, first and last included (fewer when n is smaller):
    the frames every reader of a clip samples."""
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n)).round()}) if n else []


def clip_frames(mp4: bytes, count: int, short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`count` evenly spaced RGB frames of a clip, (n, h, w, 3) uint8, and their times in seconds
    from the clip start: the same clock as the spans in the sample's json. With `short_side`,
    larger frames are scaled down (bicubic, during the YUV to RGB conversion) to that short side.

    Frame i is the i-th in presentation order (packet pts, known without decoding); frames no
    pick depends on are not decoded (non-reference frames skipped), and decoding stops after
    the last pick.
    """
    with av.open(io.BytesIO(mp4)) as container:
        order = [packet.pts for packet in container.demux(video=0) if packet.size]
    by_pts = None not in order and len(set(order)) == len(order)
    order = sorted(order) if by_pts else list(range(len(order)))
    wanted = {order[i] for i in evenly_spaced(len(order), count)}
    frames, times = [], []
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if by_pts:
            picked = decode_pts(container, stream, wanted)
        else:  # no usable pts: count decoded frames
            picked = (f for i, f in enumerate(container.decode(stream)) if i in wanted)
        for frame in picked:
            frames.append(frame.to_ndarray(format="rgb24", **scaled_size(frame.width, frame.height, short_side)))
            times.append(float(frame.time))
            if len(frames) == len(wanted):
                break
    return np.stack(frames), np.asarray(times)


def training_samples(
    location: str, frames: int = 8, *, limits: Limits = Limits(), on_skip: Callable[[Skipped], None] = log_skipped, **kwargs
) -> Iterator[dict]:
    """What a trainer consumes: per sample its key, `frames` RGB frames, their times (seconds
    from the clip start, the clock of every span in the annotation) and the annotation. Samples
    `open_shards` leaves out, and those whose mp4 does not decode, go to `on_skip`."""
    for sample in open_shards(location, limits=limits, on_skip=on_skip, **kwargs):
        try:
            pixels, times_s = clip_frames(sample["mp4"], frames)
        except (av.FFmpegError, ValueError, IndexError) as exc:  # no video stream, no frame, bad data
            on_skip(Skipped(sample["__url__"], sample["__key__"], "undecodable", f"{type(exc).__name__}: {exc}"[:300]))
            continue
        yield {"key": sample["__key__"], "frames": pixels, "times_s": times_s, "meta": json.loads(sample["json"])}
