"""Ground stage: a clip's timestamped events -> grounded QA items and its interleaved document.

The items are data a model must look at the video to answer: TimePro's nine tasks (TimeSuite /
VideoChat-T) and the project's own two (`TASKS`), each phrased from a pool of many instructions
(`stages/ground_pools.yaml`, `ground.templates`), negatives whose query comes from another video,
and a task mix (`ground.tasks`, `ground.max_items`).

Items are stored format-neutral: spans are numbers (seconds from the sample's start) and text
names them as `{spanK}`, `{startK}`, `{endK}`, so each exporter renders times in its trainer's
wording (`pipelines.export`). Before any item is made, each event boundary the captioner put on
a sampled frame moves to the frame where the picture really changes (`ground.refine`, split's
change scores; both times are kept), and each event gets a verification from the embed stage's
frames: how much better its text matches the frames inside its span than outside
(`stages.spans.span_verification`; null where embed did not run). An item records the events it
is about; its verification is their lowest, and items under `ground.min_verification` are
dropped and counted per task.

Each clip also gets its interleaved document (`stages.documents.events_document`: per event the
frame that stands for it and its timed text, each pair scored by the embed model and dropped under
`ground.min_pair_similarity`). Video-level window samples (contiguous shipped clips) are made the
same way by `windows`, which the shard stage calls over the clips it shipped; the shard stage also
makes the window and in-context documents (`ground.in_context_k`), once it is known which clips ship.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, PrivateAttr, computed_field, field_validator, model_validator

from vidcurate.schemas.sample import TASKS, TIME_REF
from vidcurate.schemas.tables import GROUNDED, KEPT, REJECTED, stable_int
from vidcurate.stages.contract import Stage
from vidcurate.stages.documents import events_document
from vidcurate.stages.embed import Evidence, event_embeddings, frame_evidence, unpack
from vidcurate.stages.frame_store import read_changes
from vidcurate.stages.ground_pools import NEGATIVES, Pools, fill, load_pools, safe
from vidcurate.stages.settings import StageResources, StrictModel
from vidcurate.stages.spans import refine_events, span_verification


class GroundConfig(StrictModel):
    max_window_s: float = Field(60.0, gt=0, description="video-level samples span contiguous clips up to this long")
    tasks: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TASKS, 1.0),
        description="the task mix: task -> the share of its items kept (0-1, seeded by the item); tasks not named are not made",
    )
    max_items: dict[str, int] = Field(default_factory=dict, description="task -> at most this many items per clip or window sample")
    templates: str | None = Field(None, description="a pools file that replaces (or, `extend: true`, extends) the shipped phrasings")
    negative_rate: float = Field(0.1, ge=0, lt=1, description="share of items whose query comes from another video (answered: not in the video)")
    min_verification: float = Field(0.5, ge=0, le=1, description="items whose events' span verification is lower are dropped (null: kept)")
    refine: bool = Field(True, description="move each event boundary on a sampled frame to the frame of largest change near it")
    reason: bool = Field(False, description="reasoning temporal localization: a why/how question per clip from the captioner's model")
    reason_max_tokens: int = Field(160, ge=16)
    rewrite: bool = Field(False, description="rephrase template questions with the captioner's model")
    min_rewrite_score: float = Field(0.6, ge=0, le=1, description="share of content words a rewrite or a reasoning item must keep")
    rewrite_max_tokens: int = Field(96, ge=8)
    in_context_k: int = Field(
        2, ge=0, le=16, description="in-context documents: a clip's nearest shipped clips shown as examples before its own question (0: none)"
    )
    min_pair_similarity: float = Field(
        0.2, ge=-1, le=1, description="(image, text) pairs of interleaved documents whose embed-model cosine is lower are dropped (no score: kept)"
    )
    resources: StageResources = StageResources(batch_size=16)
    _pools: Pools = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _not_an_input(cls, data):
        """`pools_sha256` is computed from the pools: a config written out and read back drops it."""
        return {k: v for k, v in data.items() if k != "pools_sha256"} if isinstance(data, dict) else data

    @field_validator("tasks")
    @classmethod
    def _mix(cls, tasks: dict[str, float]) -> dict[str, float]:
        for task, weight in tasks.items():
            _known(task, "ground.tasks")
            if not 0 <= weight <= 1:
                raise ValueError(f"ground.tasks.{task}: a weight is the share of its items kept, 0 to 1; got {weight}")
        return tasks

    @field_validator("max_items")
    @classmethod
    def _caps(cls, caps: dict[str, int]) -> dict[str, int]:
        for task, cap in caps.items():
            _known(task, "ground.max_items")
            if cap < 0:
                raise ValueError(f"ground.max_items.{task}: at least 0, got {cap}")
        return caps

    @model_validator(mode="after")
    def _load_pools(self) -> GroundConfig:
        self._pools = load_pools(self.templates)
        return self

    @computed_field(description="the pools' fingerprint: a changed phrasing re-runs the stage")
    @property
    def pools_sha256(self) -> str:
        return self._pools.digest

    @property
    def pools(self) -> Pools:
        return self._pools


def _known(task: str, where: str) -> None:
    if task not in TASKS:
        raise ValueError(f"{where}: unknown task {task!r}; tasks: {', '.join(TASKS)}")


STAGE = "ground"
STOPWORDS = frozenset(
    "a an the and or but of in on at to for with from by as is are was were be been being it its this that these those "
    "there here then than into onto over under up down out off some any each every all both his her their our your my".split()
)
_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def content_words(text: str) -> set[str]:
    return _words(text) - STOPWORDS


@dataclass
class Sample:
    """What one clip or window offers the task generators: its events (refined, verified, in
    time order), texts and the embed stage's evidence (None where embed did not run)."""

    key: str
    kind: str  # clip | window
    duration: float
    caption: str
    events: list[dict]
    distractors: list[str] = field(default_factory=list)
    speech: list[dict] = field(default_factory=list)
    frames: Evidence | None = None
    query: tuple[str, np.ndarray] | None = None  # a description and its text embedding: highlight detection's query
    reasoned: list[dict] = field(default_factory=list)  # reasoning items made elsewhere (the captioner's model)
    negatives: list[str] = field(default_factory=list)  # queries from other videos, unlike this sample

    @property
    def spans(self) -> list[list[float]]:
        return [[e["start_s"], e["end_s"]] for e in self.events]

    @property
    def texts(self) -> list[str]:
        return [safe(e["text"]) for e in self.events]

    def groups(self) -> list[list[int]]:
        """Event indices by text: a repeated text has no single span."""
        by_text: dict[str, list[int]] = {}
        for i, text in enumerate(self.texts):
            by_text.setdefault(text.lower(), []).append(i)
        return list(by_text.values())

    def unique(self) -> list[int]:
        return [g[0] for g in self.groups() if len(g) == 1]


def _item(task: str, question: str, answer: str, spans: list[list[float]], events: list[int], **extra) -> dict:
    item = {"task": task, "question": question, "answer": answer, "spans": spans, "events": events}
    return {**item, "generator": "template", "verification": None, **extra}


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _phrased(pools: Pools, task: str, key: str, spans, events, question: dict, answer: dict, **extra) -> dict:
    return _item(task, fill(pools.question(task, key), **question), fill(pools.answer(task, key), **answer), spans, events, **extra)


# Each task's generator: a sample and the pools -> its items (none where the sample lacks the data).


def temporal_video_grounding(s: Sample, pools: Pools) -> list[dict]:
    """A query (an event's text) -> its span; a text the clip shows more than once -> every span."""
    task, out = "temporal_video_grounding", []
    for g in s.groups():
        spans = _joined([f"{{span{k}}}" for k in range(len(g))])
        out.append(_phrased(pools, task, f"{s.key}/{task}/{g[0]}", [s.spans[i] for i in g], g, {"event": s.texts[g[0]]}, {"spans": spans}))
    return out


def multi_format_temporal_grounding(s: Sample, pools: Pools) -> list[dict]:
    """Grounding whose question and answer forms vary: start and end, start only, end only,
    a span asking what happens, fill in the blanks (the pool's pairs)."""
    task, out = "multi_format_temporal_grounding", []
    for i in s.unique():
        q, a = pools.pair(task, f"{s.key}/{task}/{i}")
        out.append(_item(task, fill(q, event=s.texts[i]), fill(a, event=s.texts[i]), [s.spans[i]], [i]))
    return out


def dense_video_captioning(s: Sample, pools: Pools) -> list[dict]:
    task = "dense_video_captioning"
    if not s.events:
        return []
    listing = " ".join(f"{{span{k}}}, {t}." for k, t in enumerate(s.texts))  # TimeIT's "90.0 - 102.0 seconds, <event>."
    return [_phrased(pools, task, f"{s.key}/{task}", s.spans, list(range(len(s.events))), {}, {"events": listing})]


def temporal_grounded_caption(s: Sample, pools: Pools) -> list[dict]:
    """A detailed caption in which every segment carries its times."""
    task = "temporal_grounded_caption"
    if not s.events:
        return []
    parts = [f"{'From' if k == 0 else 'Then, from'} {{start{k}}} to {{end{k}}}, {t}." for k, t in enumerate(s.texts)]
    return [_phrased(pools, task, f"{s.key}/{task}", s.spans, list(range(len(s.events))), {}, {"segments": " ".join(parts)})]


def step_localization(s: Sample, pools: Pools) -> list[dict]:
    """A window's ordered steps, each with its span and text."""
    task = "step_localization"
    if s.kind != "window" or len(s.events) < 2:
        return []
    steps = " ".join(f"{k + 1}. {{span{k}}}: {t}." for k, t in enumerate(s.texts))
    return [_phrased(pools, task, f"{s.key}/{task}", s.spans, list(range(len(s.events))), {}, {"steps": steps})]


def video_summarization(s: Sample, pools: Pools) -> list[dict]:
    """Extractive: the key moments (events that best represent the sample) with times and saliency."""
    task = "video_summarization"
    if len(s.events) < 2:
        return []
    saliency = representativeness(s)
    ranked = sorted((i for i, v in enumerate(saliency) if v is not None and v >= 0.5), key=lambda i: -saliency[i])
    chosen = sorted(ranked[:MAX_MOMENTS])
    if not chosen:
        return []
    moments = "; ".join(f"{{span{k}}} (saliency {saliency[i]:.2f}): {s.texts[i]}" for k, i in enumerate(chosen)) + "."
    spans = [s.spans[i] for i in chosen]
    return [_phrased(pools, task, f"{s.key}/{task}", spans, chosen, {}, {"moments": moments}, saliency=[saliency[i] for i in chosen])]


def highlight_detection(s: Sample, pools: Pools) -> list[dict]:
    """A query (a description of the sample, not an event's own text) -> the events that show it
    better than the sample's typical frame, each with its saliency (the embed stage's text-frame
    similarity). Without embed's frames there is no saliency, and no item."""
    task = "highlight_detection"
    if s.frames is None or s.query is None or not s.events:
        return []
    text, emb = s.query
    saliency = query_saliency(emb, s.frames, s.spans)
    scored = [i for i, v in enumerate(saliency) if v is not None]
    chosen = [i for i in scored if saliency[i] >= 0.5] or sorted(scored, key=lambda i: -saliency[i])[:1]
    if not chosen:
        return []
    moments = "; ".join(f"{{span{k}}} (saliency {saliency[i]:.2f})" for k, i in enumerate(chosen)) + "."
    spans = [s.spans[i] for i in chosen]
    values = {"query": safe(text)}, {"moments": moments}
    return [_phrased(pools, task, f"{s.key}/{task}", spans, chosen, *values, saliency=[saliency[i] for i in chosen])]


def transcribed_speech_generation(s: Sample, pools: Pools) -> list[dict]:
    """The sample's speech segments, each with its span (the speech stage's `speech` column)."""
    task = "transcribed_speech_generation"
    segments = [g for g in s.speech if g["text"].strip() and 0 <= g["start_s"] < g["end_s"] <= s.duration + 1e-6]
    if not segments:
        return []
    transcript = " ".join(f"{{span{k}}}: {safe(g['text'].strip())}" for k, g in enumerate(segments))
    spans = [[g["start_s"], g["end_s"]] for g in segments]
    return [_phrased(pools, task, f"{s.key}/{task}", spans, [], {}, {"transcript": transcript})]


def reasoning_temporal_localization(s: Sample, pools: Pools) -> list[dict]:
    """Why/how questions the captioner's model wrote (`reason_items`), answered by a span and a reason."""
    task, out = "reasoning_temporal_localization", []
    for r in s.reasoned:
        i = r["event"]
        item = _phrased(pools, task, f"{s.key}/{task}/{i}", [s.spans[i]], [i], {"question": safe(r["question"])}, {"reason": safe(r["reason"])})
        out.append({**item, "generator": "llm"})
    return out


def temporal_ordering(s: Sample, pools: Pools) -> list[dict]:
    task, unique, out = "temporal_ordering", set(s.unique()), []
    for i in range(len(s.events) - 1):
        if i in unique:
            out.append(_phrased(pools, task, f"{s.key}/{task}/{i}", [s.spans[i + 1]], [i, i + 1], {"event": s.texts[i]}, {"next": s.texts[i + 1]}))
    return out


def multiple_choice(s: Sample, pools: Pools) -> list[dict]:
    """What happens during a span, among the event's text and up to three others of the video."""
    task, out = "multiple_choice", []
    pool = list(dict.fromkeys([*s.texts, *(safe(d) for d in s.distractors)]))
    for i, text in enumerate(s.texts):
        wrong = [t for t in pool if t.lower() != text.lower()][:3]
        if not wrong:
            continue
        turn = stable_int(f"{s.key}/{i}") % (len(wrong) + 1)
        options = [text, *wrong]
        options = options[turn:] + options[:turn]
        listing = " ".join(f"({'ABCD'[k]}) {o}" for k, o in enumerate(options))
        answer = f"({'ABCD'[options.index(text)]}) {text}"
        out.append(_phrased(pools, task, f"{s.key}/{task}/{i}", [s.spans[i]], [i], {"options": listing}, {"answer": answer}, options=options))
    return out


GENERATORS = {
    "temporal_video_grounding": temporal_video_grounding,
    "dense_video_captioning": dense_video_captioning,
    "video_summarization": video_summarization,
    "step_localization": step_localization,
    "transcribed_speech_generation": transcribed_speech_generation,
    "reasoning_temporal_localization": reasoning_temporal_localization,
    "multi_format_temporal_grounding": multi_format_temporal_grounding,
    "highlight_detection": highlight_detection,
    "temporal_grounded_caption": temporal_grounded_caption,
    "temporal_ordering": temporal_ordering,
    "multiple_choice": multiple_choice,
}
assert tuple(GENERATORS) == TASKS
MAX_MOMENTS = 5  # key moments in a summary


def _inside(times: np.ndarray, span: list[float]) -> np.ndarray:
    return (times >= span[0] - 1e-6) & (times <= span[1] + 1e-6)


def query_saliency(query_emb: np.ndarray, frames: Evidence, spans: list[list[float]]) -> list[float | None]:
    """Per span: the share of the sample's frames outside it that match the query worse than the
    span's frames do on average (ties half; 1: nowhere else fits the query as well); None
    without a frame on each side."""
    sims = frames.embs @ query_emb
    out = []
    for span in spans:
        inside = _inside(frames.times, span)
        if inside.all() or not inside.any():
            out.append(None)
            continue
        mean, rest = float(sims[inside].mean()), sims[~inside]
        out.append(round(float((rest < mean).mean() + 0.5 * (rest == mean).mean()), 2))
    return out


def representativeness(s: Sample) -> list[float | None]:
    """How well each event stands for the whole sample, scaled to 0-1 over its events: with the
    embed stage's frames, the likeness of the event's frames to all frames (their mean
    embeddings); without them, the share of its content words the caption (the captioner's
    summary) repeats."""
    if s.frames is not None:
        whole = _unit(s.frames.embs.mean(axis=0))
        raw = [float(_unit(s.frames.embs[m].mean(axis=0)) @ whole) if (m := _inside(s.frames.times, span)).any() else None for span in s.spans]
    else:
        summary = content_words(s.caption)
        raw = [len(content_words(t) & summary) / max(1, len(content_words(t))) for t in s.texts]
    known = [v for v in raw if v is not None]
    if not known:
        return raw
    low, high = min(known), max(known)
    return [None if v is None else round((v - low) / (high - low), 2) if high > low else 1.0 for v in raw]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def spans_sound(item: dict, duration_s: float) -> bool:
    """Every span inside [0, duration] and every time the text names one of the item's spans."""
    refs = {int(k) for _, k in TIME_REF.findall(item["question"] + item["answer"])}
    return all(r < len(item["spans"]) for r in refs) and all(0 <= a < b <= duration_s + 1e-6 for a, b in item["spans"])


def item_verification(item: dict, events: list[dict]) -> float | None:
    """An item is as well supported as the weakest event it is about; null where any of them
    has no verification (embed did not run) or the item is about no event."""
    scores = [events[i].get("verification") for i in item["events"]]
    return None if not scores or any(v is None for v in scores) else min(scores)


def dedupe(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = (item["task"], item["question"].lower(), json.dumps(item["spans"]))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _chance(key: str) -> float:
    return stable_int(key) / 2**32


def mixed(items: list[dict], cfg: GroundConfig, key: str) -> list[dict]:
    """The task mix: each task's share of items (`ground.tasks`, seeded by the item), then at
    most `ground.max_items` of a task per sample (a seeded choice), in their order."""
    by_task: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        by_task.setdefault(item["task"], []).append(n)
    keep: set[int] = set()
    for task, ns in by_task.items():
        weight = cfg.tasks.get(task, 0.0)
        chosen = [n for j, n in enumerate(ns) if _chance(f"{key}/mix/{task}/{j}") < weight]
        cap = cfg.max_items.get(task)
        if cap is not None and len(chosen) > cap:
            chosen = sorted(chosen, key=lambda n: stable_int(f"{key}/cap/{n}"))[:cap]
        keep.update(chosen)
    return [item for n, item in enumerate(items) if n in keep]


def negative_items(s: Sample, pools: Pools, rate: float, positives: int) -> list[dict]:
    """Queries from other videos, answered as not happening in this one: `rate` of the sample's
    items (rounded by a seeded draw), as far as `s.negatives` offers candidates."""
    task = "temporal_video_grounding"
    expected = rate / (1 - rate) * positives
    count = min(len(s.negatives), int(expected) + (_chance(f"{s.key}/negatives") < expected % 1))
    chosen = sorted(s.negatives, key=lambda t: stable_int(f"{s.key}/negative/{t}"))[:count]
    out = []
    for j, text in enumerate(chosen):
        key = f"{s.key}/negative/{j}"
        question = fill(pools.question(task, key), event=safe(text))
        out.append(_item(task, question, pools.answer(NEGATIVES, key), [], [], negative=True))
    return out


def build_items(s: Sample, cfg: GroundConfig) -> tuple[list[dict], dict[str, int]]:
    """A sample's items: every chosen task's, checked, verified (those under
    `ground.min_verification` dropped and counted by task), mixed, then its negatives."""
    # in the tasks' own order, never the config's: a config read back from JSON lists them sorted
    items = [item for task, generate in GENERATORS.items() if cfg.tasks.get(task, 0) > 0 for item in generate(s, cfg.pools)]
    items = [{**it, "verification": item_verification(it, s.events)} for it in dedupe(items) if spans_sound(it, s.duration)]
    low = [it for it in items if it["verification"] is not None and it["verification"] < cfg.min_verification]
    items = mixed([it for it in items if it not in low], cfg, s.key)
    items += negative_items(s, cfg.pools, cfg.negative_rate, len(items))
    return items, dict(sorted(Counter(it["task"] for it in low).items()))


def verified_events(events: list[dict], event_embs: list[np.ndarray | None], frames: Evidence | None) -> list[dict]:
    """Each event with its `verification` (`stages.spans.span_verification`; null without embed's evidence)."""
    out = []
    for event, emb in zip(events, event_embs):
        score = span_verification(emb, frames.embs, frames.times, [[event["start_s"], event["end_s"]]]) if frames is not None else None
        out.append({**event, "verification": score})
    return out


# Reasoning temporal localization: a why/how question written by the captioner's model.

REASON = (
    "These are the events of a video clip, with their times in seconds:\n{events}\nThe clip as a whole: {caption}\n"
    "Write one question that asks why or how one of these events happens, which watching the clip answers. Do not "
    'mention times. Reply with a JSON object: {{"question": "<a why or how question>", "event": <the number of the '
    'event it is about>, "reason": "<one sentence: why or how it happens>"}}'
)


def reason_prompt(events: list[dict], caption: str) -> str:
    listing = "\n".join(f"{n + 1}. ({e['start_s']:.1f}-{e['end_s']:.1f} s) {e['text']}" for n, e in enumerate(events))
    return REASON.format(events=listing, caption=caption or "(no caption)")


def parse_reason(raw: str, events: list[dict], min_score: float) -> dict | None:
    """The model's answer as {question, event (an index), reason, score} when it passes: a why/how
    question without times, one sentence of reason, and the share of the event's content words
    they keep together at least `min_score` (as a rewrite must keep the template's)."""
    try:
        answer = json.loads(raw[raw.index("{") : raw.rindex("}") + 1])
        question, reason, number = str(answer["question"]).strip(), str(answer["reason"]).strip(), int(answer["event"])
    except (ValueError, KeyError, TypeError):
        return None
    if not 1 <= number <= len(events) or not re.match(r"(why|how)\b", question, re.I) or not question.endswith("?"):
        return None
    if re.search(r"[\d{}]", question + reason) or not reason or len(re.findall(r"[.!?](\s|$)", reason)) > 1 or len(reason.split()) > 40:
        return None
    words = content_words(events[number - 1]["text"])
    score = round(len(words & content_words(f"{question} {reason}")) / max(1, len(words)), 3)
    return {"question": question, "event": number - 1, "reason": reason, "score": score} if score >= min_score else None


def reasoned(events: list[dict], caption: str, cfg: GroundConfig, generate, key: str) -> list[dict]:
    """The model's why/how question about one of the clip's events, where it passes `parse_reason`."""
    (raw,) = generate([_prompt(reason_prompt(events, caption), cfg.reason_max_tokens, f"{key}/reason")])
    found = parse_reason(raw, events, cfg.min_rewrite_score)
    return [found] if found else []


# LLM rewrites of template questions.


def rewrite_score(original: str, rewritten: str) -> float:
    """How safely a rephrased question replaces the template: the same time placeholders, no
    other braces, and the share of the original's content words (quoted event text included) it keeps."""
    if sorted(TIME_REF.findall(rewritten)) != sorted(TIME_REF.findall(original)) or "{" in TIME_REF.sub("", rewritten):
        return 0.0
    words = _words(TIME_REF.sub("", original))
    return round(len(words & _words(rewritten)) / max(1, len(words)), 3)


def rewrite_items(items: list[dict], rephrase, min_score: float) -> list[dict]:
    """Ask `rephrase(questions) -> questions` for natural phrasing; keep passing rewrites."""
    if not items:
        return items
    rewritten = rephrase([it["question"] for it in items])
    out = []
    for item, new in zip(items, rewritten):
        if rewrite_score(item["question"], new.strip()) >= min_score:
            item = {**item, "question": new.strip(), "generator": "llm"}
        out.append(item)
    return out


def speech_segments(clip: dict) -> list[dict]:
    """The speech stage's segments of a clip (its `speech` column, on the clip's clock)."""
    speech = json.loads(clip.get("speech") or "null") or {}
    return [] if speech.get("no_speech") else list(speech.get("segments") or [])


def clip_events(clip: dict, refine: bool, changes) -> list[dict]:
    """The captioner's events, refined on split's change scores (`changes`: times, scores) where asked and kept."""
    events = json.loads(clip["events"] or "[]")
    if refine and changes is not None and events:
        return refine_events(events, clip.get("frame_times") or [], clip["end_s"] - clip["start_s"], *changes)
    return events


def ground_clip(clip: dict, cfg: GroundConfig, changes=None, generate=None) -> dict:
    """One clip's GROUNDED row: its events (refined, verified), QA items, the count of items
    dropped by verification per task, and its interleaved document. `generate(prompts) -> answers` is
    the captioner's model (rewrites, reasoning). A clip with no caption and no events is
    rejected; a caption without events ships, with no item (nothing in it has a time)."""
    row = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE}
    duration = clip["end_s"] - clip["start_s"]
    events = clip_events(clip, cfg.refine, changes)
    frames = frame_evidence(clip)
    embs = event_embeddings(clip, len(events))
    events = verified_events(events, embs, frames)
    caption = clip["caption"] or ""
    if not caption and not events:
        return {**row, "status": REJECTED, "reason": "no_grounding: no caption or events to ground"}
    caption_emb = unpack(clip.get("text_emb"))
    s = Sample(
        key=clip["clip_id"], kind="clip", duration=duration, caption=caption, events=events,
        distractors=list(clip.get("distractors") or []), speech=speech_segments(clip), frames=frames,
        query=(caption, caption_emb) if caption and caption_emb is not None else None, negatives=list(clip.get("negatives") or []),
    )
    if generate is not None and cfg.reason and events and cfg.tasks.get("reasoning_temporal_localization", 0) > 0:
        s.reasoned = reasoned(events, caption, cfg, generate, clip["clip_id"])
    items, dropped = build_items(s, cfg)
    documents = [events_document(clip["clip_id"], duration, caption, events, embs, frames, caption_emb, cfg.min_pair_similarity)] if events else []
    if generate is not None and cfg.rewrite:
        rephrase = lambda qs: generate([_prompt(REPHRASE.format(question=q), cfg.rewrite_max_tokens, q) for q in qs])  # noqa: E731
        items = rewrite_items(items, rephrase, cfg.min_rewrite_score)
    return {
        **row, "status": KEPT, "reason": None, "events": json.dumps(events), "qa": json.dumps(items),
        "dropped": json.dumps(dropped), "interleaved": json.dumps(documents),
    }


def _prompt(text: str, max_tokens: int, seed_key: str):
    from vidcurate.stages.captioners import Prompt

    return Prompt([("text", text)], None, max_tokens, 0.0, stable_int(seed_key))


REPHRASE = (
    "Rewrite this question about a video so it reads naturally. Keep every {{spanN}}, {{startN}} and {{endN}} placeholder "
    "and every quoted description exactly as they are. Reply with the question only.\nQuestion: {question}"
)


# Windows: video-level samples over contiguous shipped clips, made by the shard stage.


def windows(clips: list[dict], cfg: GroundConfig) -> list[dict]:
    """Video-level samples: runs of contiguous kept clips of one video, at most `max_window_s`
    long, with every event, frame and QA span re-expressed relative to the window's start."""
    out = []
    by_video: dict[str, list[dict]] = {}
    for clip in clips:
        by_video.setdefault(clip["video_id"], []).append(clip)
    for video_id, group in sorted(by_video.items()):
        group.sort(key=lambda c: c["start_s"])
        run: list[dict] = []
        for clip in group + [None]:
            fits = clip is not None and run and abs(clip["start_s"] - run[-1]["end_s"]) < 1e-3
            fits = fits and clip["end_s"] - run[0]["start_s"] <= cfg.max_window_s
            if clip is not None and (not run or fits):
                run.append(clip)
                continue
            if len(run) > 1:
                out.append(_window(video_id, run, cfg))
            run = [clip] if clip is not None else []
    return out


def _window(video_id: str, run: list[dict], cfg: GroundConfig) -> dict:
    start = run[0]["start_s"]
    events, captions, speech, reasoned, frames = [], [], [], [], []
    for clip in run:
        offset = round(clip["start_s"] - start, 3)
        captions.append(clip["caption"] or "")
        first = len(events)
        for e in json.loads(clip["events"] or "[]"):
            events.append({**e, **{k: round(e[k] + offset, 3) for k in ("start_s", "end_s", "coarse_start_s", "coarse_end_s") if k in e}})
        speech += [{**g, "start_s": round(g["start_s"] + offset, 3), "end_s": round(g["end_s"] + offset, 3)} for g in speech_segments(clip)]
        reasoned += [_carried(it, first, offset) for it in json.loads(clip.get("qa") or "[]") if it["task"] == "reasoning_temporal_localization"]
        if (f := frame_evidence(clip)) is not None:
            frames.append(Evidence(f.embs, f.times + offset))
    duration = round(run[-1]["end_s"] - start, 3)
    window_id = f"{video_id}_w{round(start * 1000):09d}_{round(run[-1]['end_s'] * 1000):09d}"
    s = Sample(
        key=window_id, kind="window", duration=duration, caption=" ".join(c for c in captions if c), events=events, speech=speech,
        frames=Evidence(np.concatenate([f.embs for f in frames]), np.concatenate([f.times for f in frames])) if len(frames) == len(run) else None,
        query=_window_query(run, window_id),
    )
    items, dropped = build_items(s, cfg)
    items += [it for it in reasoned if cfg.tasks.get(it["task"], 0) > 0]
    return {
        "window_id": window_id,
        "video_id": video_id,
        "source_uri": run[0]["source_uri"],
        "source_start_s": start,
        "source_end_s": run[-1]["end_s"],
        "start_frame": run[0]["start_frame"],
        "end_frame": run[-1]["end_frame"],
        "duration_s": duration,
        "clips": [{"key": c["clip_id"], "offset_s": round(c["start_s"] - start, 3)} for c in run],
        "caption": s.caption,
        "events": events,
        "model": run[0]["model"],
        "qa": items,
        "dropped": dropped,
        "speech": window_speech(run),
    }


def window_speech(run: list[dict]) -> dict | None:
    """What is said in a window: its clips' transcripts in order on the window's clock (its audio
    is theirs, end to end); None where the speech stage did not hear them."""
    heard = [json.loads(clip["speech"]) if clip.get("speech") else None for clip in run]
    if any(h is None for h in heard):
        return None
    start = run[0]["start_s"]
    merged: dict = {"segments": [], "words": [], "voice_activity": []}
    for clip, h in zip(run, heard):
        offset = clip["start_s"] - start
        for field_name in merged:
            merged[field_name] += [{**x, "start_s": round(x["start_s"] + offset, 3), "end_s": round(x["end_s"] + offset, 3)} for x in h.get(field_name) or []]
    languages = Counter(h["language"] for h in heard if not h["no_speech"] and h["language"])
    return {
        **merged,
        "language": languages.most_common(1)[0][0] if languages else None,
        "no_speech": all(h["no_speech"] for h in heard),
        "model": heard[0]["model"],
    }


def _carried(item: dict, first_event: int, offset: float) -> dict:
    """A clip's model-written item in its window: the same text about the same events, on the window's clock."""
    spans = [[round(a + offset, 3), round(b + offset, 3)] for a, b in item["spans"]]
    return {**item, "events": [first_event + i for i in item["events"]], "spans": spans}


def _window_query(run: list[dict], window_id: str) -> tuple[str, np.ndarray] | None:
    """Highlight detection's query in a window: one of its clips' captions (seeded), so the
    highlights are where in the window that description fits best."""
    described = [(c["caption"], emb) for c in run if c.get("caption") and (emb := unpack(c.get("text_emb"))) is not None]
    return described[stable_int(f"{window_id}/query") % len(described)] if described else None


class GroundWorker:
    """The stage core (an actor on Ray): items for every clip; with `rewrite` or `reason`, also
    the captioner's model (loaded once per actor)."""

    def __init__(self, cfg: GroundConfig, caption_cfg):
        self.cfg = cfg
        self.generate = None
        if cfg.rewrite or cfg.reason:
            from vidcurate.stages.caption import make_captioner

            self.generate = make_captioner(caption_cfg).generate

    def __call__(self, batch):
        from vidcurate.schemas.tables import to_table

        rows = []
        for clip in batch.to_pylist():
            changes = read_changes(clip.get("frames_uri")) if self.cfg.refine else None
            rows.append(ground_clip(clip, self.cfg, changes, self.generate))
        return to_table(rows, GROUNDED)


def distractor_pool(clips: list[dict], per_clip: int = 6) -> dict[str, list[str]]:
    """For each clip, event texts from other clips of the same video: plausible wrong options."""
    by_video: dict[str, list[tuple[str, str]]] = {}
    for clip in clips:
        for e in json.loads(clip["events"] or "[]"):
            by_video.setdefault(clip["video_id"], []).append((clip["clip_id"], e["text"]))
    return {
        c["clip_id"]: [t for owner, t in by_video.get(c["video_id"], []) if owner != c["clip_id"]][:per_clip] for c in clips
    }


NEGATIVE_DRAWS = 64  # candidates from other videos looked at per clip


def negative_pool(clips: list[dict], per_clip: int = 8) -> dict[str, list[str]]:
    """For each clip, event texts of other videos that are unlike it: sharing no content word
    with its caption and events, and where embed ran, matching its frames worse than any of its
    own events' texts does. A seeded draw of `NEGATIVE_DRAWS` candidates per clip keeps this
    linear in the corpus."""
    pool = []
    for clip in clips:
        texts = [e["text"] for e in json.loads(clip["events"] or "[]")]
        pool += [(clip["video_id"], t, emb) for t, emb in zip(texts, event_embeddings(clip, len(texts)))]
    out = {}
    for clip in clips:
        own = [e["text"] for e in json.loads(clip["events"] or "[]")]
        words = set().union(content_words(clip["caption"] or ""), *(content_words(t) for t in own))
        image = unpack(clip.get("image_emb"))
        own_embs = [e for e in event_embeddings(clip, len(own)) if e is not None]
        bar = min(float(image @ e) for e in own_embs) if image is not None and own_embs else None
        rng = np.random.default_rng(stable_int(f"{clip['clip_id']}/negatives"))
        found: list[str] = []
        for n in sorted(set(rng.integers(0, len(pool), NEGATIVE_DRAWS).tolist())) if pool else []:
            video, text, emb = pool[n]
            if video == clip["video_id"] or text in found or content_words(text) & words or not content_words(text):
                continue
            if bar is not None and (emb is None or float(image @ emb) >= bar):
                continue
            found.append(text)
        out[clip["clip_id"]] = found[:per_clip]
    return out


def with_context(clips: list[dict], _ctx) -> list[dict]:
    """Whole-run step before the map: each clip's distractors (its video's other clips' events)
    and negative queries (other videos' events unlike it)."""
    distractors, negatives = distractor_pool(clips), negative_pool(clips)
    return [{**c, "distractors": distractors[c["clip_id"]], "negatives": negatives[c["clip_id"]]} for c in clips]


SPEC = Stage(
    name=STAGE,
    config_model=GroundConfig,
    table=GROUNDED,
    columns=("clip_id", "video_id", "start_s", "end_s", "caption", "events", "frame_times", "distractors", "negatives"),
    optional=("frames_uri", "image_emb", "text_emb", "span_frame_embs", "span_frame_times", "event_embs", "speech"),
    needs=("caption",),
    sections=("caption",),  # rewriting and reasoning run the captioner's model
    run_fields=("profile",),
    reasons={"no_grounding": (REJECTED, "no caption or events to ground")},
    # random CLIP: a span's verification and a pair's similarity are chance, nothing is dropped for them
    tiny_defaults={"min_verification": 0.0, "min_pair_similarity": -1.0},
    core=GroundWorker,
    arguments=lambda ctx: {"cfg": ctx.config, "caption_cfg": ctx.sections["caption"]},
    prepare=with_context,
    redo_unit=None,  # negatives come from every video of the run: an update redoes the whole table
    unhashed=("in_context_k",),  # the shard stage's alone (it reads this section): ground need not run again
)
