"""Window media: a window's own mp4, its clips' frames in order, encoded like a clip.

Trainers decode the whole file a record names (none of their training loaders reads a start
or end time), so a window's spans must be times in a file that *is* the window. The clips of a
window are contiguous, so their frames in order are exactly the source frames of the window;
a window whose frame count does not match its span fails rather than ship shifted labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import av
import fsspec
import pyarrow as pa

from vidcurate.stages.failures import failed
from vidcurate.stages.split import ClipEncoder

if TYPE_CHECKING:
    from vidcurate.stages.split import SplitConfig


def cut_window(window_id: str, clip_uris: list[str], frames: int, fps: float, out_dir: Path, cfg: SplitConfig) -> dict:
    """Write `<out_dir>/<window_id>.mp4`; returns its uri, sha256 and size."""
    path = Path(out_dir) / f"{window_id}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = None
    try:
        for uri in clip_uris:
            with fsspec.open(uri, "rb") as f, av.open(f) as container:
                for frame in container.decode(video=0):
                    if encoder is None:
                        encoder = ClipEncoder(path, (frame.width, frame.height), fps, cfg)
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


def cut_windows_batch(batch: pa.Table, cfg: SplitConfig, media_dir: str) -> pa.Table:
    """Ray Data adapter: {window_id, clip_uris, frames, fps} rows -> media rows or the error."""
    rows = []
    for w in batch.to_pylist():
        try:
            media = cut_window(w["window_id"], w["clip_uris"], w["frames"], w["fps"], Path(media_dir), cfg)
            rows.append({"window_id": w["window_id"], **media, "error": None})
        except Exception as exc:  # noqa: BLE001 - one window fails alone, with its reason
            rows.append({"window_id": w["window_id"], "error": failed("window", exc)["reason"]})
    return pa.Table.from_pylist(rows, schema=WINDOW_MEDIA)


WINDOW_MEDIA = pa.schema(
    [
        pa.field("window_id", pa.string()),
        pa.field("media_uri", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("error", pa.string()),
    ]
)
