"""Trainer exports: conversation JSON for LLaVA, ShareGPT (LLaMA-Factory), Qwen-VL and
TimeSuite, rendered from the same stored QA records.

QA text stores times as `{spanK}` placeholders over numeric spans; each format renders them
in its trainer's own style (`TIME_STYLES`), and `parse_times` reads them back, which the
tests use to prove no exporter shifts or rounds a span beyond its printed precision.
Clip media are copied next to the JSON (media/<key>.mp4); video-level windows point at the
source video with start/end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import fsspec

from schemas.readers import open_shards

TIME_STYLES = {
    # format: (render template, regex reading it back, decimals)
    "timesuite": ("from {a:.1f} to {b:.1f} seconds", r"from (\d+\.\d) to (\d+\.\d) seconds", 1),
    "llava": ("{a:.1f} - {b:.1f} seconds", r"(\d+\.\d) - (\d+\.\d) seconds", 1),
    "sharegpt": ("[{a:.2f}s, {b:.2f}s]", r"\[(\d+\.\d\d)s, (\d+\.\d\d)s\]", 2),
    "qwen": ("<{a:.1f}s> - <{b:.1f}s>", r"<(\d+\.\d)s> - <(\d+\.\d)s>", 1),
}
FORMATS = tuple(TIME_STYLES)
INSTRUCTIONS = {
    "temporal_grounding": "Find the time span the query describes.",
    "dense_captioning": "Describe the events of the video with their times.",
    "grounded_caption": "Describe what happens in the given time span.",
    "moment_localisation": "Find every moment that matches the description.",
    "highlight_detection": "Find the highlights matching the description and rate their saliency.",
    "temporal_ordering": "Reason about the order of events in time.",
    "multiple_choice": "Choose the option that describes the given time span.",
    "summarisation": "Summarise the video.",
}


def render(text: str, spans: list[list[float]], fmt: str) -> str:
    """Replace {spanK} by span K in the format's time style; capitalise a leading span."""
    template = TIME_STYLES[fmt][0]
    out = re.sub(r"\{span(\d+)\}", lambda m: template.format(a=spans[int(m.group(1))][0], b=spans[int(m.group(1))][1]), text)
    return out[:1].upper() + out[1:] if text.startswith("{span") else out


def parse_times(text: str, fmt: str) -> list[list[float]]:
    """Every span rendered in `text` in the format's style, in order of appearance."""
    return [[float(a), float(b)] for a, b in re.findall(TIME_STYLES[fmt][1], text, flags=re.I)]


def _turns(qa: list[dict], fmt: str) -> list[tuple[str, str, str]]:
    return [(item["task"], render(item["question"], item["spans"], fmt), render(item["answer"], item["spans"], fmt)) for item in qa]


def record(video: str, qa: list[dict], fmt: str, key: str, window: tuple[float, float] | None = None) -> dict:
    """One trainer record holding every QA item of a sample as turns of one conversation."""
    turns = _turns(qa, fmt)
    if fmt == "timesuite":
        out = {"video": video, "QA": [{"i": INSTRUCTIONS.get(task, ""), "q": q, "a": a} for task, q, a in turns]}
        return {**out, "start": window[0], "end": window[1]} if window else out
    if fmt == "sharegpt":
        messages = []
        for i, (_, q, a) in enumerate(turns):
            messages += [{"role": "user", "content": ("<video>" if i == 0 else "") + q}, {"role": "assistant", "content": a}]
        out = {"messages": messages, "videos": [video]}
        return {**out, "video_start": window[0], "video_end": window[1]} if window else out
    tag = "<image>" if fmt == "llava" else "<video>"
    conversations = []
    for i, (_, q, a) in enumerate(turns):
        conversations += [{"from": "human", "value": (f"{tag}\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    out = {"id": key, "video": video, "conversations": conversations}
    if window:
        out.update({"video_start": window[0], "video_end": window[1]})
    return out


def export(location: str, fmt: str, out_dir: str | Path, copy_media: bool = True) -> dict:
    """Write `<out>/<fmt>.json` from the shards at `location` (and their windows.jsonl)."""
    if fmt not in TIME_STYLES:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    records, skipped = [], 0
    for sample in open_shards(location):
        meta = json.loads(sample["json"])
        qa = (meta.get("grounding") or {}).get("qa") or []
        if not qa:
            skipped += 1
            continue
        media = f"media/{sample['__key__']}.mp4"
        if copy_media:
            (out / media).write_bytes(sample["mp4"])
        records.append(record(media, qa, fmt, sample["__key__"]))
    windows = _windows(location)
    for w in windows:
        records.append(record(w["source_uri"], w["qa"], fmt, w["window_id"], (w["source_start_s"], w["source_end_s"])))
    path = out / f"{fmt}.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return {"path": str(path), "records": len(records), "windows": len(windows), "samples_without_qa": skipped}


def _windows(location: str) -> list[dict]:
    url = location.rstrip("/") + "/windows.jsonl"
    if location.endswith(".tar"):
        return []
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as f:
        return [json.loads(line) for line in f if line.strip()]
