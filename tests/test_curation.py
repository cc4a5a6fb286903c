"""The whole curation flow (probe, split, caption, ground, embed, quality, dedup, shard) through
Prefect over Ray with the tiny models: what trainers read is complete and consistent, exports
work for every trainer format, and a later scheduled run ships nothing twice."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from flows.corpus import corpus_flow
from pipelines.cli import main as cli_main
from pipelines.config import load_config
from pipelines.export import FORMATS, parse_times
from planted import decoded
from schemas.readers import open_shards
from schemas.sample import validate_sample

def _run(inputs, run_dir, history) -> dict:
    overrides = {"split.max_clip_s": 6.0, "dedup.history": str(history)}  # profile tiny: TINY_DEFAULTS apply
    cfg = load_config(None, inputs=str(inputs), run_dir=str(run_dir), **overrides)
    return corpus_flow(cfg.model_dump())


@pytest.fixture(scope="module")
def curated(tmp_path_factory, mixed_inputs, ray_local, prefect_server):
    root = tmp_path_factory.mktemp("curated")
    stats = _run(mixed_inputs, root / "run", root / "shipped")
    return root, stats


def test_every_clip_has_one_final_status_from_the_last_stage_that_saw_it(curated):
    root, stats = curated
    run = root / "run"
    ledger = [r for r in pq.read_table(run / "ledger.parquet").to_pylist() if r["entity"] == "clip"]
    split = pq.read_table(run / "split").to_pylist()
    assert sorted(r["id"] for r in ledger) == sorted(r["clip_id"] for r in split)
    assert all(r["reason"] for r in ledger if r["status"] != "kept")
    assert {r["stage"] for r in ledger if r["status"] == "kept"} == {"shard"}
    assert stats["samples"] == stats["clips"]["kept"] > 0


def test_samples_carry_caption_events_grounding_and_scores_on_the_sample_clock(curated):
    root, _ = curated
    samples = [s for s in open_shards(str(root / "run" / "shard" / "dataset")) if json.loads(s["json"])["kind"] == "clip"]
    assert samples
    stages = ["probe", "split", "caption", "ground", "embed", "quality", "dedup"]
    tasks = set()
    for sample in samples:
        meta = json.loads(sample["json"])
        validate_sample(meta)
        assert [s["stage"] for s in meta["ledger"]] == stages
        duration = meta["duration_s"]
        assert meta["caption"]["text"] and len(meta["caption"]["frame_times"]) == 4
        assert all(0 <= e["start_s"] < e["end_s"] <= duration + 1e-6 for e in meta["caption"]["events"])
        for item in meta["grounding"]["qa"]:
            assert all(0 <= a < b <= duration + 1e-6 for a, b in item["spans"])
            tasks.add(item["task"])
    assert {"summarisation", "dense_captioning", "temporal_grounding"} <= tasks


def test_window_samples_have_their_own_media_over_shipped_clips(curated):
    root, stats = curated
    dataset = root / "run" / "shard" / "dataset"
    samples = [(s, json.loads(s["json"])) for s in open_shards(str(dataset))]
    clips = {meta["clip_id"]: meta for _, meta in samples if meta["kind"] == "clip"}
    windows = [(s, meta) for s, meta in samples if meta["kind"] == "window"]
    assert windows and len(windows) == stats["window_samples"]
    assert sorted(p.name for p in dataset.glob("*-windows-*.tar")) == [s["name"] for s in stats["shards"] if s["kind"] == "window"]
    for sample, meta in windows:
        validate_sample(meta)
        assert {c["key"] for c in meta["clips"]} <= clips.keys() and len(meta["clips"]) >= 2
        parts = [clips[c["key"]] for c in meta["clips"]]
        assert meta["duration_s"] == pytest.approx(sum(p["duration_s"] for p in parts), abs=1e-3)
        assert meta["duration_s"] <= 60.0 + 1e-6  # ground.max_window_s
        _, times = decoded(sample["mp4"])  # the window's own media: its frames, on its own clock
        assert times[0] == 0.0 and times[-1] == pytest.approx(meta["duration_s"], abs=2 / meta["media"]["fps"])
        assert all(0 <= a < b <= meta["duration_s"] + 1e-6 for it in meta["grounding"]["qa"] for a, b in it["spans"])
    assert not (dataset / "windows.jsonl").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_every_sample_with_its_media(curated, fmt, tmp_path, capsys):
    root, stats = curated
    assert cli_main(["export", str(root / "run" / "shard" / "dataset"), "--format", fmt, "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    records = json.loads((tmp_path / f"{fmt}.json").read_text())
    assert summary["records"] == len(records) and summary["windows"] == stats["window_samples"]
    assert summary["clips"] + summary["samples_without_qa"] == stats["samples"]
    assert len(list((tmp_path / "media").glob("*.mp4"))) == summary["clips"] + summary["windows"]
    for record in records:  # every media path resolves from the export folder
        video = record.get("video") or record.get("videos")
        assert (tmp_path / (video[0] if isinstance(video, list) else video)).is_file()
    text = json.dumps(records)
    assert "{span" not in text and parse_times(text, fmt)


def test_a_scheduled_rerun_ships_nothing_twice(curated, mixed_inputs):
    root, first = curated
    again = _run(mixed_inputs, root / "next-run", root / "shipped")
    assert again["samples"] == 0
    ledger = pq.read_table(root / "next-run" / "ledger.parquet").to_pylist()
    shipped_before = [r for r in ledger if r["entity"] == "clip" and r["stage"] == "dedup"]
    assert len(shipped_before) == first["samples"]
    assert all("(shipped)" in r["reason"] for r in shipped_before)
