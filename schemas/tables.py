"""Arrow schemas of the stage tables: the contract between stages.

Every row carries `status` / `stage` / `reason` so the ledger can be built from the
tables alone: nothing a stage drops can disappear without a trace.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

STATUS_COLUMNS = ("status", "stage", "reason", "transient", "tries")
KEPT = "kept"
REJECTED = "rejected"
FAILED = "failed"
STATUSES = (KEPT, REJECTED, FAILED)

_STATUS_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("transient", pa.bool_()),  # failed rows: true when a later run may succeed (retried)
    pa.field("tries", pa.int32()),  # runs that attempted this row (null: 1)
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
        pa.field("frames_uri", pa.string()),  # the frames later stages sample, kept by extraction
        pa.field("clip_audio", pa.string()),  # the codec of the clip's audio track (aac); null: it has none
        pa.field("audio_error", pa.string()),  # why the source's audio could not be kept (it did not decode)
        *_STATUS_FIELDS,
    ]
)

SHARDED = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),  # the sample key: a clip's id or a window's
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("entity", pa.string()),  # clip | window
        pa.field("shard", pa.string()),
        *_STATUS_FIELDS,
    ]
)

LEDGER = pa.schema(
    [
        pa.field("entity", pa.string(), nullable=False),  # "video" | "clip" | "window"
        pa.field("id", pa.string(), nullable=False),  # input uri for videos, the sample key for clips and windows
        pa.field("video_id", pa.string()),
        *_STATUS_FIELDS,
    ]
)

def _clip_table(*fields: pa.Field) -> pa.Schema:
    """A clip-level stage table: its own columns between the clip key and the status fields."""
    key = [pa.field("clip_id", pa.string(), nullable=False), pa.field("video_id", pa.string(), nullable=False)]
    return pa.schema([*key, *fields, *_STATUS_FIELDS])


CAPTIONS = _clip_table(
    pa.field("caption", pa.string()),
    pa.field("events", pa.string()),  # JSON list of {start_s, end_s, text}, seconds from the clip start
    pa.field("frame_times", pa.list_(pa.float64())),
    pa.field("model", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("raw_answer", pa.string()),  # the model's last answer, kept for debugging failures
)

SPEECH = _clip_table(
    # JSON {"segments": [{start_s, end_s, text}], "words": [{start_s, end_s, word}], "language": str | null,
    # "no_speech": bool, "voice_activity": [{start_s, end_s}], "model": str}, seconds from the clip start
    pa.field("speech", pa.string()),
    pa.field("speech_model", pa.string()),
)

GROUNDED = _clip_table(
    pa.field("events", pa.string()),  # the caption's events refined and verified (JSON); later stages see these
    pa.field("qa", pa.string()),  # JSON list of QA items, spans relative to the clip start
    pa.field("dropped", pa.string()),  # JSON {task: items dropped under ground.min_verification}
    pa.field("interleaved", pa.string()),  # JSON list of {"frame": t} / {"text": ...} parts
)

EMBEDDED = _clip_table(
    pa.field("image_emb", pa.binary()),  # float16, L2-normalised mean of keyframe embeddings
    pa.field("text_emb", pa.binary()),  # float16, L2-normalised caption embedding (null without caption)
    pa.field("clip_score", pa.float64()),  # mean cosine(frame, caption)
    pa.field("span_frame_embs", pa.binary()),  # float16 (n, d), L2-normalised: frames at embed.span_fps
    pa.field("span_frame_times", pa.list_(pa.float64())),  # their times, seconds from the clip start
    pa.field("event_embs", pa.binary()),  # float16 (events, d), L2-normalised: each caption event's text
    pa.field("phash", pa.int64()),  # 64-bit DCT hash of the middle keyframe
    pa.field("embed_model", pa.string()),
)

DECONTAMINATED = _clip_table(
    pa.field("eval_set", pa.string()),  # a rejected clip's: the eval set it matched
    pa.field("eval_video", pa.string()),  # that set's video (its path in the set)
    pa.field("eval_time_s", pa.float64()),  # where in it: the closest frame's time, or the window's start
    pa.field("match_measure", pa.string()),  # what decided it: hamming (frame pHashes) | cosine (embeddings)
    pa.field("match_figure", pa.float64()),  # the deciding figure: the closest frame's bits, or the cosine
    pa.field("matched_frames", pa.int32()),  # pHash: the clip's frames that matched the video
    pa.field("qa", pa.string()),  # a kept clip's QA items less those dropped: replaces ground's for later stages
    pa.field("qa_dropped", pa.string()),  # JSON {eval set: QA items dropped}; null: none
)

SCORED = _clip_table(
    pa.field("scores", pa.string()),  # JSON {score name: value}
    pa.field("quality", pa.float64()),  # the combined score dedup uses to pick the copy to keep
    pa.field("speech_language", pa.string()),  # the language spoken in the clip (the speech stage's), for quality.languages
)

DEDUPED = _clip_table(
    pa.field("duplicate_of", pa.string()),
    pa.field("dup_kind", pa.string()),  # exact | near | semantic | shipped (seen in an earlier run)
    pa.field("dup_measure", pa.string()),  # what decided it: bytes (equal) | hamming (pHash bits) | cosine (embeddings)
    pa.field("dup_figure", pa.float64()),  # the deciding figure: Hamming bits or cosine (null for bytes)
)


def clip_id(video_id: str, start_s: float, end_s: float) -> str:
    """Deterministic clip key; no dots because WebDataset splits keys at the first dot."""
    return f"{video_id}_{round(start_s * 1000):09d}_{round(end_s * 1000):09d}"


def stable_int(key: str) -> int:
    """A 32-bit integer fixed by `key`: seeds and choices that must repeat on every re-run
    (Python's hash() is salted per process)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def empty_row(schema: pa.Schema) -> dict:
    return {name: None for name in schema.names}


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly the schema's columns (missing keys become nulls)."""
    return pa.Table.from_pylist([{**empty_row(schema), **r} for r in rows], schema=schema)
