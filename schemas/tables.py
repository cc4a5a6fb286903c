"""Arrow schemas of the stage tables: the contract between stages.

Every row carries `status` / `stage` / `reason` so the ledger can be built from the
tables alone: nothing a stage drops can disappear without a trace.
"""

from __future__ import annotations

import pyarrow as pa

KEPT = "kept"
REJECTED = "rejected"
FAILED = "failed"
STATUSES = (KEPT, REJECTED, FAILED)

_STATUS_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
]

VIDEOS = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("video_id", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("n_frames", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("container", pa.string()),
        pa.field("rotation", pa.int32()),
        pa.field("has_audio", pa.bool_()),
        *_STATUS_FIELDS,
    ]
)

CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("cut_kind", pa.string()),
        pa.field("clip_uri", pa.string()),
        pa.field("clip_width", pa.int32()),
        pa.field("clip_height", pa.int32()),
        pa.field("clip_sha256", pa.string()),
        *_STATUS_FIELDS,
    ]
)

SHARDED = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("shard", pa.string()),
        *_STATUS_FIELDS,
    ]
)

LEDGER = pa.schema(
    [
        pa.field("entity", pa.string(), nullable=False),  # "video" | "clip"
        pa.field("id", pa.string(), nullable=False),  # input uri for videos, clip_id for clips
        pa.field("video_id", pa.string()),
        *_STATUS_FIELDS,
    ]
)

TABLES = {"probe": VIDEOS, "split": CLIPS, "shard": SHARDED}


def clip_id(video_id: str, start_s: float, end_s: float) -> str:
    """Deterministic clip key; no dots because WebDataset splits keys at the first dot."""
    return f"{video_id}_{round(start_s * 1000):09d}_{round(end_s * 1000):09d}"


def empty_row(schema: pa.Schema) -> dict:
    return {name: None for name in schema.names}


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly the schema's columns (missing keys become nulls)."""
    return pa.Table.from_pylist([{**empty_row(schema), **r} for r in rows], schema=schema)
