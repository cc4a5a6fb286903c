"""Ground stage: dense timestamped events -> grounded QA items and interleaved frame/text parts.

Items are stored format-neutral: spans are numbers (seconds from the sample's start) and the
question/answer text refers to them as `{span0}`, `{span1}`, ... so every exporter renders
times in its own trainer's style from the same record (`pipelines.export`).

Templates always run; optional LLM rewriting rephrases questions through the captioner's
backend and keeps a rewrite only if it passes verification (placeholders intact, the event's
words still there); otherwise the template stands. Each item carries its verification score.
"""

from __future__ import annotations

import json
import math
import re

from pydantic import Field

from vidcurate.schemas.tables import GROUNDED, KEPT, REJECTED, stable_int
from vidcurate.stages.contract import Stage
from vidcurate.stages.settings import StageResources, StrictModel


class GroundConfig(StrictModel):
    max_window_s: float = Field(60.0, gt=0, description="video-level samples span contiguous clips up to this long")
    rewrite: bool = Field(False, description="rephrase template questions with the captioner's model")
    min_rewrite_score: float = Field(0.6, ge=0, le=1, description="verification a rewrite needs to replace the template")
    rewrite_max_tokens: int = Field(96, ge=8)
    resources: StageResources = StageResources(batch_size=16)


STAGE = "ground"
TASKS = (
    "temporal_grounding",
    "dense_captioning",
    "grounded_caption",
    "moment_localisation",
    "highlight_detection",
    "temporal_ordering",
    "multiple_choice",
    "summarisation",
)
_WORD = re.compile(r"[a-z0-9']+")


def _safe(text: str) -> str:
    """Event text inside templates: braces would read as placeholders."""
    return text.replace("{", "(").replace("}", ")")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _pick(key: str, n: int) -> int:
    return stable_int(key) % n


def _item(task: str, question: str, answer: str, spans: list[list[float]], **extra) -> dict:
    return {"task": task, "question": question, "answer": answer, "spans": spans, "generator": "template", "verification": 1.0, **extra}


def template_items(events: list[dict], caption: str, duration_s: float, key: str, distractors: list[str] = ()) -> list[dict]:
    """QA items of every task type the events support; `key` seeds the option order."""
    events = sorted(events, key=lambda e: (e["start_s"], e["end_s"]))
    spans = [[e["start_s"], e["end_s"]] for e in events]
    texts = [_safe(e["text"]) for e in events]
    items: list[dict] = []
    if caption:
        items.append(_item("summarisation", "Summarise the video.", _safe(caption), [[0.0, math.floor(duration_s * 1000) / 1000]]))
    if not events:
        return items
    dense = " ".join(f"{{span{i}}}, {t}." for i, t in enumerate(texts))
    items.append(_item("dense_captioning", "Describe every event in the video with its start and end time.", dense, spans))
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        by_text.setdefault(text.lower(), []).append(i)
    for i, (span, text) in enumerate(zip(spans, texts)):
        items.append(_item("grounded_caption", "What happens during {span0}?", text, [span]))
        if len(by_text[text.lower()]) > 1:
            continue  # a repeated event has no single span: moment localisation asks for all of them
        items.append(_item("temporal_grounding", f'When does "{text}" happen in the video?', "{span0}.", [span]))
        if i + 1 < len(events):
            items.append(_item("temporal_ordering", f'What happens right after "{text}"?', f"{texts[i + 1]}, {{span0}}.", [spans[i + 1]]))
    for idxs in by_text.values():
        answer = " and ".join(f"{{span{k}}}" for k in range(len(idxs)))
        items.append(_item("moment_localisation", f'Find every moment where "{texts[idxs[0]]}".', answer, [spans[i] for i in idxs]))
    if caption:
        query = _words(caption)
        saliency = [round(len(_words(t) & query) / max(1, len(_words(t))), 3) for t in texts]
        top = [i for i, s in enumerate(saliency) if s > 0] or list(range(len(events)))
        answer = " ".join(f"{{span{k}}} (saliency {saliency[i]:.2f})." for k, i in enumerate(top))
        question = f'Which moments match the description "{_safe(caption)}"? Give each with a saliency score.'
        items.append(_item("highlight_detection", question, answer, [spans[i] for i in top], saliency=[saliency[i] for i in top]))
    pool = list(dict.fromkeys([*texts, *(_safe(d) for d in distractors)]))
    for i, (span, text) in enumerate(zip(spans, texts)):
        wrong = [t for t in pool if t.lower() != text.lower()][:3]
        if not wrong:
            continue
        options = [text, *wrong]
        options = options[_pick(f"{key}/{i}", len(options)) :] + options[: _pick(f"{key}/{i}", len(options))]
        letter = "ABCD"[options.index(text)]
        listing = " ".join(f"({'ABCD'[k]}) {o}" for k, o in enumerate(options))
        items.append(_item("multiple_choice", f"What happens during {{span0}}? {listing}", f"({letter}) {text}", [span], options=options))
    return items


def verify(item: dict, duration_s: float) -> float:
    """1.0 for a sound item; 0 when a span leaves [0, duration] or a placeholder has no span."""
    refs = {int(n) for n in re.findall(r"\{span(\d+)\}", item["question"] + item["answer"])}
    if any(r >= len(item["spans"]) for r in refs):
        return 0.0
    if any(not (0 <= a < b <= duration_s + 1e-6) for a, b in item["spans"]):
        return 0.0
    return item["verification"]


def rewrite_score(original: str, rewritten: str) -> float:
    """How safely a rephrased question replaces the template: same placeholders, and the share
    of the original's content words (quoted event text included) it still contains."""
    placeholders = sorted(re.findall(r"\{span\d+\}", original))
    if sorted(re.findall(r"\{span\d+\}", rewritten)) != placeholders or "{" in re.sub(r"\{span\d+\}", "", rewritten):
        return 0.0
    words = _words(re.sub(r"\{span\d+\}", "", original))
    return round(len(words & _words(rewritten)) / max(1, len(words)), 3)


def rewrite_items(items: list[dict], rephrase, min_score: float) -> list[dict]:
    """Ask `rephrase(questions) -> questions` for natural phrasing; keep passing rewrites."""
    if not items:
        return items
    rewritten = rephrase([it["question"] for it in items])
    out = []
    for item, new in zip(items, rewritten):
        score = rewrite_score(item["question"], new.strip())
        if score >= min_score:
            item = {**item, "question": new.strip(), "generator": "llm", "verification": score}
        out.append(item)
    return out


def dedupe(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = (item["task"], item["question"].lower(), json.dumps(item["spans"]))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def interleaved(events: list[dict], caption: str) -> list[dict]:
    """Frame/text parts in time order (OBELICS/MMICL-like): the frame at each event's start,
    then what happens; the caption closes the document."""
    parts: list[dict] = []
    for e in sorted(events, key=lambda e: e["start_s"]):
        parts += [{"type": "frame", "t": e["start_s"]}, {"type": "text", "text": f"{e['text']}."}]
    if caption:
        parts.append({"type": "text", "text": caption})
    return parts


def ground_clip(clip: dict, distractors: list[str], rephrase=None, min_rewrite_score: float = 0.6) -> dict:
    """One clip's GROUNDED row; a clip with no caption and no events has nothing to ground."""
    events = json.loads(clip["events"] or "[]")
    caption = clip["caption"] or ""
    duration = clip["end_s"] - clip["start_s"]
    row = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE}
    items = dedupe(template_items(events, caption, duration, clip["clip_id"], distractors))
    if rephrase is not None:
        items = rewrite_items(items, rephrase, min_rewrite_score)
    items = [{**it, "verification": verify(it, duration)} for it in items]
    items = [it for it in items if it["verification"] > 0]
    if not items:
        return {**row, "status": REJECTED, "reason": "no_grounding: no caption or events to ground"}
    return {**row, "status": KEPT, "reason": None, "qa": json.dumps(items), "interleaved": json.dumps(interleaved(events, caption))}


def windows(clips: list[dict], max_window_s: float) -> list[dict]:
    """Video-level samples: runs of contiguous kept clips of one video, at most `max_window_s`
    long, with every event and QA span re-expressed relative to the window's start."""
    out = []
    by_video: dict[str, list[dict]] = {}
    for clip in clips:
        by_video.setdefault(clip["video_id"], []).append(clip)
    for video_id, group in sorted(by_video.items()):
        group.sort(key=lambda c: c["start_s"])
        run: list[dict] = []
        for clip in group + [None]:
            fits = clip is not None and run and abs(clip["start_s"] - run[-1]["end_s"]) < 1e-3
            fits = fits and clip["end_s"] - run[0]["start_s"] <= max_window_s
            if clip is not None and (not run or fits):
                run.append(clip)
                continue
            if len(run) > 1:
                out.append(_window(video_id, run))
            run = [clip] if clip is not None else []
    return out


def _window(video_id: str, run: list[dict]) -> dict:
    start = run[0]["start_s"]
    events, captions = [], []
    for clip in run:
        offset = clip["start_s"] - start
        captions.append(clip["caption"] or "")
        for e in json.loads(clip["events"] or "[]"):
            events.append({**e, "start_s": round(e["start_s"] + offset, 3), "end_s": round(e["end_s"] + offset, 3)})
    duration = round(run[-1]["end_s"] - start, 3)
    window_id = f"{video_id}_w{round(start * 1000):09d}_{round(run[-1]['end_s'] * 1000):09d}"
    caption = " ".join(c for c in captions if c)
    items = [{**it, "verification": verify(it, duration)} for it in dedupe(template_items(events, caption, duration, window_id))]
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
        "caption": caption,
        "events": events,
        "model": run[0]["model"],
        "qa": [it for it in items if it["verification"] > 0],
    }


REPHRASE = (
    "Rewrite this question about a video so it reads naturally. Keep every {{spanN}} placeholder and "
    "every quoted description exactly as they are. Reply with the question only.\nQuestion: {question}"
)


class GroundWorker:
    """The stage core (an actor on Ray): templates for every clip; with `rewrite`, also the captioner's model
    (loaded once per actor) to rephrase questions."""

    def __init__(self, cfg: GroundConfig, caption_cfg):
        self.cfg = cfg
        self.rephrase = None
        if cfg.rewrite:
            from vidcurate.stages.caption import make_captioner

            captioner = make_captioner(caption_cfg)
            self.rephrase = lambda questions: captioner.generate([self._prompt(q) for q in questions])

    def _prompt(self, question: str):
        from vidcurate.stages.captioners import Prompt

        prompt = [("text", REPHRASE.format(question=question))]
        return Prompt(prompt, None, self.cfg.rewrite_max_tokens, 0.0, stable_int(question))

    def __call__(self, batch):
        from vidcurate.schemas.tables import to_table

        rows = [ground_clip(c, c["distractors"], self.rephrase, self.cfg.min_rewrite_score) for c in batch.to_pylist()]
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


def with_distractors(clips: list[dict], _ctx) -> list[dict]:
    """Whole-run step before the map: each clip's distractors come from its video's other clips."""
    pool = distractor_pool(clips)
    return [{**c, "distractors": pool[c["clip_id"]]} for c in clips]


SPEC = Stage(
    name=STAGE,
    config_model=GroundConfig,
    table=GROUNDED,
    columns=("clip_id", "video_id", "start_s", "end_s", "caption", "events", "distractors"),
    needs=("caption",),
    sections=("caption",),  # rewriting runs the captioner's model
    run_fields=("profile",),
    reasons={"no_grounding": (REJECTED, "no caption or events to ground")},
    core=GroundWorker,
    arguments=lambda ctx: {"cfg": ctx.config, "caption_cfg": ctx.sections["caption"]},
    prepare=with_distractors,
    redo_unit="video_id",
)
