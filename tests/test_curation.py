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
    samples = list(open_shards(str(root / "run" / "shard" / "dataset")))
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
        assert {"sharpness", "motion", "aesthetic", "clip_score"} <= set(meta["scores"])
    assert {"summarisation", "dense_captioning", "temporal_grounding"} <= tasks


def test_windows_reference_only_shipped_clips(curated):
    root, _ = curated
    dataset = root / "run" / "shard" / "dataset"
    keys = {s["__key__"] for s in open_shards(str(dataset))}
    windows = [json.loads(line) for line in (dataset / "windows.jsonl").read_text().splitlines()]
    assert windows
    for w in windows:
        assert {c["key"] for c in w["clips"]} <= keys and len(w["clips"]) >= 2
        assert w["duration_s"] <= 30.0 + 1e-6
        assert all(0 <= a < b <= w["duration_s"] + 1e-6 for it in w["qa"] for a, b in it["spans"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_every_sample_with_its_media(curated, fmt, tmp_path, capsys):
    root, stats = curated
    assert cli_main(["export", str(root / "run" / "shard" / "dataset"), "--format", fmt, "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    records = json.loads((tmp_path / f"{fmt}.json").read_text())
    assert summary["records"] == len(records) == stats["samples"] + summary["windows"]
    assert len(list((tmp_path / "media").glob("*.mp4"))) == stats["samples"]
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
