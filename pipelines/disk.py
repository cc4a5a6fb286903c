"""The run directory's disk: how much a run will write, and one clear line when the disk fails.

A full disk (or a read-only file system, or an I/O error) is transient wherever it happens
(`stages.failures`): rows it failed are retried by the next run, and nothing half-written is left
where a later run could take it for complete (stage folders and files are written whole or not at
all, `pipelines.store`). The run stops at the first stage that met it, with `StorageFailed`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Measured on the sample job (sample.yaml, 240p clips, all stages): 12.3 MB written for 79.9 s of
# input video (clips, the frames later stages sample, window media, shards). Bytes grow with the
# clips' pixels: scaled by (clip_max_height / 240) ** 2.
BYTES_PER_VIDEO_HOUR_AT_240P = 560e6


def written_per_video_hour(cfg) -> float:
    """What a run of this config writes per hour of input video (an estimate; see above)."""
    return BYTES_PER_VIDEO_HOUR_AT_240P * (cfg.split.clip_max_height / 240) ** 2


def mount_of(path: Path) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def describe_space(path: Path) -> str:
    """'/mnt/data: 12.0 MiB free of 1.0 GiB' for the file system holding `path`."""
    mount = mount_of(path)
    usage = shutil.disk_usage(mount)
    return f"{mount}: {size_text(usage.free)} free of {size_text(usage.total)}"


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class StorageFailed(RuntimeError):
    """The machine's own storage failed under the run (full, read-only, I/O error). What was
    written is kept; rows it failed are transient failures the next run retries. One line."""

    transient = True

    @classmethod
    def of_rows(cls, stage: str, failures: list[dict], total: int, run_dir: Path, needed: float | None) -> StorageFailed:
        first = failures[0]["reason"]
        return cls(f"{stage}: {len(failures)} of {total} rows failed on local storage ({first}); {_space(run_dir, needed)}")

    @classmethod
    def of_error(cls, doing: str, error: OSError, run_dir: Path, needed: float | None) -> StorageFailed:
        where = error.filename or run_dir
        return cls(f"{doing}: {error.strerror or error}: {where}; {_space(Path(where), needed)}")


def _space(path: Path, needed: float | None) -> str:
    """Where the disk stands, what the run needs, and what to do."""
    need = f"; the whole run writes about {size_text(needed)}" if needed else ""
    return f"{describe_space(path)}{need}; free space and run the same command again (what failed is retried)"
