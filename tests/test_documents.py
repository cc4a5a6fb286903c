"""Interleaved documents from clip rows built here (the embed stage's columns constructed so the
truth is known): what each kind holds, the alignment filter and its counts, the in-context
neighbours and what they may not show, the search at scale (cluster by cluster), and the sample schema's
checks on documents (with 1.3.0 shards still read)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_ground import EVENTS, _axis, _f16, _unit, clip_row, embedded
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.interleaved import documents_of
from vidcurate.schemas.sample import VALIDATORS, validate_sample
from vidcurate.stages.documents import Said, in_context, in_context_documents, nearest, text, window_document
from vidcurate.stages.ground import GroundConfig, ground_clip


def _document(row: dict) -> dict:
    (document,) = json.loads(row["interleaved"])
    return document


def _pairs(document: dict) -> list[tuple[dict, dict]]:
    parts = document["parts"]
    return [(p, parts[i + 1]) for i, p in enumerate(parts) if p["type"] != "text"]


def test_a_clip_document_shows_each_event_at_a_frame_inside_it_scored_on_that_frame():
    row = ground_clip({**clip_row(), **embedded(event_axes=(0, 1, 0))}, GroundConfig())
    document = _document(row)
    assert document["kind"] == "events" and document["parts"][0] == {"type": "text", "text": "A man lets the dog out into the garden.", "spans": []}
    pairs = _pairs(document)
    assert [(text["spans"], text["text"]) for _, text in pairs] == [([[e["start_s"], e["end_s"]]], f"{{span0}}: {e['text']}.") for e in EVENTS]
    for (image, _), event in zip(pairs, EVENTS):
        assert image["type"] == "image" and image["key"] == row["clip_id"]
        assert event["start_s"] <= image["t"] <= event["end_s"]  # the frame nearest the middle, inside the event
        assert image["similarity"] == 1.0  # embedded(): frames in a door event lie along the door text's axis
    assert document["pairs"] == {"scored": 3, "dropped": 0}
    matrix = document["similarity_matrix"]  # every image with every text: caption, then the events
    assert len(matrix) == 3 and all(len(r) == 4 for r in matrix) and matrix[1][2] == 1.0 and matrix[1][1] == 0.0


def test_a_pair_under_the_threshold_is_dropped_with_its_text_and_counted():
    """Event texts along the wrong axes: the door events' frames match their texts at 0, the dog's at 1."""
    row = ground_clip({**clip_row(), **embedded(event_axes=(2, 1, 2))}, GroundConfig(min_pair_similarity=0.5))
    document = _document(row)
    assert [text["text"] for _, text in _pairs(document)] == ["{span0}: the dog runs outside."]
    assert "a man opens the door" not in json.dumps(document)
    assert document["pairs"] == {"scored": 3, "dropped": 2}
    kept = GroundConfig(min_pair_similarity=-1.0)
    assert _document(ground_clip({**clip_row(), **embedded(event_axes=(2, 1, 2))}, kept))["pairs"] == {"scored": 3, "dropped": 0}


def test_without_embed_there_is_no_score_and_nothing_is_dropped():
    document = _document(ground_clip(clip_row(), GroundConfig(min_pair_similarity=1.0)))
    assert [image["similarity"] for image, _ in _pairs(document)] == [None] * 3
    assert document["pairs"] == {"scored": 0, "dropped": 0} and "similarity_matrix" not in document
    assert [image["t"] for image, _ in _pairs(document)] == [1.25, 3.5, 5.5]  # each event's middle


def test_a_clip_without_events_has_no_document():
    assert json.loads(ground_clip({**clip_row(events=[]), **embedded()}, GroundConfig())["interleaved"]) == []


def test_profile_tiny_drops_no_pair_by_chance():
    tiny, default = load_config(None, profile="tiny").ground, load_config(None, profile="default").ground
    assert tiny.min_pair_similarity == -1.0 < default.min_pair_similarity
    worst = {**embedded(), "event_embs": _f16([-_axis(0), -_axis(1), -_axis(0)])}  # every text opposite its frames
    assert _document(ground_clip({**clip_row(), **worst}, tiny))["pairs"] == {"scored": 3, "dropped": 0}


def _shipped(video: str, n: int, direction, caption: str = "A man lets the dog out into the garden.", events=EVENTS, **extra) -> dict:
    """A shipped clip row (as the shard stage gets it: ground's columns over the embed stage's)
    whose image embedding is `direction`."""
    key = f"{video}_{n * 8000:09d}_{n * 8000 + 8000:09d}"
    row = {**clip_row(key, events=events, caption=caption), **embedded(), **extra}
    return {**row, **ground_clip(row, GroundConfig()), "image_emb": _f16(_unit(direction))}


def test_in_context_examples_are_the_nearest_clips_of_other_videos_named_by_key():
    query = _shipped("aa", 0, [1, 0, 0, 0, 0, 0])
    same_video = _shipped("aa", 1, [1, 0.05, 0, 0, 0, 0])  # nearer than any other, not a near copy
    near_copy = _shipped("bb", 0, [1, 0.001, 0, 0, 0, 0])
    close, closer, far = (
        _shipped(v, 0, d, caption=f"A {thing} by the fence.", events=[{"start_s": 1.0 + n, "end_s": 2.5 + n, "text": f"a {thing} appears"}], event_embs=_f16([_axis(2)]))
        for n, (v, d, thing) in enumerate((("cc", [1, 0.3, 0, 0, 0, 0], "cat"), ("dd", [1, 0.2, 0, 0, 0, 0], "bird"), ("ee", [0, 1, 0, 0, 0, 0], "fox")))
    )
    found = in_context_documents([query, same_video, near_copy, close, closer, far], k=2, min_similarity=-1.0, near_cosine=0.999)
    document = found[query["clip_id"]]
    assert [n["key"] for n in document["neighbours"]] == [closer["clip_id"], close["clip_id"]]  # nearest first; not its video, not its copy
    media = [p for p in document["parts"] if p["type"] != "text"]
    assert [p["key"] for p in media] == [closer["clip_id"], close["clip_id"], query["clip_id"]] and {p["type"] for p in media} == {"video"}
    item = json.loads(query["qa"])[document["item"]]
    assert document["parts"][-1] == {"type": "text", "text": item["question"], "spans": item["spans"], "role": "question"}
    assert item["answer"] not in json.dumps(document)
    validate_sample({**_sample(query), "grounding": {"qa": json.loads(query["qa"]), "interleaved": [document]}})
    assert in_context_documents([query, close], k=0, min_similarity=-1.0, near_cosine=0.999) == {}


def _sample(row: dict) -> dict:
    return {
        "schema_version": "1.4.0", "kind": "clip", "clip_id": row["clip_id"], "video_id": row["video_id"], "duration_s": 8.0,
        "media": {"width": 4, "height": 4, "fps": 25.0, "sha256": "0" * 64},
        "provenance": {"source_uri": "x", "source_start_s": 0.0, "source_end_s": 8.0, "start_frame": 0, "end_frame": 200, "cut_kind": "hard"},
        "caption": {"text": row["caption"], "events": json.loads(row["events"]), "model": "m", "frame_times": []}, "ledger": [],
    }


def test_an_example_that_would_show_the_answer_is_passed_over():
    """The query's question asks for every event with its times: a neighbour whose QA pair states
    the same times, and whose caption names one of the events, would give the answer away."""
    query = _shipped("aa", 0, [1, 0, 0, 0, 0, 0])
    item = next(it for it in json.loads(query["qa"]) if it["task"] == "dense_video_captioning")
    query["qa"] = json.dumps([item])  # the one question it can ask
    said = Said({"a man opens the door", "the dog runs outside"})
    assert not said.allows([text("From {start0} on.", [[0.5, 9.0]])], item) and not said.allows([text("At 4.5 s.")], item)
    assert not said.allows([text("Then the dog runs outside!")], item) and said.allows([text("{span0}: a bird lands.", [[1.2, 2.6]])], item)
    said.hear([text("A bird lands on the fence.")])
    assert not said.allows([text("What is this?", role="question"), text("A bird lands on the fence.")], item)  # an earlier example's answer
    gives_away = _shipped("bb", 0, [1, 0.1, 0, 0, 0, 0], caption="The dog runs outside.")  # the same events at the same times
    other = [{"start_s": 1.2, "end_s": 2.6, "text": "a bird lands"}]
    clean = _shipped("cc", 0, [1, 0.2, 0, 0, 0, 0], caption="A bird lands on the fence.", events=other, event_embs=_f16([_axis(2)]))
    document = in_context(query, [(gives_away, 0.99), (clean, 0.98)], k=2, min_similarity=-1.0, near_cosine=0.999)
    assert [n["key"] for n in document["neighbours"]] == [clean["clip_id"]]
    assert [p["text"] for p in document["parts"] if p.get("role") == "answer"] == ["{span0}, a bird lands."]  # its QA pair of the task asked


def test_an_example_whose_pair_is_under_the_threshold_gives_way_to_the_next_nearest():
    query = _shipped("aa", 0, [1, 0, 0, 0, 0, 0])
    unlike = _shipped("bb", 0, [1, 0.1, 0, 0, 0, 0], span_frame_embs=_f16([_axis(3)] * 16))  # its frames match none of its texts
    like = _shipped("cc", 0, [1, 0.2, 0, 0, 0, 0], span_frame_embs=_f16([_unit([1, 1, 0, 0, 0, 0])] * 16))  # 0.7 and more with each
    candidates = [(unlike, 0.99), (like, 0.98)]
    document = in_context(query, candidates, k=1, min_similarity=0.5, near_cosine=0.999)
    assert [n["key"] for n in document["neighbours"]] == [like["clip_id"]]
    assert document["pairs"] == {"scored": 3, "dropped": 1}  # the example tried, the example kept, the query (never dropped)


def test_a_window_document_is_its_clips_in_order_each_with_its_events_on_the_window_clock():
    first = _shipped("aa", 0, [1, 0, 0, 0, 0, 0])
    second = _shipped("aa", 1, [1, 0, 0, 0, 0, 0], events=[{"start_s": 1.0, "end_s": 3.0, "text": "the dog barks"}], event_embs=_f16([_axis(1)]))
    window = {"clips": [{"key": first["clip_id"], "offset_s": 0.0}, {"key": second["clip_id"], "offset_s": 8.0}]}
    document = window_document(window, {c["clip_id"]: c for c in (first, second)}, min_similarity=-1.0)
    pairs = _pairs(document)
    assert [(m["type"], m["key"]) for m, _ in pairs] == [("video", first["clip_id"]), ("video", second["clip_id"])]
    assert pairs[1][1] == {"type": "text", "text": "{span0}: the dog barks.", "spans": [[9.0, 11.0]]}
    assert pairs[0][1]["spans"] == [[e["start_s"], e["end_s"]] for e in EVENTS]
    assert all(4.0 - 0.5 <= m["t"] <= 4.0 + 0.5 for m, _ in pairs)  # each clip's keyframe: the frame nearest its middle


def test_the_search_at_scale_finds_the_exact_neighbours():
    """Past `EXACT_MAX` rows each row is searched among its 2 nearest clusters' rows (as dedup
    searches at scale): on clustered embeddings, the same neighbours as the exact search."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    emb = np.concatenate([c + 0.05 * rng.normal(size=(50, 32)) for c in centres]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exact_cosines, exact = nearest(emb, 5, exact_max=len(emb))
    cosines, clustered = nearest(emb, 5, exact_max=100)
    assert (exact[:, 0] == np.arange(len(emb))).all() and (clustered[:, 0] == np.arange(len(emb))).all()  # itself first
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact.tolist(), clustered.tolist())])
    assert recall >= 0.99 and (np.diff(cosines, axis=1) <= 1e-6).all()  # nearest first
    assert np.allclose(cosines, np.einsum("nd,nkd->nk", emb, emb[clustered]), atol=1e-5) and (cosines <= exact_cosines[:, -1:] + 1e-6)[:, -1].all()


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d["parts"][2].update(text="{span1}: the door."), "a time of a span it lacks"),
        (lambda d: d["similarity_matrix"].pop(), "not media parts x text parts"),
        (lambda d: d["parts"][1].update(key="../../etc/passwd"), "does not match"),
        (lambda d: d.update(kind="in_context", item=99), "closes with QA item 99"),
    ],
)
def test_the_schema_refuses_a_document_that_is_not_sound(change, says):
    row = {**clip_row(), **ground_clip({**clip_row(), **embedded()}, GroundConfig())}
    sample = {**_sample(row), "grounding": {"qa": json.loads(row["qa"]), "interleaved": json.loads(row["interleaved"])}}
    validate_sample(sample)
    change(sample["grounding"]["interleaved"][0])
    with pytest.raises(ValueError, match=says):
        validate_sample(sample)


def test_a_1_3_0_sample_still_reads_and_its_parts_are_its_document():
    row = {**clip_row(), **ground_clip(clip_row(), GroundConfig())}
    old_parts = [{"type": "frame", "t": 0.5}, {"type": "text", "text": "a man opens the door {span9}."}, {"type": "frame", "t": 99.0}, "junk"]
    sample = {**_sample(row), "schema_version": "1.3.0", "grounding": {"qa": json.loads(row["qa"]), "interleaved": old_parts}}
    VALIDATORS["1.3.0"](sample)
    (document,) = documents_of(sample)
    assert document["parts"] == [
        {"type": "image", "key": row["clip_id"], "t": 0.5, "similarity": None},
        {"type": "text", "text": "a man opens the door (span9).", "spans": []},  # braces read as text; t 99 is outside the clip
    ]
