"""Grounded QA: every task from the data it needs (and none without it), pools drawn by the
sample key, bad pools and mixes refused before any work, negatives, the task mix, boundary
refinement and span verification from the embed stage's embeddings (built here so the truth is
known), windows, LLM rewrites and reasoning under their checks, and the exporters' wording."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS, INSTRUCTIONS, TRAINERS, leaks, parse_moments, parse_times, record, records, render, turns_of
from vidcurate.schemas.sample import LEGACY_TASKS, TASKS, TIME_REF, VALIDATORS
from vidcurate.stages.caption import CaptionConfig
from vidcurate.stages.ground import (
    GroundConfig, Sample, build_items, ground_clip, negative_pool, parse_reason, rewrite_items, rewrite_score, windows,
)
from vidcurate.stages.ground_pools import FORMS, NEGATIVES, load_pools

DIM = 6
EVENTS = [
    {"start_s": 0.5, "end_s": 2.0, "text": "a man opens the door"},
    {"start_s": 2.5, "end_s": 4.5, "text": "the dog runs outside"},
    {"start_s": 5.0, "end_s": 6.0, "text": "a man opens the door"},
]
SPEECH = {"segments": [{"start_s": 0.2, "end_s": 1.4, "text": "come on, boy"}, {"start_s": 3.0, "end_s": 4.0, "text": "good dog"}], "language": "en", "no_speech": False}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _axis(k: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[k]


def _f16(rows) -> bytes:
    return np.asarray(rows, np.float32).astype(np.float16).tobytes()


def embedded(event_axes=(0, 1, 0), caption=_unit([0.6, 0.8, 0, 0, 0, 0])) -> dict:
    """The embed stage's columns for a clip of EVENTS, built so the truth is known: frames (2 a
    second over 8 s) inside a door event point along axis 0, inside the dog event along axis 1,
    the rest along axis 5; each event text along `event_axes`."""
    times = np.arange(16) / 2
    frames = [_axis(0) if any(e["start_s"] <= t <= e["end_s"] and e["text"].startswith("a man") for e in EVENTS)
              else _axis(1) if EVENTS[1]["start_s"] <= t <= EVENTS[1]["end_s"] else _axis(5) for t in times]
    return {
        "span_frame_embs": _f16(frames), "span_frame_times": times.tolist(), "event_embs": _f16([_axis(k) for k in event_axes]),
        "text_emb": _f16(caption), "image_emb": _f16(_unit(np.mean(frames, axis=0))),
    }


def clip_row(key: str = "ab_000000000_000008000", events=EVENTS, **extra) -> dict:
    return {
        "clip_id": key, "video_id": key.split("_")[0], "start_s": 0.0, "end_s": 8.0, "caption": "A man lets the dog out into the garden.",
        "events": json.dumps(events), "frame_times": [0.0, 2.0, 4.0, 6.0], "distractors": ["a cat sleeps"], "negatives": [], **extra,
    }


def reasoning_double(prompts) -> list[str]:
    """The test double at the captioning backend interface (`generate(prompts) -> answers`): a
    model answering the reasoning prompt about its event 2."""
    assert all(p.parts[0][1].startswith("These are the events") for p in prompts)
    return [json.dumps({"question": "Why does the dog run outside?", "event": 2, "reason": "The dog runs outside because the man opened the door for it."})] * len(prompts)


def _cfg(**settings) -> GroundConfig:
    return GroundConfig(**settings)


def _items(row: dict) -> list[dict]:
    return json.loads(row["qa"])


def _by_task(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in items:
        out.setdefault(item["task"], []).append(item)
    return out


@pytest.fixture(scope="module")
def everything() -> dict[str, list[dict]]:
    """Every task of a clip with all the data (embed's columns, speech, reasoning) and of a window over two such clips."""
    cfg = _cfg(reason=True, negative_rate=0.0)
    clip = clip_row(speech=json.dumps(SPEECH), **embedded())
    row = ground_clip(clip, cfg, generate=reasoning_double)
    second = clip_row("ab_000008000_000016000", **embedded())
    second = {**second, "start_s": 8.0, "end_s": 16.0, **ground_clip(second, cfg, generate=reasoning_double)}
    window_rows = [{**c, "source_uri": "/v.mp4", "start_frame": 0, "end_frame": 200, "model": "m", "qa": r["qa"], "events": r["events"]}
                   for c, r in ((clip, row), (second, second))]
    (window,) = windows(window_rows, cfg)
    return {"clip": _items(row), "window": window["qa"], "events": json.loads(row["events"])}


def test_every_task_is_made_where_its_data_is(everything):
    made = set(_by_task(everything["clip"])) | set(_by_task(everything["window"]))
    assert made == set(TASKS)
    assert "step_localization" not in _by_task(everything["clip"])  # steps: the ordered events of a window


def test_each_task_answers_from_its_own_data(everything):
    clip = _by_task(everything["clip"])
    door, dog = [[0.5, 2.0], [5.0, 6.0]], [[2.5, 4.5]]
    assert sorted(it["spans"] for it in clip["temporal_video_grounding"]) == [door, dog]  # a repeated text: every span
    (dense,) = clip["dense_video_captioning"]
    assert dense["spans"] == [[e["start_s"], e["end_s"]] for e in EVENTS] and dense["events"] == [0, 1, 2]
    (tgc,) = clip["temporal_grounded_caption"]
    assert all(f"{{start{k}}} to {{end{k}}}" in tgc["answer"] for k in range(3))
    (speech,) = clip["transcribed_speech_generation"]
    assert speech["spans"] == [[0.2, 1.4], [3.0, 4.0]] and "good dog" in speech["answer"] and speech["events"] == []
    (reasoning,) = clip["reasoning_temporal_localization"]
    assert reasoning["spans"] == dog and "Why does the dog run outside?" in reasoning["question"] and "opened the door" in reasoning["answer"]
    assert reasoning["generator"] == "llm"
    (highlight,) = clip["highlight_detection"]
    assert "A man lets the dog out" in highlight["question"]  # the query is the clip's description, no event's own text
    assert highlight["spans"] == dog and highlight["saliency"] == [1.0]  # the caption leans to the dog's frames
    (summary,) = clip["video_summarization"]
    assert all(0 <= v <= 1 for v in summary["saliency"]) and summary["spans"] == sorted(summary["spans"])
    (steps,) = _by_task(everything["window"])["step_localization"]
    assert [it for it in steps["answer"].split() if re.fullmatch(r"\d\.", it)] == [f"{k}." for k in range(1, 7)]
    assert steps["spans"][3] == [8.5, 10.0]  # the second clip's first event, on the window's clock


def test_every_item_names_only_its_spans_inside_the_sample(everything):
    for kind, duration in (("clip", 8.0), ("window", 16.0)):
        for item in everything[kind]:
            assert all(0 <= a < b <= duration for a, b in item["spans"])
            assert {int(k) for _, k in TIME_REF.findall(item["question"] + item["answer"])} <= set(range(len(item["spans"])))


def test_tasks_without_their_data_are_left_out_not_faked():
    items = _by_task(_items(ground_clip(clip_row(), _cfg(reason=True, negative_rate=0.0))))  # no embed, no speech, no model
    assert "highlight_detection" not in items and "transcribed_speech_generation" not in items
    assert "reasoning_temporal_localization" not in items
    assert all(it["verification"] is None for group in items.values() for it in group)  # not 1.0
    silent = clip_row(speech=json.dumps({"segments": [], "language": None, "no_speech": True}))
    assert "transcribed_speech_generation" not in _by_task(_items(ground_clip(silent, _cfg())))


def test_a_caption_without_events_ships_without_items_and_nothing_at_all_is_rejected():
    row = ground_clip(clip_row(events=[]), _cfg())
    assert row["status"] == "kept" and _items(row) == []
    row = ground_clip({**clip_row(events=[]), "caption": None}, _cfg())
    assert row["status"] == "rejected" and row["reason"].startswith("no_grounding")


@pytest.mark.parametrize(
    "answer",
    [
        {"question": "What does the dog do?", "event": 2, "reason": "It runs outside."},  # not why/how
        {"question": "Why does the dog run outside at 2.5 seconds?", "event": 2, "reason": "The door opened."},  # a time
        {"question": "Why does the dog run outside?", "event": 9, "reason": "The dog runs outside."},  # no such event
        {"question": "How does it happen?", "event": 2, "reason": "Somehow."},  # not about the event's content
        {"question": "Why does the dog run outside?", "event": 2, "reason": "The dog runs. The door is open."},  # two sentences
    ],
)
def test_reasoning_items_are_kept_only_when_they_pass_their_check(answer):
    assert parse_reason(json.dumps(answer), EVENTS, 0.6) is None
    assert parse_reason("not json", EVENTS, 0.6) is None


def test_shipped_pools_have_ten_phrasings_per_task_in_several_forms():
    pools = load_pools(None)
    for task in TASKS:
        lists = pools.tasks[task]
        assert len(lists.get("questions", lists.get("pairs", []))) >= 10, task
    questions = [q for t in TASKS for q in pools.tasks[t].get("questions", [])] + [p["q"] for p in pools.tasks["multi_format_temporal_grounding"]["pairs"]]
    assert any(q.endswith("?") for q in questions) and any(q.endswith(".") and "___" not in q for q in questions)  # questions, instructions
    assert sum("___" in q for q in questions) >= len(TASKS)  # fill-in-the-blank
    answers = [p["a"] for p in pools.tasks["multi_format_temporal_grounding"]["pairs"]]
    forms = {"span": "{span0}", "from-to": "{start0} to {end0}", "start only": "{start0}.", "end only": "{end0}."}
    for form, text in forms.items():
        assert any(text in a and (form != "start only" or "{end0}" not in a) for a in answers), form
    assert pools.tasks[NEGATIVES]["answers"]


def test_draws_are_seeded_by_the_sample_key_and_vary_across_samples():
    cfg = _cfg()
    first = _items(ground_clip(clip_row(), cfg))
    assert _items(ground_clip(clip_row(), cfg)) == first  # a re-run phrases every item alike
    questions, answers = Counter(), Counter()
    for n in range(40):
        for item in _items(ground_clip(clip_row(f"ab_{n:09d}_{n + 8000:09d}"), cfg)):
            if item["task"] == "multi_format_temporal_grounding":
                questions[item["question"]] += 1
                answers[re.sub(r"[a-z ]+(?=\.)", "TEXT", item["answer"])] += 1
    assert len(questions) >= 8 and len(answers) >= 5  # many wordings, and answers in several forms


def _pools_file(tmp_path, text: str, name: str = "pools.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, says",
    [
        ("temporal_video_grounding:\n  questions: ['When does {evnt} happen?']\n  answers: ['{spans}.']\n", "unknown placeholder {evnt}"),
        ("temporal_video_grounding:\n  questions: []\n  answers: ['{spans}.']\n", "empty pool"),
        ("temporal_grounding:\n  questions: ['When does {event} happen?']\n  answers: ['{spans}.']\n", "unknown task 'temporal_grounding'"),
        ("temporal_video_grounding:\n  questions: ['When does it happen?']\n  answers: ['{spans}.']\n", "must name {event}"),
        ("multi_format_temporal_grounding:\n  pairs: [{q: 'When does {event} start?', a: 'It does.'}]\n", "a time"),
        ("dense_video_captioning:\n  questions: ['Describe {span0}.']\n  answers: ['{events}']\n", "unknown placeholder {span0}"),
        ("multiple_choice:\n  questions: ['Which {options} during {span0']\n  answers: ['{answer}']\n", "unmatched brace"),
        ("- just a list\n", "top level"),
    ],
)
def test_a_bad_pools_file_is_a_config_error_naming_the_problem(tmp_path, text, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        load_config(None, **{"ground.templates": _pools_file(tmp_path, text)})


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"ground.tasks": {"temporal_grounding": 1.0}}, "unknown task 'temporal_grounding'"),
        ({"ground.tasks": {"temporal_video_grounding": 1.5}}, "0 to 1"),
        ({"ground.tasks": {"temporal_video_grounding": -0.1}}, "0 to 1"),
        ({"ground.tasks": {"temporal_video_grounding": "lots"}}, "valid number"),
        ({"ground.max_items": {"summary": 2}}, "unknown task 'summary'"),
        ({"ground.templates": "/nonexistent/pools.yaml"}, "cannot read"),
    ],
)
def test_a_bad_mix_or_missing_file_is_a_config_error(settings, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        load_config(None, **settings)


def test_a_pools_file_replaces_or_extends_and_changes_the_fingerprint(tmp_path):
    own = "temporal_video_grounding:\n  questions: ['Our query: {event}?']\n  answers: ['{spans}!']\n"
    replaced = load_config(None, **{"ground.templates": _pools_file(tmp_path, own)})
    items = _by_task(_items(ground_clip(clip_row(), replaced.ground)))["temporal_video_grounding"]
    assert all(it["question"].startswith("Our query:") and it["answer"].endswith("!") for it in items)
    assert replaced.ground.pools.tasks["dense_video_captioning"] == load_pools(None).tasks["dense_video_captioning"]  # others kept
    extended = load_pools(_pools_file(tmp_path, "extend: true\n" + own, "more.yaml"))
    assert extended.tasks["temporal_video_grounding"]["questions"][-1] == "Our query: {event}?"
    assert len(extended.tasks["temporal_video_grounding"]["questions"]) == len(load_pools(None).tasks["temporal_video_grounding"]["questions"]) + 1
    assert replaced.stage_hash("ground") != load_config(None).stage_hash("ground")  # an edited pool re-runs ground
    assert load_config(None, **replaced.model_dump()).ground.pools_sha256 == replaced.ground.pools_sha256  # round trip


def test_the_mix_keeps_each_tasks_share_and_caps_it():
    keys = [f"ab_{n:09d}_{n + 8000:09d}" for n in range(60)]
    full = Counter(it["task"] for k in keys for it in _items(ground_clip(clip_row(k), _cfg(negative_rate=0.0))))
    cfg = _cfg(tasks={"temporal_video_grounding": 0.5, "dense_video_captioning": 1.0}, max_items={"dense_video_captioning": 0}, negative_rate=0.0)
    mixed = Counter(it["task"] for k in keys for it in _items(ground_clip(clip_row(k), cfg)))
    assert set(mixed) == {"temporal_video_grounding"}  # tasks not named are not made; a cap of 0 ships none
    assert 0.35 < mixed["temporal_video_grounding"] / full["temporal_video_grounding"] < 0.65
    capped = _cfg(max_items={"multiple_choice": 1}, negative_rate=0.0)
    assert all(Counter(it["task"] for it in _items(ground_clip(clip_row(k), capped)))["multiple_choice"] == 1 for k in keys[:10])


def test_the_items_do_not_depend_on_the_order_the_config_lists_the_tasks():
    """A config read back from JSON (an increment's, a flow's) lists `ground.tasks` sorted: the
    items, their caps and their phrasing must not change with it (once they did: a scheduled
    increment shipped other items than a run in one piece)."""
    weights = {task: 1.0 for task in TASKS}
    forward, backward = (_cfg(tasks=dict(order), max_items={"multiple_choice": 1, "multi_format_temporal_grounding": 1})
                         for order in (weights.items(), reversed(weights.items())))  # fmt: skip
    for key in ("ab_000000000_000008000", "ab_000002000_000010000"):
        assert _items(ground_clip(clip_row(key), forward)) == _items(ground_clip(clip_row(key), backward))


def test_negatives_come_from_other_videos_unlike_this_one_at_the_rate():
    other = [clip_row(f"c{n}_000000000_000008000", events=[{"start_s": 1.0, "end_s": 2.0, "text": t}])
             for n, t in enumerate(["a red car drives away", "fireworks light the sky", "a dog sleeps indoors"])]
    pool = negative_pool([clip_row(), *other])
    assert set(pool["ab_000000000_000008000"]) == {"a red car drives away", "fireworks light the sky"}  # the dog shares a word
    cfg = _cfg(negative_rate=0.5, tasks={"temporal_video_grounding": 1.0})
    items = _items(ground_clip(clip_row(negatives=pool["ab_000000000_000008000"]), cfg))
    negatives = [it for it in items if it.get("negative")]
    assert len(negatives) == 2 == len(items) - len(negatives)  # half the items, as far as candidates go
    for item in negatives:
        assert item["spans"] == [] and item["events"] == [] and item["verification"] is None
        assert any(t in item["question"] for t in pool["ab_000000000_000008000"])
        assert item["answer"] in load_pools(None).tasks[NEGATIVES]["answers"]


def test_with_embeddings_a_negative_must_match_this_clip_worse_than_its_own_events():
    like = clip_row("c1_000000000_000008000", events=[{"start_s": 1.0, "end_s": 2.0, "text": "a puppy sprints"}], event_embs=_f16([_axis(1)]))
    unlike = clip_row("c2_000000000_000008000", events=[{"start_s": 1.0, "end_s": 2.0, "text": "fireworks light the sky"}], event_embs=_f16([_axis(4)]))
    pool = negative_pool([clip_row(**embedded()), like, unlike])
    assert pool["ab_000000000_000008000"] == ["fireworks light the sky"]  # the puppy shares no word, but the embeddings say it is alike


def test_span_verification_drops_items_about_an_event_its_frames_do_not_show():
    wrong = embedded(event_axes=(0, 5, 0))  # the dog's text matches the frames outside its span
    row = ground_clip(clip_row(**wrong), _cfg(negative_rate=0.0))
    events = json.loads(row["events"])
    assert events[0]["verification"] > 0.8 and events[1]["verification"] < 0.5
    items = _items(row)
    assert all(1 not in it["events"] for it in items)  # nothing about the dog ships
    dropped = json.loads(row["dropped"])
    assert dropped["temporal_video_grounding"] == 1 and dropped["dense_video_captioning"] == 1 and "highlight_detection" in dropped
    assert all(it["verification"] == min(events[i]["verification"] for i in it["events"]) for it in items if it["events"])  # as good as their weakest event
    tiny = load_config(None, profile="tiny").ground
    assert tiny.min_verification == 0.0 and json.loads(ground_clip(clip_row(**wrong), tiny)["dropped"]) == {}


def test_refined_boundaries_are_the_spans_and_the_coarse_ones_are_kept():
    times = np.arange(200) / 25
    changes = np.full(200, 0.5)
    changes[52] = 20.0  # the door really closes at 2.08 s, between the sampled 0.0 and 4.0
    events = [{"start_s": 0.0, "end_s": 2.0, "text": "a man opens the door"}, {"start_s": 4.0, "end_s": 6.0, "text": "the dog runs outside"}]
    row = ground_clip(clip_row(events=events), _cfg(), changes=(times, changes))
    door = json.loads(row["events"])[0]
    assert (door["start_s"], door["end_s"], door["coarse_start_s"], door["coarse_end_s"]) == (0.0, 2.08, 0.0, 2.0)
    grounding = next(it for it in _items(row) if it["task"] == "temporal_video_grounding" and "door" in it["question"])
    assert grounding["spans"] == [[0.0, 2.08]]
    unrefined = json.loads(ground_clip(clip_row(events=events), _cfg(refine=False), changes=(times, changes))["events"])
    assert unrefined[0]["end_s"] == 2.0 and "coarse_end_s" not in unrefined[0]


def test_rewrites_are_kept_only_when_verified():
    item = {"task": "multi_format_temporal_grounding", "question": 'What does "the dog runs" show from {start0} to {end0}?', "answer": "x", "spans": [[0, 1]], "events": [0], "verification": None}
    assert rewrite_score(item["question"], "Between {start0} and {end0}, what does the dog that runs show?") >= 0.6
    assert rewrite_score(item["question"], "What does the dog do during {span0}?") == 0.0  # other placeholders
    assert rewrite_score(item["question"], "Tell me about {start0} to {end0} please") < 0.6  # the event's words are gone
    good, bad = rewrite_items([item, item], lambda qs: ["From {start0} to {end0}, what does the dog that runs show?", "{start0}?"], 0.6)
    assert good["generator"] == "llm" and good["verification"] is None
    assert bad == item  # template kept


def test_tiny_model_rewrites_fall_back_to_templates(cut_clips):
    from vidcurate.stages.caption import make_captioner
    from vidcurate.stages.captioners import Prompt

    captioner = make_captioner(CaptionConfig())
    rephrase = lambda qs: captioner.generate([Prompt([("text", q)], None, 32, 0.0, 1) for q in qs])  # noqa: E731
    items = rewrite_items(_items(ground_clip(clip_row(), _cfg()))[:6], rephrase, 0.6)
    assert items and all(it["generator"] == "template" for it in items)


def _rendered_times(item: dict, text: str, fmt: str) -> tuple[list, list]:
    """The spans and single times `text` should show once rendered (vtimellm: token numbers; its
    "from <sK> to <eK>" is how it writes a span)."""
    spans, moments = [], []
    if TRAINERS[fmt].layout == "vtimellm":
        text = re.sub(r"\{start(\d+)\} to \{end\1\}", r"{span\1}", text)
    for kind, k in TIME_REF.findall(text):
        a, b = item["spans"][int(k)]
        if TRAINERS[fmt].layout == "vtimellm":
            (spans if kind == "span" else moments).append([float(k), float(k)] if kind == "span" else {"start": a, "end": b}[kind])
        else:
            (spans if kind == "span" else moments).append([round(a, 1), round(b, 1)] if kind == "span" else round({"start": a, "end": b}[kind], 1))
    return spans, moments


@pytest.mark.parametrize("fmt", FORMATS)
def test_exporters_round_trip_every_time(everything, fmt):
    for item in everything["clip"] + everything["window"]:
        for text in (item["question"], item["answer"]):
            spans, moments = _rendered_times(item, text, fmt)
            rendered = render(text, item["spans"], fmt)
            assert parse_times(rendered, fmt) == spans
            tokens = {f"<{kind[0]}{k}>": item["spans"][int(k)][kind == "end"] for kind, k in TIME_REF.findall(text) if kind != "span"}
            assert parse_moments(rendered, fmt, tokens) == moments
    assert not TIME_REF.search(json.dumps(records("media/k.mp4", "k", 16.0, everything["window"], fmt)))


def test_trainers_with_a_fixed_wording_keep_it(everything):
    item = next(it for it in everything["clip"] if it["task"] == "temporal_video_grounding" and len(it["spans"]) == 1)
    (timeit,) = records("media/k.mp4", "k", 8.0, [item], "timeit")
    (timesuite,) = records("media/k.mp4", "k", 8.0, [item], "timesuite")
    assert timeit["QA"][0]["a"] == "The given query happens in 2.5 - 4.5 seconds."
    assert timesuite["QA"][0]["a"] == "From 2.5 to 4.5 seconds."
    assert timeit["QA"][0]["i"] == INSTRUCTIONS["temporal_video_grounding"]


def test_vtimellm_tokens_carry_every_span_in_meta(everything):
    for rec in records("media/k.mp4", "k", 16.0, everything["window"], "vtimellm", turns=3):
        text = " ".join(turn["value"] for turn in rec["conversations"])
        assert set(re.findall(r"<[se]\d+>", text)) <= set(rec["meta"]["token"])  # every token named has its time
        assert all(0 <= v <= 16.0 for v in rec["meta"]["token"].values()) and rec["conversations"][0]["value"].startswith("<video>\n")


def test_one_item_per_record_by_default_and_qa_layouts_never_mix_tasks(everything):
    items = everything["window"]
    for fmt in FORMATS:
        assert len(records("media/k.mp4", "k", 16.0, items, fmt)) == len(items)
    for fmt in ("timesuite", "timeit"):
        for rec in records("media/k.mp4", "k", 16.0, items, fmt, turns=4):
            assert len({qa["i"] for qa in rec["QA"]}) == 1


def test_shards_of_1_2_0_still_read_and_export_under_the_new_task_names():
    old = {"task": "summarisation", "question": "Summarise the video.", "answer": "A caption.", "spans": [[0.0, 8.0]], "generator": "template", "verification": 1.0}
    grounding = {"task": "temporal_grounding", "question": 'When does "x" happen?', "answer": "{span0}.", "spans": [[1.0, 2.0]], "generator": "template", "verification": 1.0}
    assert set(LEGACY_TASKS.values()) <= set(TASKS) and "1.2.0" in VALIDATORS
    (summary, when) = records("media/k.mp4", "k", 8.0, [old, grounding], "timeit")
    assert summary["QA"][0]["i"] == INSTRUCTIONS["video_summarization"]
    assert when["QA"][0] == {"i": INSTRUCTIONS["temporal_video_grounding"], "q": 'When does "x" happen?', "a": "The given query happens in 1.0 - 2.0 seconds."}


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
    (window,) = windows(clips, _cfg(max_window_s=10.0))
    assert [c["key"] for c in window["clips"]] == [clips[0]["clip_id"], clips[1]["clip_id"]]
    assert (window["source_start_s"], window["source_end_s"], window["duration_s"]) == (0.0, 9.0, 9.0)
    (three,) = [it for it in window["qa"] if it["task"] == "temporal_video_grounding" and "three" in it["question"]]
    assert three["spans"] == [[5.0, 7.0]]  # relative to the window start
    text = json.dumps(window["qa"])
    assert "four" not in text and "after a gap" not in text and "other video" not in text
    assert all(0 <= a < b <= window["duration_s"] for it in window["qa"] for a, b in it["spans"])


def test_the_pool_forms_cover_every_task():
    assert set(FORMS) == {*TASKS, NEGATIVES}


@pytest.mark.parametrize("seed", range(10))
def test_random_events_give_sound_items(seed):
    rng = random.Random(seed)
    duration = rng.uniform(1, 30)
    events = []
    for i in range(rng.randint(0, 6)):
        a = round(rng.uniform(0, duration - 0.3), 2)
        events.append({"start_s": a, "end_s": round(min(duration, a + rng.uniform(0.2, 3)), 2), "text": f"event {rng.choice('abcdef')} {i % 3}", "verification": None})
    events.sort(key=lambda e: (e["start_s"], e["end_s"]))
    items, dropped = build_items(Sample(key=f"k{seed}", kind=rng.choice(["clip", "window"]), duration=duration, caption="a caption", events=events), _cfg())
    assert dropped == {}
    for item in items:
        assert all(0 <= a < b <= duration + 1e-6 for a, b in item["spans"]) and set(item["events"]) <= set(range(len(events)))


def _old_layout(items: list[dict], fmt: str, duration: float) -> dict:
    """1.2.0's export: every item of a sample in one record, dense captioning first."""
    dense = [it for it in items if it["task"] == "dense_video_captioning"]
    return record("media/k.mp4", "k", duration, dense + [it for it in items if it not in dense], fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_leak_check_flags_the_old_layout_and_passes_the_new_exports(everything, fmt):
    texts = tuple(e["text"] for e in everything["events"])
    for kind, duration in (("clip", 8.0), ("window", 16.0)):
        items = everything[kind]
        old = _old_layout(items, fmt, duration)
        found = leaks(old, texts)
        assert found and any("time" in f for f in found) and any("earlier turn" in f for f in found)
        for turns in (1, 3, 6):
            new = records("media/k.mp4", "k", duration, items, fmt, turns, texts)
            assert not [leaks(r, texts) for r in new if leaks(r, texts)]
            assert sum(len(turns_of(r)) for r in new) == len(items)  # every item, once
        assert any(len(turns_of(r)) > 1 for r in records("media/k.mp4", "k", duration, items, fmt, 3, texts))


def test_the_leak_check_reads_times_texts_and_tokens():
    asked = {"from": "human", "value": "When does the red square show?"}
    rec = {"conversations": [asked, {"from": "gpt", "value": "1.0 - 3.0 seconds."}, {"from": "human", "value": "What happens at 3.0 seconds?"}, {"from": "gpt", "value": "A red square is shown."}]}
    assert leaks(rec) == []  # 3.0 was said, but the second answer holds no time and its text was not said
    rec["conversations"][3]["value"] = "It ends at 3.0 seconds."
    assert leaks(rec) == ["turn 2: its answer's time 3.0 is in an earlier turn"]
    rec["conversations"][3]["value"] = "the red square show"
    assert leaks(rec) == ["turn 2: its answer 'the red square show' is in an earlier turn"]
    tokens = {"conversations": [asked, {"from": "gpt", "value": "From <s0> to <e0>."}, {"from": "human", "value": "And next?"}, {"from": "gpt", "value": "At <s1>."}],
              "meta": {"token": {"<s0>": 1.0, "<e0>": 3.0, "<s1>": 3.0, "<e1>": 4.0}}}
    assert leaks(tokens) == ["turn 2: its answer's time 3.0 is in an earlier turn"]  # a token is its time
    qa = {"video": "v", "QA": [{"i": "x", "q": "Describe the video.", "a": "1.0 - 2.0 seconds, a dog runs."}, {"i": "x", "q": "What runs?", "a": "A dog runs, 5.0 - 6.0 seconds."}]}
    assert leaks(qa, texts=("a dog runs",)) == ["turn 2: its answer's 'a dog runs' is in an earlier turn"]


def test_turns_never_join_items_about_the_same_event(everything):
    for rec in records("media/k.mp4", "k", 16.0, everything["window"], "llava", turns=6, texts=()):
        turns = turns_of(rec)
        owners = [it for q, a in turns for it in everything["window"] if render(it["question"], it["spans"], "llava") in q and render(it["answer"], it["spans"], "llava") == a]
        about = [e for it in owners for e in it["events"]]
        assert len(about) == len(set(about))


def test_the_report_counts_items_negatives_and_drops_by_task():
    from vidcurate.pipelines.report import _qa_table

    clips = [
        {"qa_list": _items(ground_clip(clip_row(**embedded(event_axes=(0, 5, 0)), negatives=["fireworks light the sky"]), _cfg(negative_rate=0.5)))},
        {"qa_list": [], "dropped": {"dense_video_captioning": 2}},
    ]
    clips[0]["dropped"] = {"temporal_video_grounding": 1, "dense_video_captioning": 1}
    html = _qa_table(clips)
    assert "<tr><td>dense_video_captioning</td><td>0</td><td>0</td><td>3</td></tr>" in html
    grounding = sum(it["task"] == "temporal_video_grounding" for it in clips[0]["qa_list"])
    assert f"<tr><td>temporal_video_grounding</td><td>{grounding}</td><td>1</td><td>1</td></tr>" in html
