"""The whole curation flow (probe, split, caption, ground, embed, quality, dedup, shard) through
Prefect over Ray with the tiny models: what trainers read is complete and consistent, exports
work for every trainer format, and a later scheduled run ships nothing twice."""

from __future__ import annotations

import fnmatch
import json
import re

import pyarrow.parquet as pq
import yaml
import pytest

from vidcurate.flows.corpus import corpus_flow
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS, parse_times
from planted import decoded
from vidcurate.schemas.readers import open_shards
from vidcurate.pipelines.ledger import known
from vidcurate.schemas.sample import validate_sample

def _run(inputs, run_dir, history) -> dict:
    overrides = {"split.max_clip_s": 6.0, "dedup.history": str(history)}  # profile tiny: TINY_DEFAULTS apply
    cfg = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(run_dir), **overrides)
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
    assert all(known(r["stage"], r["status"], r["reason"]) for r in ledger if r["status"] != "kept"), ledger
    assert {r["stage"] for r in ledger if r["status"] == "kept"} == {"shard"}
    assert stats["samples"] == stats["clips"]["kept"] > 0


def test_samples_carry_caption_events_grounding_and_scores_on_the_sample_clock(curated):
    root, _ = curated
    samples = [s for s in open_shards(str(root / "run" / "shard" / "dataset")) if json.loads(s["json"])["kind"] == "clip"]
    assert samples
    stages = ["probe", "split", "caption", "ground", "embed", "decontam", "quality", "dedup"]
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
    assert all("(shipped, " in r["reason"] for r in shipped_before)


def _card(dataset) -> tuple[str, dict]:
    from huggingface_hub import DatasetCard

    text = (dataset / "README.md").read_text()
    return text, DatasetCard(text).data.to_dict()


def test_card_is_a_hub_dataset_card_whose_numbers_are_the_data(curated):
    root, stats = curated
    dataset = root / "run" / "shard" / "dataset"
    text, meta = _card(dataset)
    written = json.loads((dataset / "stats.json").read_text())
    assert meta["license"] == "unknown" and "License unknown" in text  # shard.license unset
    assert meta["task_categories"] == ["video-text-to-text"] and meta["size_categories"] == ["n<1K"]
    assert [c["config_name"] for c in meta["configs"]] == ["clips", "windows"]
    samples = [json.loads(s["json"]) for s in open_shards(str(dataset))]  # counted here from the shards themselves
    clips = [m for m in samples if m["kind"] == "clip"]
    assert f"{len(clips)} clip samples" in text and written["samples"] == len(clips)
    assert f"{len(samples) - len(clips)} window samples" in text
    assert f"{round(sum(m['duration_s'] for m in clips) / 3600, 4)} hours of video" in text
    for kind in ("clip", "window"):
        tasks = {}
        for m in samples:
            for item in m["grounding"]["qa"] if m["kind"] == kind else []:
                tasks[item["task"]] = tasks.get(item["task"], 0) + 1
        assert written["content"]["qa_items"][kind] == tasks
    for task, n in written["content"]["qa_items"]["clip"].items():
        assert f"| {task} | {n} | {written['content']['qa_items']['window'].get(task, 0)} |" in text
    ledger = pq.read_table(root / "run" / "ledger.parquet").to_pylist()
    for entity, label in (("video", "inputs"), ("clip", "clips")):
        rows = [r for r in ledger if r["entity"] == entity]
        kept, rejected = sum(r["status"] == "kept" for r in rows), sum(r["status"] == "rejected" for r in rows)
        assert f"{len(rows)}{' videos' if entity == 'video' else ''}, {kept} kept, {rejected} rejected" in text
    quality_rules = {}
    for r in ledger:
        if r["entity"] == "clip" and r["stage"] == "quality" and r["status"] == "rejected":
            named = list(dict.fromkeys(re.findall(r"(\w+)=", r["reason"])))
            assert r["reason"].split(":", 1)[0] == "+".join(named)  # the ledger's code names the failing rules
            for rule in named:
                quality_rules[rule] = quality_rules.get(rule, 0) + 1
    assert quality_rules  # the corpus has clips the rules reject
    for rule, n in quality_rules.items():
        assert f"- quality / {rule}: {n}" in text
    for name in {name for m in clips for name in m.get("scores", {})}:
        count = sum(name in m.get("scores", {}) for m in clips)
        assert re.search(rf"\| {name} \| {count} \|", text), name
    dedup = pq.read_table(root / "run" / "dedup").to_pylist()
    for kind in {r["dup_kind"] for r in dedup if r["status"] == "rejected"}:
        rejected = [r for r in dedup if r["dup_kind"] == kind and r["status"] == "rejected"]
        assert f"- {kind}: {len(rejected)} clips rejected" in text


def test_card_warns_exactly_when_a_random_weight_model_ran(curated, tmp_path):
    from vidcurate.pipelines.card import dataset_card

    root, _ = curated
    text, _ = _card(root / "run" / "shard" / "dataset")
    assert "Warning: not for training" in text and "caption, embed" in text
    stats = json.loads((root / "run" / "shard" / "dataset" / "stats.json").read_text())
    for model in stats["content"]["models"].values():
        model["random_weights"] = False  # as with real models (profile default, or named models)
    real = load_config(None, profile="default", **{"shard.license": "cc-by-4.0"})
    card = dataset_card(stats, real)
    assert "Warning: not for training" not in card and "License unknown" not in card and "license: cc-by-4.0" in card


def test_load_dataset_on_the_folder_alone_yields_the_cards_counts(curated, tmp_path, s3_endpoint):
    import fsspec
    from datasets import Video, load_dataset

    from vidcurate.schemas.readers import signed_shard_urls
    from vidcurate.pipelines.publish import publish

    root, stats = curated
    dataset = root / "run" / "shard" / "dataset"
    published = tmp_path / "published"
    publish(dataset, str(published))  # shards go to a version folder; the card points there
    for folder in (dataset, published):
        assert load_dataset(str(folder), split="train").num_rows == stats["samples"]
        assert load_dataset(str(folder), "windows", split="train").num_rows == stats["window_samples"]
    fsspec.filesystem("s3").mkdir("carded")
    publish(dataset, "s3://carded/ds")
    card = fsspec.filesystem("s3").cat("s3://carded/ds/README.md").decode()
    clip_glob = yaml.safe_load(card.split("---")[1])["configs"][0]["data_files"][0]["path"]
    urls = [u for u in signed_shard_urls("s3://carded/ds") if fnmatch.fnmatch(u.split("?")[0], f"*/ds/{clip_glob}")]
    hub = load_dataset("webdataset", data_files={"train": urls}, split="train", streaming=True).cast_column("mp4", Video(decode=False))
    assert sum(1 for _ in hub) == stats["samples"]
