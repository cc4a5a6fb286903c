"""Timestamps proven on pixels. Synthetic videos carry a red square only while a planted event
is on; the captioner is the one test double (tests/planted.py: it answers as a model that saw
only the sampled frames would, so its times sit on the sampled grid, and it writes ground's
reasoning questions; at the backend interface, through a real OpenAI-compatible HTTP server);
everything after it is the real pipeline, boundary refinement and embed included. For every
shard sample (clips and windows), every task and every record of every trainer export, the
media the record names is decoded at the start, middle and end of each labelled span (and at
each single time it states): the square must be there, and not there a margin outside."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS, TRAINERS, export, leaks, parse_moments, parse_times, records
from vidcurate.pipelines.runner import Runner
from conftest import REPO
from planted import EVENT_TEXT, EVENTS, SampledFrameCaptioner, decoded, make_planted_video, shown_at, square_visible
from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.sample import TASKS
from vidcurate.stages.ground import GroundConfig, ground_clip

LLAMAFACTORY_PYTHON = os.environ.get("VIDCURATE_LLAMAFACTORY_PYTHON")  # opt-in: docs/training.md
INSIDE = 0.1  # seconds inside a span's edges (covers the exports' one-decimal rounding)
MARGIN = 0.3  # seconds outside a span where the square must be gone


class PlantedReasoner(SampledFrameCaptioner):
    """The same test double, which also answers ground's reasoning prompt (text only) about its
    first event, as a model would: a why question and a one-sentence reason."""

    def _answer(self, prompt) -> str:
        if prompt.parts[0][1].startswith("These are the events"):
            return json.dumps({"question": "Why is a red square shown?", "event": 1, "reason": "A red square is shown because it was planted there."})
        return super()._answer(prompt)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, ray_local):
    from openai_server import OpenAIServer

    root = tmp_path_factory.mktemp("planted")
    inputs = root / "inputs"
    inputs.mkdir()
    make_planted_video(inputs / "planted.mp4", barcode=False)  # only the shots and the square change the picture
    with OpenAIServer(PlantedReasoner()) as server:
        cfg = load_config(
            None,
            profile="tiny",
            inputs=str(inputs),
            run_dir=str(root / "run"),
            stages=["caption", "embed", "ground"],
            **{
                "caption.backend": "openai",
                "caption.openai.base_url": server.base_url,
                "caption.frame_height": 240,
                "caption.frames": 8,
                "ground.max_window_s": 60.0,
                "ground.reason": True,
            },
        )
        stats = Runner(cfg).run_all()
    return root / "run" / "shard" / "dataset", stats


def _check_spans(media, spans: list[list[float]], what: str, moments: list[float] = ()) -> int:
    """Assert the planted square on screen inside every span and off screen just outside it, and
    each single time (a span's start or end on its own) a boundary: on screen on one side of
    it, off screen a margin beyond the other."""
    frames, times = decoded(media)
    end = times[-1] + (times[-1] - times[-2])
    seen = lambda t: square_visible(shown_at(frames, times, t)) if 0 <= t < end else False  # noqa: E731
    checked = 0
    for a, b in spans:
        assert 0 <= a < b <= end + 0.05, f"{what}: span {a}-{b} outside the media (0-{end:.2f} s)"
        for t in (a + INSIDE, (a + b) / 2, b - INSIDE):
            assert seen(t), f"{what}: no event at {t:.2f} s inside {a}-{b}"
        for t in (a - MARGIN, b + MARGIN):
            assert not seen(t), f"{what}: event at {t:.2f} s outside {a}-{b}"
        checked += 1
    for t in moments:
        starts, ends = seen(t + INSIDE) and not seen(t - MARGIN), seen(t - INSIDE) and not seen(t + MARGIN)
        assert starts or ends, f"{what}: no event starts or ends at {t:.2f} s"
        checked += 1
    return checked


def test_the_planted_video_and_the_double_are_sound(tmp_path):
    video = make_planted_video(tmp_path / "v.mp4")
    frames, times = decoded(video)
    on = [round(t, 2) for f, t in zip(frames, times) if square_visible(f)]
    assert on[0] == EVENTS[0][0] and min(t for t in on if t > EVENTS[0][1]) == EVENTS[1][0]
    _check_spans(video, [list(e) for e in EVENTS], "source")


def test_every_shard_sample_labels_the_planted_events(planted_run):
    dataset, stats = planted_run
    kinds, spans_checked, tasks, coarse_off = {"clip": 0, "window": 0}, 0, set(), 0
    for sample in open_shards(str(dataset)):
        meta = json.loads(sample["json"])
        kinds[meta["kind"]] += 1
        events = meta["caption"]["events"]
        assert events, f"{sample['__key__']}: no event"
        spans_checked += _check_spans(sample["mp4"], [[e["start_s"], e["end_s"]] for e in events], f"{sample['__key__']} events")
        coarse_off += sum((e["coarse_start_s"], e["coarse_end_s"]) != (e["start_s"], e["end_s"]) for e in events)
        assert all(e["verification"] is not None for e in events)  # embed ran: every event has its score
        for item in meta["grounding"]["qa"]:
            spans_checked += _check_spans(sample["mp4"], item["spans"], f"{sample['__key__']} {item['task']}")
            tasks.add(item["task"])
    assert kinds["clip"] == stats["samples"] >= 4 and kinds["window"] == stats["window_samples"] >= 1
    assert spans_checked > 40 and coarse_off >= 4  # the double answered on the sampled grid; every span is refined
    assert tasks >= set(TASKS[:9]) - {"transcribed_speech_generation"}  # TimePro's tasks (speech: below)


def _texts(record: dict) -> list[str]:
    if "QA" in record:
        return [t for qa in record["QA"] for t in (qa["q"], qa["a"])]
    turns = record.get("conversations") or record.get("messages")
    return [turn.get("value", turn.get("content")) for turn in turns]


def _media(record: dict) -> str:
    video = record.get("video") or record.get("videos")
    return video[0] if isinstance(video, list) else video


def _check_record(record: dict, fmt: str, media: Path) -> int:
    """Every span and single time a record states, on the pixels of the media it names."""
    texts = _texts(record)
    spans = [span for text in texts for span in parse_times(text, fmt)]
    token = (record.get("meta") or {}).get("token")
    if TRAINERS[fmt].layout == "vtimellm":  # token numbers -> seconds through meta.token
        spans = [[token[f"<s{int(a)}>"], token[f"<e{int(a)}>"]] for a, _ in spans]
    moments = [t for text in texts for t in parse_moments(text, fmt, token)]
    return _check_spans(media, spans, f"{fmt} {_media(record)}", moments)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_record_labels_the_planted_events_in_the_media_it_names(planted_run, fmt, tmp_path):
    dataset, stats = planted_run
    events = {json.loads(s["json"])["clip_id"]: [e["text"] for e in json.loads(s["json"])["caption"]["events"]] for s in open_shards(str(dataset))}
    for turns in (1, 3):
        out = tmp_path / str(turns)
        summary = export(str(dataset), fmt, out, turns=turns)
        assert (summary["clips"], summary["windows"]) == (stats["samples"], stats["window_samples"])
        written = json.loads(Path(summary["path"]).read_text())
        checked = 0
        for record in written:
            media = Path(summary["path"]).parent / _media(record)  # relative to the JSON file
            assert media.is_file() and media.parent == out / "media"
            checked += _check_record(record, fmt, media)
            assert not leaks(record, tuple(events[media.stem])), record  # no answer said in an earlier turn
        assert checked > 40 and not re.search(r"\{(span|start|end)\d+\}", json.dumps(written))
        assert all(len(_texts(r)) <= 2 * turns for r in written)
        if TRAINERS[fmt].layout != "qa":  # there a record holds one task, and each sample here has one item of a task
            assert (summary["multi_turn_records"] > 0) == (turns > 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_segments_are_exported_at_their_times(tmp_path, fmt):
    """Transcribed speech generation, from a clip row built here with speech where the square is
    (the speech stage writes that column; here the rows are constructed, the rest is real)."""
    video = make_planted_video(tmp_path / "planted.mp4", barcode=False)
    speech = {"segments": [{"start_s": a, "end_s": b, "text": f"now {n}"} for n, (a, b) in enumerate(EVENTS)], "language": "en", "no_speech": False}
    clip = {"clip_id": "ab_000000000_000024000", "video_id": "ab", "start_s": 0.0, "end_s": 24.0, "caption": "Shots.", "frame_times": [],
            "events": json.dumps([{"start_s": a, "end_s": b, "text": EVENT_TEXT} for a, b in EVENTS]), "speech": json.dumps(speech)}
    qa = [it for it in json.loads(ground_clip(clip, GroundConfig())["qa"]) if it["task"] == "transcribed_speech_generation"]
    assert qa and qa[0]["spans"] == [list(e) for e in EVENTS]
    (record,) = records("planted.mp4", clip["clip_id"], 24.0, qa, fmt)
    assert _check_record(record, fmt, video) == len(EVENTS)


def _vtimellm_convert(duration: float, x: float) -> str:
    """VTimeLLM's own mapping of a token time to its 100-frame grid (train/dataset.py, convert)."""
    return f"{min(round(x / duration * 100), 99):02d}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_reads_as_its_trainer_loader_reads_it(planted_run, fmt, tmp_path):
    """The rules each loader applies to a record (docs/training.md names the file and function)."""
    summary = export(str(planted_run[0]), fmt, tmp_path)
    records = json.loads(Path(summary["path"]).read_text())
    assert records
    for record in records:
        video = record.get("video") or record.get("videos")
        if fmt in ("llamafactory", "videollama3"):
            assert isinstance(video, list) and len(video) == 1  # VideoLLaMA3 raises on a bare string
        else:
            assert isinstance(video, str)
        assert (tmp_path / (video[0] if isinstance(video, list) else video)).is_file()  # joined to the media root
        if fmt in ("timesuite", "timeit"):
            assert set(record) == {"video", "QA"} and len({qa["i"] for qa in record["QA"]}) == 1
            assert all(set(qa) == {"i", "q", "a"} for qa in record["QA"])
            continue
        if fmt == "llamafactory":
            roles = [m["role"] for m in record["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            assert sum(m["content"].count("<video>") for m in record["messages"]) == len(record["videos"])
            continue
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        tag = "<image>" if fmt == "llava" else "<video>"
        assert turns[0]["value"].startswith(f"{tag}\n")
        assert sum(t["value"].count(tag) for t in turns) == 1  # Qwen3-VL's _build_messages: one tag per video
        if fmt == "vtimellm":
            meta = record["meta"]
            text = json.dumps(turns)
            for token, seconds in meta["token"].items():
                assert 0 <= seconds <= meta["duration"]
                text = text.replace(token, _vtimellm_convert(meta["duration"], seconds))
            assert not re.search(r"<[se]\d+>", text)  # every boundary token has its time
    if fmt == "llamafactory":
        info = json.loads((tmp_path / "dataset_info.json").read_text())["vidcurate"]
        assert info["file_name"] == "llamafactory.json" and info["formatting"] == "sharegpt"
        assert info["columns"] == {"messages": "messages", "videos": "videos"}
        assert info["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


@pytest.mark.skipif(not LLAMAFACTORY_PYTHON, reason="set VIDCURATE_LLAMAFACTORY_PYTHON to a Python with llamafactory (docs/training.md)")
def test_llamafactory_own_data_pipeline_tokenises_every_record_with_its_video(planted_run, tmp_path):
    from vidcurate.stages.models import tiny_qwen2vl

    summary = export(str(planted_run[0]), "llamafactory", tmp_path / "export")
    command = [LLAMAFACTORY_PYTHON, str(REPO / "tests" / "llamafactory_check.py"), str(tmp_path / "export"), str(tiny_qwen2vl()), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    n = summary["records"]
    assert counts == {"records": n, "with_video_tokens": n, "with_labels": n, "videos": n}
