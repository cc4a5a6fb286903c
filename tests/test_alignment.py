"""Timestamps proven on pixels. Synthetic videos carry a red square only while a planted event
is on; the captioner is the one test double (tests/planted.py: it answers with the planted
events, at the backend interface, through a real OpenAI-compatible HTTP server); everything
after it is the real pipeline. For every shard sample (clips and windows) and every record of
every trainer export, the media the record names is decoded at the start, middle and end of
each labelled span: the square must be there, and not there a margin outside the span."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS, TRAINERS, export, parse_times
from vidcurate.pipelines.runner import Runner
from conftest import REPO
from planted import EVENTS, PlantedEventCaptioner, decoded, make_planted_video, shown_at, square_visible
from vidcurate.schemas.readers import open_shards

LLAMAFACTORY_PYTHON = os.environ.get("VIDCURATE_LLAMAFACTORY_PYTHON")  # opt-in: docs/training.md
INSIDE = 0.1  # seconds inside a span's edges (covers the exports' one-decimal rounding)
MARGIN = 0.3  # seconds outside a span where the square must be gone


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, ray_local):
    from openai_server import OpenAIServer

    root = tmp_path_factory.mktemp("planted")
    inputs = root / "inputs"
    inputs.mkdir()
    make_planted_video(inputs / "planted.mp4")
    with OpenAIServer(PlantedEventCaptioner()) as server:
        cfg = load_config(
            None,
            profile="tiny",
            inputs=str(inputs),
            run_dir=str(root / "run"),
            stages=["caption", "ground"],
            **{
                "caption.backend": "openai",
                "caption.openai.base_url": server.base_url,
                "caption.frame_height": 240,
                "ground.max_window_s": 60.0,
            },
        )
        stats = Runner(cfg).run_all()
    return root / "run" / "shard" / "dataset", stats


def _check_spans(media, spans: list[list[float]], what: str) -> int:
    """Assert the planted square on screen inside every span and off screen just outside it."""
    frames, times = decoded(media)
    end = times[-1] + (times[-1] - times[-2])
    checked = 0
    for a, b in spans:
        assert 0 <= a < b <= end + 0.05, f"{what}: span {a}-{b} outside the media (0-{end:.2f} s)"
        for t in (a + INSIDE, (a + b) / 2, b - INSIDE):
            assert square_visible(shown_at(frames, times, t)), f"{what}: no event at {t:.2f} s inside {a}-{b}"
        for t in (a - MARGIN, b + MARGIN):
            if 0 <= t < end:
                assert not square_visible(shown_at(frames, times, t)), f"{what}: event at {t:.2f} s outside {a}-{b}"
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
    kinds, spans_checked = {"clip": 0, "window": 0}, 0
    for sample in open_shards(str(dataset)):
        meta = json.loads(sample["json"])
        kinds[meta["kind"]] += 1
        events = meta["caption"]["events"]
        assert events, f"{sample['__key__']}: no event"
        spans_checked += _check_spans(sample["mp4"], [[e["start_s"], e["end_s"]] for e in events], f"{sample['__key__']} events")
        spans = [span for item in meta["grounding"]["qa"] for span in item["spans"] if item["task"] != "summarisation"]
        spans_checked += _check_spans(sample["mp4"], spans, f"{sample['__key__']} QA")
    assert kinds["clip"] == stats["samples"] >= 4 and kinds["window"] == stats["window_samples"] >= 1
    assert spans_checked > 20


def _texts(record: dict) -> list[str]:
    if "QA" in record:
        return [t for qa in record["QA"] for t in (qa["q"], qa["a"])]
    turns = record.get("conversations") or record.get("messages")
    return [turn.get("value", turn.get("content")) for turn in turns]


def _media(record: dict) -> str:
    video = record.get("video") or record.get("videos")
    return video[0] if isinstance(video, list) else video


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_record_labels_the_planted_events_in_the_media_it_names(planted_run, fmt, tmp_path):
    dataset, stats = planted_run
    summary = export(str(dataset), fmt, tmp_path)
    assert (summary["clips"], summary["windows"]) == (stats["samples"], stats["window_samples"])
    records = json.loads(Path(summary["path"]).read_text())
    checked = 0
    for record in records:
        media = Path(summary["path"]).parent / _media(record)  # relative to the JSON file
        assert media.is_file() and media.parent == tmp_path / "media"
        spans = [span for text in _texts(record) for span in parse_times(text, fmt)]
        if TRAINERS[fmt].layout == "vtimellm":  # token numbers -> seconds through meta.token
            token = record["meta"]["token"]
            spans = [[token[f"<s{int(a)}>"], token[f"<e{int(a)}>"]] for a, _ in spans]
        checked += _check_spans(media, spans, f"{fmt} {_media(record)}")
    assert checked > 20 and not re.search(r"\{span\d+\}", json.dumps(records))


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
