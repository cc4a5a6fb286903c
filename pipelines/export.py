"""Trainer exports: the conversation JSON each trainer's own loader reads, from the shards.

Every clip and window sample is exported with its own media, copied to `media/<key>.mp4`
beside the JSON; records name it relative to the JSON file (or absolutely, `absolute_media`),
so pointing the trainer's media root (`--video_folder`, `media_dir`, `data_folder`, ...) at
the export folder is all it needs. Trainers decode the whole file, and every span is a time in
that file. QA text stores times as `{spanK}`, `{startK}`, `{endK}` placeholders over numeric
spans; each format renders them in its trainer's own wording (`TRAINERS`), and `parse_times` /
`parse_moments` read them back. docs/training.md names the loader file and function each follows.
The interleaved formats (OBELICS, MMC4, LLaVA-Interleave) export the samples' documents instead:
`pipelines/interleaved.py`.

A record holds one QA item, as TimeIT and TimePro ship them; `turns` > 1 joins items of a sample
into multi-turn records only where no answer can be read from an earlier turn (`leaks`, which
checks any export: its times and answer texts against the turns before them).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.sample import LEGACY_TASKS, TIME_REF
from vidcurate.schemas.tables import stable_int
from vidcurate.schemas.untrusted import Limits, Skipped, inside, log_skipped

INSTRUCTIONS = {  # the `i` of the QA layout, one per task (TimeIT's and TimeSuite's loaders use the first item's)
    "temporal_video_grounding": "Localize the visual content described by the given textual query in the video, and output the start and end timestamps in seconds.",
    "dense_video_captioning": "Localize a series of activity events in the video, output the start and end timestamp for each event, and describe each event with sentences.",
    "video_summarization": "Find the key moments that summarize the video, with their times and saliency scores.",
    "step_localization": "Localize the steps of the procedure in the video in order, with the start and end time and a description of each.",
    "transcribed_speech_generation": "Transcribe the speech in the video, with the start and end time of each segment.",
    "reasoning_temporal_localization": "Answer the question with the time span of the video that answers it, and explain why.",
    "multi_format_temporal_grounding": "Answer the question about when something happens in the video, in the form it asks for.",
    "highlight_detection": "Find the highlights of the video that match the query and rate their saliency.",
    "temporal_grounded_caption": "Describe the video in detail, giving the start and end time of every part.",
    "temporal_ordering": "Reason about the order of events in time.",
    "multiple_choice": "Choose the option that describes the given time span.",
}


@dataclass(frozen=True)
class Trainer:
    """How one trainer's loader wants a record: its layout and its time wording."""

    layout: str  # conversations | sharegpt | qa | vtimellm
    style: str  # a span's wording; {a}/{b}: start/end seconds, {k}: boundary token number
    pattern: str  # regex reading `style` back (two groups: start, end)
    start: str = "{t:.1f} seconds"  # one time, a span's start ({t}: seconds, {k}: token number)
    end: str = "{t:.1f} seconds"
    moment: str = r"(?<![\d.])(\d+\.\d) seconds"  # regex reading `start`/`end` back
    video_tag: str = "<video>"
    video_as_list: bool = False
    grounding: str | None = None  # the trainer's own answer to temporal video grounding, where it has one


SECONDS = ("{a:.1f} - {b:.1f} seconds", r"(\d+\.\d) - (\d+\.\d) seconds")
TRAINERS = {
    # LLaVA-NeXT llava/train/train.py LazySupervisedDataset: videos use the image token
    "llava": Trainer("conversations", *SECONDS, video_tag="<image>"),
    # Qwen2.5-VL / Qwen3-VL qwen-vl-finetune qwenvl/data/data_qwen.py: "happens in 64.0 - 72.0 seconds"
    "qwen": Trainer("conversations", *SECONDS),
    # LLaMA-Factory sharegpt (data/mllm_video_demo.json layout, with its dataset_info.json entry)
    "llamafactory": Trainer("sharegpt", *SECONDS),
    # TimeSuite / VideoChat-T dataset/it_dataset_mistral.py: "From 37.8 to 59.9 seconds."
    "timesuite": Trainer("qa", "from {a:.1f} to {b:.1f} seconds", r"from (\d+\.\d) to (\d+\.\d) seconds", grounding="{span0}."),
    # TimeChat / TimeIT video_instruct_dataset.py: "The given query happens in 0.0 - 6.9 seconds."
    "timeit": Trainer("qa", *SECONDS, grounding="The given query happens in {span0}."),
    # VTimeLLM vtimellm/train/dataset.py, docs/data.md: <sK>/<eK> tokens, times in meta.token
    "vtimellm": Trainer("vtimellm", "from <s{k}> to <e{k}>", r"from <s(\d+)> to <e(\d+)>", start="<s{k}>", end="<e{k}>", moment=r"<[se](\d+)>"),
    # VideoLLaMA3 videollama3/train.py LazySupervisedDataset._convert_normal: video is a one-element list
    "videollama3": Trainer("conversations", *SECONDS, video_as_list=True),
}
FORMATS = tuple(TRAINERS)
DATASET_NAME = "vidcurate"


def render(text: str, spans: list[list[float]], fmt: str, first_token: int = 0) -> str:
    """Replace {spanK}, {startK}, {endK} by span K (or one of its ends) in the trainer's wording;
    capitalise a time that starts a sentence."""
    trainer = TRAINERS[fmt]

    def one(match: re.Match) -> str:
        kind, k = match.group(1), int(match.group(2))
        a, b = spans[k]
        if kind == "span":
            return trainer.style.format(a=a, b=b, k=first_token + k)
        return (trainer.start if kind == "start" else trainer.end).format(t=a if kind == "start" else b, k=first_token + k)

    def sentence(match: re.Match) -> str:
        out = one(match)
        starts = match.start() == 0 or text[: match.start()].rstrip().endswith((".", "?", "!"))
        return out[:1].upper() + out[1:] if starts else out

    return TIME_REF.sub(sentence, text)


def parse_times(text: str, fmt: str) -> list[list[float]]:
    """Every span rendered in `text` in the trainer's wording, in order (vtimellm: token numbers)."""
    return [[float(a), float(b)] for a, b in re.findall(TRAINERS[fmt].pattern, text, flags=re.I)]


def parse_moments(text: str, fmt: str, tokens: dict | None = None) -> list[float]:
    """Every single time (a span's start or end on its own) rendered in `text`, in seconds
    (vtimellm: through the record's `meta.token`)."""
    trainer = TRAINERS[fmt]
    alone = re.sub(trainer.pattern, " ", text, flags=re.I)
    if trainer.layout == "vtimellm":
        return [float(tokens[m.group(0)]) for m in re.finditer(trainer.moment, alone)]
    return [float(t) for t in re.findall(trainer.moment, alone)]


def _current(item: dict, trainer: Trainer) -> dict:
    """An item under 1.3.0's task name, with the trainer's own grounding answer where it has one."""
    item = {**item, "task": LEGACY_TASKS.get(item["task"], item["task"])}
    plain = item["task"] == "temporal_video_grounding" and len(item["spans"]) == 1 and not item.get("negative")
    return {**item, "answer": trainer.grounding} if plain and trainer.grounding else item


def records(video: str, key: str, duration_s: float, qa: list[dict], fmt: str, turns: int = 1, texts: tuple[str, ...] = ()) -> list[dict]:
    """The trainer records of one sample whose media is `video`: one QA item each, or up to
    `turns` items joined where none can be answered from an earlier turn (`assemble`; `texts`:
    the sample's event texts)."""
    trainer = TRAINERS[fmt]
    items = [_current(item, trainer) for item in qa]
    build = lambda group: record(video, key, duration_s, group, fmt)  # noqa: E731
    groups = [[item] for item in items] if turns <= 1 else assemble(items, turns, build, key, trainer.layout == "qa", texts)
    return [record(video, key, duration_s, group, fmt) for group in groups]


def assemble(items: list[dict], turns: int, build, key: str, one_task: bool, texts: tuple[str, ...] = ()) -> list[list[dict]]:
    """Items in multi-turn groups of at most `turns`: in a seeded order, each joins the first
    group it does not share an event with (and, for `one_task`, of its task) whose record
    `build(group)` stays free of leaks with it; otherwise it starts a group."""
    groups: list[list[dict]] = []
    for n in sorted(range(len(items)), key=lambda n: stable_int(f"{key}/turns/{n}")):
        item = items[n]
        for group in groups:
            if len(group) < turns and _joinable(group, item, one_task) and not leaks(build([*group, item]), texts):
                group.append(item)
                break
        else:
            groups.append([item])
    return groups


def _joinable(group: list[dict], item: dict, one_task: bool) -> bool:
    if one_task and item["task"] != group[0]["task"]:
        return False
    about = set(item.get("events", []))
    return not any(about & set(other.get("events", [])) for other in group)


def record(video: str, key: str, duration_s: float, items: list[dict], fmt: str) -> dict:
    """One trainer record of `items` (one turn each)."""
    trainer = TRAINERS[fmt]
    if trainer.layout == "qa":  # only the first item's instruction is used: a record holds one task
        qa = [{"i": INSTRUCTIONS[it["task"]], "q": render(it["question"], it["spans"], fmt), "a": render(it["answer"], it["spans"], fmt)} for it in items]
        return {"video": video, "QA": qa}
    turns, tokens = [], {}
    for item in items:
        first = len(tokens) // 2
        for k, (a, b) in enumerate(item["spans"]):
            tokens.update({f"<s{first + k}>": a, f"<e{first + k}>": b})
        turns.append((render(item["question"], item["spans"], fmt, first), render(item["answer"], item["spans"], fmt, first)))
    if trainer.layout == "sharegpt":
        messages = []
        for i, (q, a) in enumerate(turns):
            messages += [{"role": "user", "content": (trainer.video_tag if i == 0 else "") + q}, {"role": "assistant", "content": a}]
        return {"messages": messages, "videos": [video]}
    conversations = []
    for i, (q, a) in enumerate(turns):
        conversations += [{"from": "human", "value": (f"{trainer.video_tag}\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    out = {"id": key, "video": [video] if trainer.video_as_list else video, "conversations": conversations}
    if trainer.layout == "vtimellm":
        out.update(source=DATASET_NAME, meta={"duration": duration_s, "token": tokens})
    return out


_TIME = re.compile(r"(?<![\d.])\d+\.\d(?!\d)")  # a time as every format but VTimeLLM's renders it
_TOKEN = re.compile(r"<[se]\d+>")


def turns_of(record: dict) -> list[tuple[str, str]]:
    """(question, answer) of each turn of any format's record."""
    if "QA" in record:
        return [(qa["q"], qa["a"]) for qa in record["QA"]]
    texts = [turn.get("value", turn.get("content")) for turn in record.get("conversations") or record.get("messages")]
    return list(zip(texts[::2], texts[1::2]))


def leaks(record: dict, texts: tuple[str, ...] = ()) -> list[str]:
    """Where a turn's answer can be read from an earlier turn of the same record: a time of its
    answer (spans, starts and ends as rendered; VTimeLLM's tokens as their seconds), one of the
    sample's event `texts` in it, or (an answer without times) its whole text, said before.
    Empty for a record a model can only answer by looking at the video."""
    tokens = (record.get("meta") or {}).get("token") or {}
    seconds = lambda text: _TOKEN.sub(lambda m: f"{tokens[m.group(0)]:.1f}" if m.group(0) in tokens else m.group(0), text)  # noqa: E731
    known = {t for t in map(_normal, texts) if t}
    said_times: set[str] = set()
    said = " "
    found = []
    for n, (question, answer) in enumerate(turns_of(record)):
        question, answer = seconds(question), seconds(answer)
        times, text = set(_TIME.findall(answer)), _normal(answer)
        if n:
            found += [f"turn {n + 1}: its answer's time {t} is in an earlier turn" for t in sorted(times & said_times)]
            repeated = [t for t in sorted(known) if f" {t} " in f" {text} " and f" {t} " in said]
            found += [f"turn {n + 1}: its answer's {t!r} is in an earlier turn" for t in repeated]
            if not times and len(text.split()) >= 2 and f" {text} " in said:
                found.append(f"turn {n + 1}: its answer {answer!r} is in an earlier turn")
        said_times |= set(_TIME.findall(question)) | times
        said += f"{_normal(question)} {text} "
    return found


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


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


def export(location: str, fmt: str, out_dir: str | Path, absolute_media: bool = False, limits: Limits = Limits(), turns: int = 1) -> dict:
    """Write `<out>/<fmt>.json` and `<out>/media/` from the clip and window samples at `location`;
    a record holds one QA item, or up to `turns` that give none of their answers away.

    Samples the readers' checks leave out, a key already exported from another shard, and
    media whose path would resolve outside `<out>/media` are not written; the summary counts
    them by reason (`skipped`), and each is logged."""
    if fmt not in TRAINERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)} (interleaved documents: pipelines.interleaved)")
    if turns < 1:
        raise ValueError(f"turns: at least 1 QA item a record, got {turns}")
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
        texts = tuple(e["text"] for e in (meta.get("caption") or {}).get("events", []))
        written += records(video, key, meta["duration_s"], qa, fmt, turns, texts)
        counts[meta["kind"]] += 1
    path = out / f"{fmt}.json"
    path.write_text(json.dumps(written, indent=1, ensure_ascii=False))
    if fmt == "llamafactory":
        (out / "dataset_info.json").write_text(json.dumps(dataset_info(path.name), indent=1))
    return {
        "path": str(path), "records": len(written), "clips": counts["clip"], "windows": counts["window"],
        "samples_without_qa": counts["without_qa"], "skipped": dict(sorted(skipped.items())),
        "multi_turn_records": sum(len(turns_of(r)) > 1 for r in written),
    }
