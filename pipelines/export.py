"""Trainer exports: the conversation JSON each trainer's own loader reads, from the shards.

Every clip and window sample is exported with its own media, copied to `media/<key>.mp4`
beside the JSON; records name it relative to the JSON file (or absolutely, `absolute_media`),
so pointing the trainer's media root (`--video_folder`, `media_dir`, `data_folder`, ...) at
the export folder is all it needs. Trainers decode the whole file, and every span is a time in
that file. QA text stores times as `{spanK}` placeholders over numeric spans; each format
renders them in its trainer's own wording (`TRAINERS`), and `parse_times` reads them back.
docs/training.md names the loader file and function each format follows.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.untrusted import SPAN_REF, Limits, Skipped, inside, log_skipped

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


@dataclass(frozen=True)
class Trainer:
    """How one trainer's loader wants a record: its layout and its time wording."""

    layout: str  # conversations | sharegpt | qa | vtimellm
    style: str  # a span's wording; {a}/{b}: start/end seconds, {k}: boundary token number
    pattern: str  # regex reading `style` back (two groups: start, end)
    video_tag: str = "<video>"
    video_as_list: bool = False


SECONDS = ("{a:.1f} - {b:.1f} seconds", r"(\d+\.\d) - (\d+\.\d) seconds")
TRAINERS = {
    # LLaVA-NeXT llava/train/train.py LazySupervisedDataset: videos use the image token
    "llava": Trainer("conversations", *SECONDS, video_tag="<image>"),
    # Qwen2.5-VL / Qwen3-VL qwen-vl-finetune qwenvl/data/data_qwen.py: "happens in 64.0 - 72.0 seconds"
    "qwen": Trainer("conversations", *SECONDS),
    # LLaMA-Factory sharegpt (data/mllm_video_demo.json layout, with its dataset_info.json entry)
    "llamafactory": Trainer("sharegpt", *SECONDS),
    # TimeSuite / VideoChat-T dataset/it_dataset_mistral.py: "From 37.8 to 59.9 seconds."
    "timesuite": Trainer("qa", "from {a:.1f} to {b:.1f} seconds", r"from (\d+\.\d) to (\d+\.\d) seconds"),
    # TimeChat / TimeIT video_instruct_dataset.py: "The given query happens in 0.0 - 6.9 seconds."
    "timeit": Trainer("qa", *SECONDS),
    # VTimeLLM vtimellm/train/dataset.py, docs/data.md: <sK>/<eK> tokens, times in meta.token
    "vtimellm": Trainer("vtimellm", "from <s{k}> to <e{k}>", r"from <s(\d+)> to <e(\d+)>"),
    # VideoLLaMA3 videollama3/train.py LazySupervisedDataset._convert_normal: video is a one-element list
    "videollama3": Trainer("conversations", *SECONDS, video_as_list=True),
}
FORMATS = tuple(TRAINERS)
DATASET_NAME = "vidcurate"


def render(text: str, spans: list[list[float]], fmt: str, first_token: int = 0) -> str:
    """Replace {spanK} by span K in the trainer's wording; capitalise a leading span."""
    style = TRAINERS[fmt].style

    def one(match: re.Match) -> str:
        k = int(match.group(1))
        return style.format(a=spans[k][0], b=spans[k][1], k=first_token + k)

    out = SPAN_REF.sub(one, text)
    return out[:1].upper() + out[1:] if text.startswith("{span") else out


def parse_times(text: str, fmt: str) -> list[list[float]]:
    """Every span rendered in `text` in the trainer's wording, in order (vtimellm: token numbers)."""
    return [[float(a), float(b)] for a, b in re.findall(TRAINERS[fmt].pattern, text, flags=re.I)]


def records(video: str, key: str, duration_s: float, qa: list[dict], fmt: str) -> list[dict]:
    """The trainer records of one sample whose media is `video`."""
    trainer = TRAINERS[fmt]
    if trainer.layout == "qa":  # only the first item's instruction is used: one record per task
        by_task: dict[str, list[dict]] = {}
        for item in qa:
            by_task.setdefault(item["task"], []).append(item)
        return [
            {"video": video, "QA": [{"i": INSTRUCTIONS.get(task, ""), "q": render(it["question"], it["spans"], fmt), "a": render(it["answer"], it["spans"], fmt)} for it in items]}
            for task, items in by_task.items()
        ]
    turns, tokens = [], {}
    for item in qa:
        first = len(tokens) // 2
        for k, (a, b) in enumerate(item["spans"]):
            tokens.update({f"<s{first + k}>": a, f"<e{first + k}>": b})
        turns.append((render(item["question"], item["spans"], fmt, first), render(item["answer"], item["spans"], fmt, first)))
    if trainer.layout == "sharegpt":
        messages = []
        for i, (q, a) in enumerate(turns):
            messages += [{"role": "user", "content": (trainer.video_tag if i == 0 else "") + q}, {"role": "assistant", "content": a}]
        return [{"messages": messages, "videos": [video]}]
    conversations = []
    for i, (q, a) in enumerate(turns):
        conversations += [{"from": "human", "value": (f"{trainer.video_tag}\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    out = {"id": key, "video": [video] if trainer.video_as_list else video, "conversations": conversations}
    if trainer.layout == "vtimellm":
        out.update(source=DATASET_NAME, meta={"duration": duration_s, "token": tokens})
    return [out]


def dataset_info(json_name: str) -> dict:
    """LLaMA-Factory's `dataset_info.json` entry for the sharegpt export (data/README.md)."""
    return {
        DATASET_NAME: {
            "file_name": json_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "videos": "videos"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }


def export(location: str, fmt: str, out_dir: str | Path, absolute_media: bool = False, limits: Limits = Limits()) -> dict:
    """Write `<out>/<fmt>.json` and `<out>/media/` from the clip and window samples at `location`.

    Samples the readers' checks leave out, a key already exported from another shard, and
    media whose path would resolve outside `<out>/media` are not written; the summary counts
    them by reason (`skipped`), and each is logged."""
    if fmt not in TRAINERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir).resolve()
    media_dir = out / "media"
    if not inside(media_dir, out):
        raise ValueError(f"{media_dir} is a link to {media_dir.resolve()}, outside the export folder")
    media_dir.mkdir(parents=True, exist_ok=True)
    written, counts, skipped, exported = [], {"clip": 0, "window": 0, "without_qa": 0}, Counter(), {}

    def skip(sample: Skipped) -> None:
        skipped[sample.code] += 1
        log_skipped(sample)

    for sample in open_shards(location, limits=limits, on_skip=skip, empty_check=False):
        key, meta = sample["__key__"], json.loads(sample["json"])  # key and json checked by the reader
        qa = (meta.get("grounding") or {}).get("qa") or []
        if not qa:
            counts["without_qa"] += 1
            continue
        media = media_dir / f"{key}.mp4"
        if key in exported:
            skip(Skipped(sample["__url__"], key, "duplicate_key", f"already exported from {exported[key]}"))
            continue
        if not inside(media, media_dir):
            skip(Skipped(sample["__url__"], key, "outside_output", f"media/{key}.mp4 resolves to {media.resolve()}"))
            continue
        media.write_bytes(sample["mp4"])
        exported[key] = sample["__url__"]
        video = str(media) if absolute_media else media.relative_to(out).as_posix()
        written += records(video, key, meta["duration_s"], qa, fmt)
        counts[meta["kind"]] += 1
    path = out / f"{fmt}.json"
    path.write_text(json.dumps(written, indent=1, ensure_ascii=False))
    if fmt == "llamafactory":
        (out / "dataset_info.json").write_text(json.dumps(dataset_info(path.name), indent=1))
    return {
        "path": str(path), "records": len(written), "clips": counts["clip"], "windows": counts["window"],
        "samples_without_qa": counts["without_qa"], "skipped": dict(sorted(skipped.items())),
    }
