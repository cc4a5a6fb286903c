"""Grounded QA: golden template items per task type, span bounds, windows, LLM rewrites under
verification, and exporters that round-trip every span."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from vidcurate.pipelines.export import FORMATS, parse_times, records, render
from vidcurate.stages.caption import CaptionConfig
from vidcurate.stages.ground import TASKS, dedupe, ground_clip, rewrite_items, rewrite_score, template_items, verify, windows

GOLDEN = json.loads((Path(__file__).parent / "golden" / "ground_items.json").read_text())


def _random_events(rng: random.Random, duration: float, n: int) -> list[dict]:
    events = []
    for i in range(n):
        a = round(rng.uniform(0, duration - 0.3), 2)
        end = math.floor(min(duration, a + rng.uniform(0.2, 3)) * 100) / 100
        events.append({"start_s": a, "end_s": end, "text": f"event {rng.choice('abcdef')} {i % 3}"})
    return events


def test_golden_items_cover_every_task_type():
    case = GOLDEN["input"]
    items = dedupe(template_items(case["events"], case["caption"], case["duration_s"], case["key"], case["distractors"]))
    assert items == GOLDEN["items"]
    assert {it["task"] for it in items} == set(TASKS)


def test_repeated_event_text_is_never_grounded_to_one_span():
    items = GOLDEN["items"]
    grounding = [it["question"] for it in items if it["task"] in ("temporal_grounding", "temporal_ordering")]
    assert not any("a man opens the door" in q for q in grounding)  # it happens twice
    (both,) = [it for it in items if it["task"] == "moment_localisation" and "door" in it["question"]]
    assert both["spans"] == [[0.5, 2.0], [5.0, 6.0]]


@pytest.mark.parametrize("seed", range(20))
def test_every_span_is_inside_the_sample_and_every_placeholder_has_one(seed):
    rng = random.Random(seed)
    duration = rng.uniform(1, 30)
    items = template_items(_random_events(rng, duration, rng.randint(0, 6)), "a caption", duration, f"k{seed}", ["other"])
    for item in items:
        assert all(0 <= a < b <= duration + 1e-6 for a, b in item["spans"])
        refs = {int(n) for n in re.findall(r"\{span(\d+)\}", item["question"] + item["answer"])}
        assert refs <= set(range(len(item["spans"])))
        assert verify(item, duration) == 1.0


def test_clip_without_caption_or_events_is_rejected_with_a_reason():
    row = ground_clip({"clip_id": "v_0_1", "video_id": "v", "start_s": 0.0, "end_s": 1.0, "caption": None, "events": None}, [])
    assert row["status"] == "rejected" and row["reason"].startswith("no_grounding")


def test_rewrites_are_kept_only_when_verified():
    item = {"task": "grounded_caption", "question": 'What does "the dog runs" show during {span0}?', "answer": "x", "spans": [[0, 1]], "verification": 1.0}
    assert rewrite_score(item["question"], "During {span0}, what is the dog doing as it runs?") >= 0.6
    assert rewrite_score(item["question"], "What does the dog do?") == 0.0  # placeholder lost
    assert rewrite_score(item["question"], "Tell me about {span0} please") < 0.6  # the event's words are gone
    good, bad = rewrite_items([item, item], lambda qs: ["During {span0}, what does the dog that runs show?", "{span0}?"], 0.6)
    assert good["generator"] == "llm" and 0.6 <= good["verification"] <= 1
    assert bad == item  # template kept


def test_tiny_model_rewrites_fall_back_to_templates(cut_clips):
    from vidcurate.stages.caption import make_captioner
    from vidcurate.stages.captioners import Prompt

    captioner = make_captioner(CaptionConfig())
    rephrase = lambda qs: captioner.generate([Prompt([("text", q)], None, 32, 0.0, 1) for q in qs])  # noqa: E731
    items = rewrite_items(template_items(GOLDEN["input"]["events"], "a caption", 8.0, "k"), rephrase, 0.6)
    assert items and all(it["generator"] == "template" and it["verification"] == 1.0 for it in items)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exporters_round_trip_every_span(fmt):
    for item in GOLDEN["items"]:
        for text in (item["question"], item["answer"]):
            order = [int(n) for n in re.findall(r"\{span(\d+)\}", text)]
            if fmt == "vtimellm":  # boundary tokens numbered from the item's first span
                expected = [[float(k), float(k)] for k in order]
            else:
                expected = [[round(v, 1) for v in item["spans"][k]] for k in order]
            assert parse_times(render(text, item["spans"], fmt), fmt) == expected
    assert "{span" not in json.dumps(records("media/k.mp4", "k", 10.0, GOLDEN["items"], fmt))


def test_vtimellm_tokens_carry_every_span_in_meta():
    (rec,) = records("media/k.mp4", "k", 10.0, GOLDEN["items"], "vtimellm")
    text = " ".join(turn["value"] for turn in rec["conversations"])
    spans = [span for item in GOLDEN["items"] for span in item["spans"]]
    tokens = [int(a) for a, _ in parse_times(text, "vtimellm")]
    assert tokens and set(tokens) <= set(range(len(spans)))  # a span no text names (summarisation) has no token
    assert [[rec["meta"]["token"][f"<s{k}>"], rec["meta"]["token"][f"<e{k}>"]] for k in range(len(spans))] == spans
    assert rec["meta"]["duration"] == 10.0 and rec["conversations"][0]["value"].startswith("<video>\n")


def test_qa_layout_trainers_get_one_instruction_per_record():
    """TimeSuite and TimeChat keep only the first item's instruction: a record never mixes tasks."""
    for fmt in ("timesuite", "timeit"):
        out = records("media/k.mp4", "k", 10.0, GOLDEN["items"], fmt)
        assert len(out) == len({it["task"] for it in GOLDEN["items"]})
        assert all(len({qa["i"] for qa in rec["QA"]}) == 1 and rec["video"] == "media/k.mp4" for rec in out)


def _clip(video: str, start: float, end: float, events: list[tuple[float, float, str]]) -> dict:
    return {
        "clip_id": f"{video}_{round(start * 1000):09d}_{round(end * 1000):09d}",
        "video_id": video,
        "source_uri": f"/videos/{video}.mp4",
        "start_s": start,
        "end_s": end,
        "start_frame": round(start * 25),
        "end_frame": round(end * 25),
        "model": "tiny",
        "caption": f"clip at {start}",
        "events": json.dumps([{"start_s": a, "end_s": b, "text": t} for a, b, t in events]),
    }


def test_windows_span_contiguous_clips_and_keep_items_inside():
    clips = [
        _clip("v", 0.0, 4.0, [(0.0, 2.0, "one"), (2.0, 4.0, "two")]),
        _clip("v", 4.0, 9.0, [(1.0, 3.0, "three")]),
        _clip("v", 9.0, 12.0, [(0.5, 1.0, "four")]),  # would exceed max_window_s=10
        _clip("v", 15.0, 18.0, [(0.0, 1.0, "after a gap")]),  # not contiguous
        _clip("w", 0.0, 3.0, [(0.0, 1.0, "other video")]),
    ]
    (window,) = windows(clips, max_window_s=10.0)
    assert [c["key"] for c in window["clips"]] == [clips[0]["clip_id"], clips[1]["clip_id"]]
    assert (window["source_start_s"], window["source_end_s"], window["duration_s"]) == (0.0, 9.0, 9.0)
    (three,) = [it for it in window["qa"] if it["task"] == "temporal_grounding" and "three" in it["question"]]
    assert three["spans"] == [[5.0, 7.0]]  # relative to the window start
    text = json.dumps(window["qa"])
    assert "four" not in text and "after a gap" not in text and "other video" not in text
    assert all(0 <= a < b <= window["duration_s"] for it in window["qa"] for a, b in it["spans"])
