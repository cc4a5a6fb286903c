"""Captioning: the answer grammar, strict parsing, event clean-up, and the real backends
(tiny Qwen2-VL and a Qwen2.5-VL with a trained 32k BPE through transformers, and through a real
OpenAI-compatible HTTP server)."""

from __future__ import annotations

import json

import pytest
import regex

from vidcurate.schemas.tables import FAILED, KEPT
from vidcurate.stages.answer import InvalidAnswer, answer_regex, clean_events, parse_answer, time_choices
from vidcurate.stages.caption import CaptionConfig, OpenAIEndpoint, build_prompt, caption_clips, decode_clips, make_captioner
from vidcurate.stages.captioners import OpenAICaptioner
from vidcurate.stages.media import unpack_frames
from vidcurate.stages.models import bpe_qwen25vl, tiny_vlm

CFG = CaptionConfig(frames=4, frame_height=112, max_events=3, max_tokens=1024, temperature=1.0)


@pytest.fixture(scope="module")
def clips(cut_clips):
    assert len(cut_clips) >= 3
    return cut_clips[:3]


@pytest.fixture(scope="module")
def tiny():
    return make_captioner(CFG)


def test_grammar_accepts_exactly_the_answer_shape():
    pattern = regex.compile(answer_regex([0.0, 1.5], 3.0, max_events=2))
    good = '{"caption": "A dog runs.", "events": [{"start_s": 0.00, "end_s": 1.50, "text": "dog runs"}]}'
    assert pattern.fullmatch(good)
    assert pattern.fullmatch('{"caption": "x", "events": []}')
    assert not pattern.fullmatch(good.replace("1.50", "1.49"))  # times are the sampled frames or the end
    three = good.replace("]}", ', {"start_s": 0.00, "end_s": 3.00, "text": "a"}, {"start_s": 0.00, "end_s": 3.00, "text": "b"}]}')
    assert not pattern.fullmatch(three)  # max_events
    assert pattern.fullmatch(good[:30], partial=True)


@pytest.mark.parametrize(
    "raw, error",
    [
        ("The clip shows a dog.", "not JSON"),
        ('{"caption": "a", "events": []} trailing', "not JSON"),
        ('{"caption": "a"}', "'events' is a required property"),
        ('{"caption": "a", "events": [{"start_s": "1", "end_s": 2, "text": "x"}]}', "events/0/start_s"),
        ('{"caption": "", "events": []}', "caption"),
    ],
)
def test_malformed_answers_are_rejected_with_the_reason(raw, error):
    with pytest.raises(InvalidAnswer, match=error):
        parse_answer(raw)


def test_fenced_json_answer_is_accepted():
    assert parse_answer('```json\n{"caption": "a", "events": []}\n```')["caption"] == "a"


def test_events_are_clipped_sorted_and_merged_or_trimmed():
    events = [
        {"start_s": 4.0, "end_s": 9.0, "text": "late, past the end"},
        {"start_s": 2.0, "end_s": 1.0, "text": "reversed"},
        {"start_s": 1.5, "end_s": 3.0, "text": "overlaps"},
        {"start_s": 3.5, "end_s": 3.55, "text": "too short"},
        {"start_s": 0.0, "end_s": 0.5, "text": "Ã©lan  first"},
    ]
    merged = clean_events(events, duration_s=5.0, min_event_s=0.2, overlap="merge")
    assert merged == [
        {"start_s": 0.0, "end_s": 0.5, "text": "élan first"},
        {"start_s": 1.0, "end_s": 3.0, "text": "reversed; overlaps"},
        {"start_s": 4.0, "end_s": 5.0, "text": "late, past the end"},
    ]
    trimmed = clean_events(events, duration_s=5.0, min_event_s=0.2, overlap="trim")
    assert [(e["start_s"], e["end_s"]) for e in trimmed] == [(0.0, 0.5), (1.0, 2.0), (2.0, 3.0), (4.0, 5.0)]


def _check_events(rows, clips):
    for row, clip in zip(rows, clips):
        events = json.loads(row["events"])
        duration = clip["end_s"] - clip["start_s"]
        assert all(0 <= e["start_s"] < e["end_s"] <= duration + 1e-6 for e in events)
        assert all(a["end_s"] <= b["start_s"] for a, b in zip(events, events[1:]))
        assert row["caption"]


def test_tiny_model_under_the_grammar_gives_valid_deterministic_captions(clips, tiny):
    rows = caption_clips(clips, tiny, CFG)
    assert [r["status"] for r in rows] == [KEPT] * 3
    _check_events(rows, clips)
    assert len(rows[0]["frame_times"]) == 4 and rows[0]["frame_times"][0] == 0.0
    assert caption_clips(clips, tiny, CFG) == rows  # seeded per clip: a re-run asks and answers the same


@pytest.mark.parametrize(
    "vocabulary, structured, temperature",
    [("bytes", "on", 0.0), ("bytes", "off", 0.0), ("bytes", "on", 1.0), ("bytes", "off", 1.0), ("bpe", "on", 0.0), ("bpe", "on", 1.0)],
)
def test_batched_generation_answers_as_one_prompt_at_a_time(clips, vocabulary, structured, temperature):
    """Left-padded batches (prompts of different lengths) give each clip the answer it gets
    alone, greedy or sampled (each sampled row draws from its own seeded generator), also where
    a row ends long before the others (its own token limit), which the grammar and the sampler
    then skip."""
    model = str(bpe_qwen25vl()) if vocabulary == "bpe" else None
    cfg = CFG.model_copy(update={"model": model, "temperature": temperature, "structured": structured, "max_tokens": 64})
    decoded = decode_clips(clips, cfg)
    prompts = [  # 2, 3 and 4 frames: prompts of different lengths, so the batch is padded
        build_prompt(c["clip_id"], list(unpack_frames(c["frames"]))[: 2 + k], c["frame_times"][: 2 + k], c["end_s"] - c["start_s"], cfg, 0)
        for k, c in enumerate(decoded)
    ]
    prompts[0].max_tokens = 12
    captioner = make_captioner(cfg.model_copy(update={"batch_size": 1}))
    alone = captioner.generate(prompts)
    captioner.batch_size = 3
    assert captioner.generate(prompts) == alone
    assert len(set(alone)) == 3


@pytest.fixture(scope="module")
def bpe():
    return make_captioner(CFG.model_copy(update={"model": str(bpe_qwen25vl())}))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_real_sized_vocabulary_answers_in_the_grammar_on_the_first_attempt(clips, bpe, temperature):
    """A Qwen2.5-VL with a 32k BPE vocabulary (multi-character tokens, an output layer wider than
    the tokenizer) under the default `structured: auto`, three clips in one batch: every answer
    parses on the first attempt, with every event time one of the sampled frames' or the clip's end."""
    cfg = CFG.model_copy(update={"model": str(bpe_qwen25vl()), "temperature": temperature})
    rows = caption_clips(clips, bpe, cfg)
    assert [(r["status"], r["attempts"]) for r in rows] == [(KEPT, 1)] * 3
    _check_events(rows, clips)
    for row, clip in zip(rows, clips):
        choices = set(time_choices(row["frame_times"], clip["end_s"] - clip["start_s"]))
        events = json.loads(row["raw_answer"])["events"]
        assert {f"{e[side]:.2f}" for e in events for side in ("start_s", "end_s")} <= choices
        assert row["raw_answer"].startswith('{"caption": "')  # the grammar's own spelling, no fence or prose
    assert any(json.loads(r["raw_answer"])["events"] for r in rows)  # the times above were checked


@pytest.mark.parametrize(
    "arch, model_class",
    [("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"), ("qwen3_vl", "Qwen3VLForConditionalGeneration")],
)
def test_qwen25_and_qwen3_vl_caption_through_the_default_profiles_path(clips, arch, model_class):
    """Random toy-width copies of the real architectures, named by folder as a user names a
    checkpoint: processor, chat template, vision tower and batched generate under the grammar."""
    update = {"model": str(tiny_vlm(arch)), "structured": "on", "temperature": 0.0, "batch_size": 2, "max_events": 1}
    cfg = CFG.model_copy(update=update)
    captioner = make_captioner(cfg)
    assert type(captioner.model).__name__ == model_class
    rows = caption_clips(clips[:2], captioner, cfg)
    assert [r["status"] for r in rows] == [KEPT] * 2
    _check_events(rows, clips[:2])


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_frames_as_video_hands_the_model_the_frames_times(clips, arch):
    """The native video path: one video input whose metadata carries the sampled frames' times.
    Qwen3-VL writes a time per temporal patch (2 frames: their mean) into the prompt; Qwen2.5-VL
    encodes each patch as 2 frame spacings of absolute time. Then the stage captions through it."""
    update = {"model": str(tiny_vlm(arch)), "frames_as": "video", "structured": "on", "temperature": 0.0, "batch_size": 2, "max_events": 1}
    cfg = CFG.model_copy(update=update)
    captioner = make_captioner(cfg)
    clip = decode_clips(clips[:1], cfg)[0]
    times = clip["frame_times"]
    prompt = build_prompt(clip["clip_id"], list(unpack_frames(clip["frames"])), times, clip["end_s"] - clip["start_s"], cfg, 0)
    inputs = captioner.model_inputs([prompt])
    assert "pixel_values" not in inputs and int(inputs["video_grid_thw"][0][0]) == -(-len(times) // 2)
    if arch == "qwen3_vl":
        text = captioner.processor.tokenizer.decode(inputs["input_ids"][0])
        patches = [times[i : i + 2] for i in range(0, len(times), 2)]
        assert regex.findall(r"<([\d.]+) seconds>", text) == [f"{(p[0] + p[-1]) / 2:.1f}" for p in patches]
    else:
        spacing = (times[-1] - times[0]) / (len(times) - 1)
        assert float(inputs["second_per_grid_ts"][0]) == pytest.approx(2 * spacing, rel=1e-3)
    rows = caption_clips(clips[:2], captioner, cfg)
    assert [r["status"] for r in rows] == [KEPT] * 2
    _check_events(rows, clips[:2])


def test_frames_as_video_is_refused_where_the_backend_sends_images():
    with pytest.raises(ValueError, match="frames_as: video needs backend: transformers"):
        CaptionConfig(backend="openai", frames_as="video")


def test_unconstrained_noise_fails_the_clip_with_its_raw_answer(clips):
    cfg = CFG.model_copy(update={"structured": "off", "max_tokens": 24, "max_attempts": 2})
    rows = caption_clips(clips[:2], make_captioner(cfg), cfg)
    for row in rows:
        assert row["status"] == FAILED
        assert row["reason"].startswith("invalid_output: not JSON")
        assert row["attempts"] == 2 and row["raw_answer"]


def test_openai_backend_retries_and_sends_the_grammar(clips, tiny):
    from openai_server import OpenAIServer

    with OpenAIServer(tiny, fail_first=2) as server:
        endpoint = OpenAIEndpoint(base_url=server.base_url, concurrency=2, backoff_s=0.05)
        captioner = OpenAICaptioner(tiny.name, **endpoint.model_dump())
        rows = caption_clips(clips, captioner, CFG)
    assert [r["status"] for r in rows] == [KEPT] * 3
    _check_events(rows, clips)
    assert len(server.requests) == 3 + 2  # two 503s retried
    body = server.requests[-1]
    assert body["structured_outputs"]["regex"].startswith('\\{"caption": ')
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_json_schema_mode_works_where_a_server_refuses_unknown_fields(clips, tiny):
    """OpenAI's dialect: vLLM's field is refused (400, permanent), the response_format schema is
    enforced by an independent JSON-schema engine and its answers pass our strict parser."""
    from openai_server import OpenAIServer

    with OpenAIServer(tiny, dialect="openai") as server:
        endpoint = OpenAIEndpoint(base_url=server.base_url, backoff_s=0.01)
        refused = caption_clips(clips[:1], make_captioner(CFG.model_copy(update={"backend": "openai", "openai": endpoint})), CFG)
        cfg = CFG.model_copy(update={"backend": "openai", "openai": endpoint.model_copy(update={"structured": "json_schema"})})
        rows = caption_clips(clips, make_captioner(cfg), cfg)
    assert refused[0]["status"] == FAILED and refused[0]["transient"] is False
    assert refused[0]["reason"].startswith("backend: BackendError: HTTP 400: ") and "structured_outputs" in refused[0]["reason"]
    assert [r["status"] for r in rows] == [KEPT] * 3
    _check_events(rows, clips)
    body = server.requests[-1]
    assert "structured_outputs" not in body and body["response_format"]["json_schema"]["strict"] is True
    times = body["response_format"]["json_schema"]["schema"]["properties"]["events"]["items"]["properties"]["start_s"]["enum"]
    assert times[0] == 0.0 and times == sorted(times) and len(times) == 5  # 4 frame times and the clip end


def test_structured_off_sends_no_grammar(clips, tiny):
    from openai_server import OpenAIServer

    with OpenAIServer(tiny, dialect="openai") as server:
        endpoint = OpenAIEndpoint(base_url=server.base_url, structured="json_schema")
        cfg = CFG.model_copy(update={"backend": "openai", "openai": endpoint, "structured": "off", "max_tokens": 24, "max_attempts": 1})
        rows = caption_clips(clips[:1], make_captioner(cfg), cfg)
    assert rows[0]["status"] == FAILED and rows[0]["reason"].startswith("invalid_output: ")  # accepted, answered noise
    assert not {"structured_outputs", "response_format"} & set(server.requests[0])


def test_openai_backend_gives_up_after_retries_and_the_clip_fails(clips, tiny):
    from openai_server import OpenAIServer

    with OpenAIServer(tiny, fail_first=100) as server:
        endpoint = OpenAIEndpoint(base_url=server.base_url, max_retries=1, backoff_s=0.01)
        rows = caption_clips(clips[:1], OpenAICaptioner(tiny.name, **endpoint.model_dump()), CFG)
    assert rows[0]["status"] == FAILED
    assert rows[0]["reason"] == "backend: BackendError: HTTP 503 after 1 retries"
    assert rows[0]["transient"] is True  # the server's fault: the next run asks again
