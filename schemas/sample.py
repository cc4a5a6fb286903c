"""The shard sample's `json` member: versioned JSON schema and the builders trainers rely on.

A sample is a clip (one shot) or a window (a run of contiguous shipped clips of one video, for
video-level grounding); each carries its own `mp4`. Times inside a sample are seconds from the
start of that sample's own media; absolute source times live only under `provenance`, so the
two can never be mixed up silently.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pyarrow as pa

SCHEMA_VERSION = "1.4.0"  # 1.1: optional caption, grounding and scores; 1.2: kind, window samples; 1.3: TimePro's tasks, null verification, refined events; 1.4: interleaved documents
TASKS = (  # the `task` of a QA item: TimePro's nine (TimeSuite / VideoChat-T), then the project's own
    "temporal_video_grounding",
    "dense_video_captioning",
    "video_summarization",
    "step_localization",
    "transcribed_speech_generation",
    "reasoning_temporal_localization",
    "multi_format_temporal_grounding",
    "highlight_detection",
    "temporal_grounded_caption",
    "temporal_ordering",
    "multiple_choice",
)
LEGACY_TASKS = {  # 1.2.0's task names -> 1.3.0's and later (readers of old shards map them)
    "temporal_grounding": "temporal_video_grounding",
    "moment_localisation": "temporal_video_grounding",
    "dense_captioning": "dense_video_captioning",
    "summarisation": "video_summarization",
    "grounded_caption": "multi_format_temporal_grounding",
}
KEY_PATTERN = r"^[0-9a-f]+_w?\d+_\d+$"  # a sample key: <video_id>_<start_ms>_<end_ms>, windows <video_id>_w<start_ms>_<end_ms>
# How QA text names its times: {spanK} a span, {startK} / {endK} one of its ends (K: the item's span index)
TIME_REF = re.compile(r"\{(span|start|end)(\d+)\}")

_SPAN_S = {"type": "number", "minimum": 0}
_SCORE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_EVENT_1_2 = {
    "type": "object",
    "required": ["start_s", "end_s", "text"],
    "properties": {"start_s": _SPAN_S, "end_s": _SPAN_S, "text": {"type": "string", "minLength": 1}},
}
_EVENT = {  # 1.3: where ground refined it, where the captioner put its boundaries, and its verification
    **_EVENT_1_2,
    "properties": {**_EVENT_1_2["properties"], "coarse_start_s": _SPAN_S, "coarse_end_s": _SPAN_S, "verification": _SCORE},
}
_WORD = {
    "type": "object",
    "required": ["start_s", "end_s", "word"],
    "properties": {"start_s": _SPAN_S, "end_s": _SPAN_S, "word": {"type": "string", "minLength": 1}},
}
SPEECH = {
    "type": "object",
    "description": "what is said in the sample's audio track, times in its mp4 (the speech stage)",
    "required": ["segments", "words", "language", "no_speech"],
    "properties": {
        "segments": {"type": "array", "items": _EVENT_1_2},
        "words": {"type": "array", "items": _WORD},
        "language": {"type": ["string", "null"], "description": "the spoken language's code (en, de, ...); null: no speech"},
        "no_speech": {"type": "boolean", "description": "true: no track, no voice, or no word recognised"},
        "voice_activity": {"type": "array", "items": {"type": "object", "required": ["start_s", "end_s"], "properties": {"start_s": _SPAN_S, "end_s": _SPAN_S}}},
        "model": {"type": "string"},
    },
}
QA_ITEM_1_2 = {
    "type": "object",
    "required": ["task", "question", "answer", "spans", "verification"],
    "properties": {
        "task": {"type": "string"},
        "question": {"type": "string", "minLength": 1},
        "answer": {"type": "string", "minLength": 1},
        "spans": {"type": "array", "items": {"type": "array", "prefixItems": [_SPAN_S, _SPAN_S], "minItems": 2, "maxItems": 2}},
        "options": {"type": "array", "items": {"type": "string"}},
        "saliency": {"type": "array", "items": {"type": "number"}},
        "generator": {"enum": ["template", "llm"]},
        "verification": {"type": "number", "minimum": 0, "maximum": 1},
    },
}
QA_ITEM = {
    **QA_ITEM_1_2,
    "properties": {
        **QA_ITEM_1_2["properties"],
        "task": {"enum": list(TASKS)},
        "verification": {**_SCORE, "description": "the embed model's evidence for its events' spans (null: embed did not run)"},
        "events": {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": "the caption events it is about"},
        "negative": {"type": "boolean", "description": "its query is from another video: the answer is that it does not happen"},
    },
}


def _sample_schema(version: str, event: dict, qa_item: dict, grounding: dict) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"vidcurate/sample/{version}",
        "type": "object",
        "required": ["schema_version", "kind", "clip_id", "video_id", "duration_s", "media", "provenance", "ledger"],
        "additionalProperties": False,
        "properties": {
            "schema_version": {"const": version},
            "kind": {"enum": ["clip", "window"]},
            "clip_id": {"type": "string", "pattern": KEY_PATTERN, "description": "the sample key"},
            "clips": {
                "type": "array",
                "description": "windows: the clip samples a window is made of, with their start in the window",
                "items": {"type": "object", "required": ["key", "offset_s"], "properties": {"key": {"type": "string"}, "offset_s": _SPAN_S}},
            },
            "video_id": {"type": "string", "pattern": r"^[0-9a-f]+$"},
            "duration_s": {"type": "number", "exclusiveMinimum": 0},
            "media": {
                "type": "object",
                "required": ["width", "height", "fps", "sha256"],
                "properties": {
                    "width": {"type": "integer", "minimum": 1},
                    "height": {"type": "integer", "minimum": 1},
                    "fps": {"type": "number", "exclusiveMinimum": 0},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
            "provenance": {
                "type": "object",
                "required": ["source_uri", "source_start_s", "source_end_s", "start_frame", "end_frame", "cut_kind"],
                "properties": {
                    "source_uri": {"type": "string"},
                    "source_start_s": _SPAN_S,
                    "source_end_s": _SPAN_S,
                    "start_frame": {"type": "integer", "minimum": 0},
                    "end_frame": {"type": "integer", "minimum": 1},
                    "cut_kind": {"type": "string"},
                    "source": {"type": "object"},
                },
            },
            "caption": {
                "type": "object",
                "required": ["text", "events", "model", "frame_times"],
                "properties": {
                    "text": {"type": "string"},
                    "events": {"type": "array", "items": event},
                    "model": {"type": "string"},
                    "frame_times": {"type": "array", "items": _SPAN_S},
                },
            },
            "grounding": grounding,
            "scores": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
            "speech": SPEECH,
            "ledger": {
                "type": "array",
                "description": "each stage's decision on this clip, in order",
                "items": {
                    "type": "object",
                    "required": ["stage", "status"],
                    "properties": {"stage": {"type": "string"}, "status": {"const": "kept"}},
                },
            },
        },
    }


_GROUNDING_1_2 = {
    "type": "object",
    "required": ["qa", "interleaved"],
    "properties": {"qa": {"type": "array", "items": QA_ITEM_1_2}, "interleaved": {"type": "array"}},
}
_GROUNDING_1_3 = {
    **_GROUNDING_1_2,
    "properties": {
        "qa": {"type": "array", "items": QA_ITEM},
        "interleaved": {"type": "array", "description": "frame ({type: frame, t}) and text parts of the clip, in time order"},
        "dropped": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "items left out by task: their verification was under ground.min_verification",
        },
    },
}
# 1.4: interleaved documents. Media are named by sample key, never copied: an image part is the frame
# at `t` of that sample's mp4; a video part is that whole mp4 (its `t`: the keyframe that stands
# for it where a consumer takes images). Text names its times as QA text does ({spanK}, ...).
_KEY = {"type": "string", "pattern": KEY_PATTERN, "maxLength": 128}
_SIMILARITY = {"type": ["number", "null"], "minimum": -1, "maximum": 1}
MEDIA_PART = {
    "type": "object",
    "required": ["type", "key", "t", "similarity"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["image", "video"]},
        "key": _KEY,
        "t": {"type": "number", "minimum": 0, "maximum": 86400},
        "similarity": {**_SIMILARITY, "description": "the embed model's cosine between this frame and the text after it (null: embed did not run)"},
    },
}
TEXT_PART = {
    "type": "object",
    "required": ["type", "text", "spans"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "text"},
        "text": {"type": "string", "minLength": 1},
        "spans": QA_ITEM_1_2["properties"]["spans"],
        "role": {"enum": ["question", "answer"], "description": "in-context examples: what a conversation asks and answers"},
    },
}
_COUNT = {"type": "integer", "minimum": 0}
DOCUMENT = {
    "type": "object",
    "required": ["kind", "parts", "pairs"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["events", "window", "in_context"]},
        "parts": {"type": "array", "items": {"oneOf": [MEDIA_PART, TEXT_PART]}},
        "pairs": {
            "type": "object",
            "required": ["scored", "dropped"],
            "properties": {"scored": _COUNT, "dropped": _COUNT},
            "description": "(media, text) pairs the embed model scored, and those dropped under ground.min_pair_similarity",
        },
        "similarity_matrix": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}},
            "description": "the cosine of every media part (rows) with every text part (columns), in order (MMC4's); absent where any is unknown",
        },
        "neighbours": {
            "type": "array",
            "items": {"type": "object", "required": ["key", "similarity"], "properties": {"key": _KEY, "similarity": {"type": "number"}}},
            "description": "in_context: the shipped clips shown as examples, nearest first, with their embedding cosine",
        },
        "item": {**_COUNT, "description": "in_context: the sample's own QA item whose question closes the document"},
    },
}
_GROUNDING = {
    **_GROUNDING_1_3,
    "properties": {
        **_GROUNDING_1_3["properties"],
        "interleaved": {"type": "array", "items": DOCUMENT},
        "decontaminated": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "items decontam left out, by eval set: their question shares decontam.ngram words in a row with one of the set's",
        },
    },
}
SAMPLE_SCHEMA = _sample_schema(SCHEMA_VERSION, _EVENT, QA_ITEM, _GROUNDING)
SAMPLE_SCHEMA_1_3 = _sample_schema("1.3.0", _EVENT, QA_ITEM, _GROUNDING_1_3)
SAMPLE_SCHEMA_1_2 = _sample_schema("1.2.0", _EVENT_1_2, QA_ITEM_1_2, _GROUNDING_1_2)

_VALIDATOR = jsonschema.Draft202012Validator(SAMPLE_SCHEMA)
_VALIDATOR_1_3 = jsonschema.Draft202012Validator(SAMPLE_SCHEMA_1_3)
_VALIDATOR_1_2 = jsonschema.Draft202012Validator(SAMPLE_SCHEMA_1_2)

SOURCE_FIELDS = ("duration_s", "fps", "width", "height", "codec", "container", "rotation")


def build_sample(clip: dict, video: dict, stages: list[str] | tuple[str, ...] = ("probe", "split")) -> dict:
    """Annotation for one kept clip (its merged stage row), validated against SAMPLE_SCHEMA."""
    sample = {
        "schema_version": SCHEMA_VERSION,
        "kind": "clip",
        "clip_id": clip["clip_id"],
        "video_id": clip["video_id"],
        "duration_s": round(clip["end_s"] - clip["start_s"], 3),
        "media": {
            "width": clip["clip_width"],
            "height": clip["clip_height"],
            "fps": video["fps"],
            "sha256": clip["clip_sha256"],
        },
        "provenance": {
            "source_uri": clip["source_uri"],
            "source_start_s": clip["start_s"],
            "source_end_s": clip["end_s"],
            "start_frame": clip["start_frame"],
            "end_frame": clip["end_frame"],
            "cut_kind": clip["cut_kind"],
            "source": {k: video[k] for k in SOURCE_FIELDS},
        },
        "ledger": [{"stage": stage, "status": "kept"} for stage in stages],
    }
    if clip.get("caption") is not None:
        sample["caption"] = {
            "text": clip["caption"],
            "events": json.loads(clip["events"]),
            "model": clip["model"],
            "frame_times": clip["frame_times"],
        }
    if clip.get("qa") is not None:
        sample["grounding"] = _grounding(
            json.loads(clip["qa"]), json.loads(clip["interleaved"]), json.loads(clip.get("dropped") or "{}"), json.loads(clip.get("qa_dropped") or "{}")
        )
    if clip.get("scores") is not None:
        sample["scores"] = json.loads(clip["scores"])
    if clip.get("speech") is not None:
        sample["speech"] = json.loads(clip["speech"])
    validate_sample(sample)
    return sample


def build_window_sample(window: dict, media: dict, video: dict, stages: list[str] | tuple[str, ...]) -> dict:
    """Annotation for one window (`stages.ground.windows`) whose own mp4 is `media`
    (width, height, sha256): its events and QA spans are already relative to the window start."""
    sample = {
        "schema_version": SCHEMA_VERSION,
        "kind": "window",
        "clip_id": window["window_id"],
        "video_id": window["video_id"],
        "duration_s": window["duration_s"],
        "clips": window["clips"],
        "media": {"width": media["width"], "height": media["height"], "fps": video["fps"], "sha256": media["sha256"]},
        "provenance": {
            "source_uri": window["source_uri"],
            "source_start_s": window["source_start_s"],
            "source_end_s": window["source_end_s"],
            "start_frame": window["start_frame"],
            "end_frame": window["end_frame"],
            "cut_kind": "window",
            "source": {k: video[k] for k in SOURCE_FIELDS},
        },
        "caption": {"text": window["caption"], "events": window["events"], "model": window["model"], "frame_times": []},
        "grounding": _grounding(window["qa"], window.get("interleaved") or [], window.get("dropped") or {}, window.get("qa_dropped") or {}),
        "ledger": [{"stage": stage, "status": "kept"} for stage in stages],
    }
    if window.get("speech") is not None:
        sample["speech"] = window["speech"]
    validate_sample(sample)
    return sample


def _grounding(qa: list[dict], interleaved: list, dropped: dict[str, int], decontaminated: dict[str, int]) -> dict:
    return {"qa": qa, "interleaved": interleaved, **({"dropped": dropped} if dropped else {}), **({"decontaminated": decontaminated} if decontaminated else {})}


def validate_sample(sample: dict) -> None:
    """Raise ValueError naming the first violation, for writers and for readers of old shards:
    the schema, that QA text names only spans its item has and events the sample has, and that
    every document's text names only its own spans, its similarity matrix has a row per media
    part and a column per text part, and an in-context document closes with an item the sample has."""
    _validate(_VALIDATOR, sample, SCHEMA_VERSION)
    _check_items(sample)
    qa = len((sample.get("grounding") or {}).get("qa", []))
    for d, document in enumerate((sample.get("grounding") or {}).get("interleaved", [])):
        where = f"sample {sample.get('clip_id')!r}: grounding/interleaved/{d}"
        texts = [part for part in document["parts"] if part["type"] == "text"]
        for part in texts:
            if any(int(k) >= len(part["spans"]) for _, k in TIME_REF.findall(part["text"])):
                raise ValueError(f"{where} has a text naming a time of a span it lacks: {part['text'][:80]!r}")
        matrix = document.get("similarity_matrix")
        if matrix is not None and (len(matrix) != len(document["parts"]) - len(texts) or any(len(row) != len(texts) for row in matrix)):
            raise ValueError(f"{where}: the similarity matrix is not media parts x text parts")
        if document["kind"] == "in_context" and document.get("item", qa) >= qa:
            raise ValueError(f"{where} closes with QA item {document.get('item')} of {qa}")


def validate_sample_1_3(sample: dict) -> None:
    """Shards written before 1.4.0 (interleaved: a clip's frame and text parts)."""
    _validate(_VALIDATOR_1_3, sample, "1.3.0")
    _check_items(sample)


def _check_items(sample: dict) -> None:
    events = len((sample.get("caption") or {}).get("events", []))
    for i, item in enumerate((sample.get("grounding") or {}).get("qa", [])):
        for _, k in TIME_REF.findall(item["question"] + item["answer"]):
            if int(k) >= len(item["spans"]):
                raise ValueError(f"sample {sample.get('clip_id')!r}: grounding/qa/{i} names a time of span {k} but has {len(item['spans'])} spans")
        if any(e >= events for e in item.get("events", [])):
            raise ValueError(f"sample {sample.get('clip_id')!r}: grounding/qa/{i} is about events {item['events']} of {events}")


def validate_sample_1_2(sample: dict) -> None:
    """Shards written before 1.3.0 (their task names: LEGACY_TASKS)."""
    _validate(_VALIDATOR_1_2, sample, "1.2.0")


def _validate(validator, sample: dict, version: str) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(sample))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "<root>"
        raise ValueError(f"sample {sample.get('clip_id')!r} violates schema {version} at {where}: {error.message}")


VALIDATORS = {SCHEMA_VERSION: validate_sample, "1.3.0": validate_sample_1_3, "1.2.0": validate_sample_1_2}  # what readers accept, by schema_version


# Per-shard Parquet sidecar: the sample json's fields, flat, so a trainer or a curator can
# filter (duration, size, source) without opening any tar; `offset` is the position in its shard.
SIDECAR = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("offset", pa.int32(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("source_uri", pa.string()),
        pa.field("source_start_s", pa.float64()),
        pa.field("source_end_s", pa.float64()),
        pa.field("cut_kind", pa.string()),
        pa.field("schema_version", pa.string()),
        pa.field("json", pa.string()),  # the whole annotation, for fields not flattened here
    ]
)


def sidecar_row(sample: dict, shard: str, offset: int) -> dict:
    media, prov = sample["media"], sample["provenance"]
    return {
        "key": sample["clip_id"],
        "shard": shard,
        "offset": offset,
        "video_id": sample["video_id"],
        "duration_s": sample["duration_s"],
        "width": media["width"],
        "height": media["height"],
        "fps": media["fps"],
        "source_uri": prov["source_uri"],
        "source_start_s": prov["source_start_s"],
        "source_end_s": prov["source_end_s"],
        "cut_kind": prov["cut_kind"],
        "schema_version": sample["schema_version"],
        "json": json.dumps(sample, sort_keys=True),
    }
