"""The captioner's answer: its grammar, strict parsing, and event clean-up.

One regular expression describes every answer we accept. vLLM (offline or served) enforces it
with structured outputs, the transformers backend through llguidance (`stages.grammar`), and
servers that take OpenAI's `response_format` get it as a JSON schema built from the same inputs;
any backend's answer is then parsed strictly against a JSON schema. Event times may only be the
sampled frame times or the clip's end: those are the moments the model saw, so a boundary
elsewhere would be a guess.
"""

from __future__ import annotations

import json
import re

import jsonschema
from ftfy import fix_text

TEXT_CHARS = r"[A-Za-z0-9 ,.;:'()!?-]"

ANSWER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["caption", "events"],
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["start_s", "end_s", "text"],
                "properties": {
                    "start_s": {"type": "number", "minimum": 0},
                    "end_s": {"type": "number", "minimum": 0},
                    "text": {"type": "string", "minLength": 1},
                },
            },
        },
    },
}


class InvalidAnswer(ValueError):
    """The model's answer is not a valid caption; the message says why."""


def time_choices(frame_times: list[float], duration_s: float) -> list[str]:
    return sorted({f"{t:.2f}" for t in [*frame_times, duration_s]}, key=float)


def answer_regex(frame_times: list[float], duration_s: float, max_events: int, max_chars: int = 200) -> str:
    """The exact shape of an acceptable answer, as a regex every backend can enforce."""
    time = "(" + "|".join(re.escape(t) for t in time_choices(frame_times, duration_s)) + ")"
    text = f"{TEXT_CHARS}{{1,{max_chars}}}"
    event = rf'\{{"start_s": {time}, "end_s": {time}, "text": "{text}"\}}'
    events = rf"({event}(, {event}){{0,{max_events - 1}}})?" if max_events > 0 else ""
    return rf'\{{"caption": "{text}", "events": \[{events}\]\}}'


def answer_schema(frame_times: list[float], duration_s: float, max_events: int, max_chars: int = 200) -> dict:
    """answer_regex as a JSON schema, for servers that take OpenAI's `response_format` (hosted
    APIs, llama.cpp, SGLang): the same fields, times limited to the same choices."""
    times = [float(t) for t in time_choices(frame_times, duration_s)]
    text = {"type": "string", "pattern": f"^{TEXT_CHARS}{{1,{max_chars}}}$"}
    event = {
        "type": "object",
        "additionalProperties": False,
        "required": ["start_s", "end_s", "text"],
        "properties": {"start_s": {"type": "number", "enum": times}, "end_s": {"type": "number", "enum": times}, "text": text},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["caption", "events"],
        "properties": {"caption": text, "events": {"type": "array", "items": event, "maxItems": max_events}},
    }


def parse_answer(raw: str) -> dict:
    """Strict: the whole answer must be one JSON object of ANSWER_SCHEMA (a ```json fence is allowed)."""
    body = raw.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.S)
    if fenced:
        body = fenced.group(1)
    try:
        answer = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not JSON: {exc.msg} at char {exc.pos}") from None
    try:
        jsonschema.validate(answer, ANSWER_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "answer"
        raise InvalidAnswer(f"schema: {where}: {exc.message}") from None
    return answer


def clean_text(text: str) -> str:
    """ftfy repairs mojibake and odd characters; whitespace collapsed."""
    return " ".join(fix_text(text).split())


def clean_events(events: list[dict], duration_s: float, min_event_s: float, overlap: str) -> list[dict]:
    """Events inside [0, duration], at least `min_event_s` long, sorted by start; overlaps
    either merged into one event (`merge`) or trimmed to start where the previous ends (`trim`)."""
    spans = []
    for event in events:
        start, end = sorted((float(event["start_s"]), float(event["end_s"])))
        start, end = max(0.0, start), min(duration_s, end)
        text = clean_text(event["text"])
        if end - start >= min_event_s and text:
            spans.append({"start_s": round(start, 3), "end_s": round(end, 3), "text": text})
    spans.sort(key=lambda e: (e["start_s"], e["end_s"]))
    out: list[dict] = []
    for event in spans:
        if out and event["start_s"] < out[-1]["end_s"]:
            last = out[-1]
            if overlap == "merge":
                last["end_s"] = max(last["end_s"], event["end_s"])
                if event["text"] != last["text"]:
                    last["text"] = f"{last['text']}; {event['text']}"
                continue
            event = {**event, "start_s": last["end_s"]}
            if event["end_s"] - event["start_s"] < min_event_s:
                continue
        out.append(event)
    return out
