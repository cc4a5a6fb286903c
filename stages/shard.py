"""Shard stage: kept clips -> WebDataset tars (`<prefix>-%06d.tar`), written whole or not at all.

The runner writes into a temporary stage directory and publishes it only when every shard
is closed, so a crash never leaves a half shard where a trainer could read it. Tar headers
carry a fixed mtime, so the same clips give byte-identical shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import fsspec
import webdataset as wds

from pipelines.config import ShardConfig
from schemas.sample import build_sample
from schemas.tables import FAILED, KEPT

STAGE = "shard"


def write_shards(clips: Iterable[dict], videos: dict[str, dict], out_dir: Path, cfg: ShardConfig) -> tuple[list[dict], list[dict]]:
    """Write kept clips in the given order; returns (per-clip rows, shard manifest)."""
    rows: list[dict] = []
    counts: dict[str, int] = {}
    pattern = str(out_dir / f"{cfg.prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=cfg.maxcount, maxsize=cfg.maxsize, verbose=0, mtime=0.0) as sink:
        for clip in clips:
            row = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE}
            try:
                sample = build_sample(clip, videos[clip["video_id"]])
                with fsspec.open(clip["clip_uri"], "rb") as f:
                    media = f.read()
                sink.write({"__key__": clip["clip_id"], "mp4": media, "json": json.dumps(sample, sort_keys=True).encode()})
            except Exception as exc:  # noqa: BLE001 - one bad clip must not sink the shard set
                rows.append({**row, "status": FAILED, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            shard = os.path.basename(sink.fname)
            counts[shard] = counts.get(shard, 0) + 1
            rows.append({**row, "status": KEPT, "reason": None, "shard": shard})
    return rows, [{"name": name, "samples": n, "bytes": (out_dir / name).stat().st_size} for name, n in sorted(counts.items())]
