"""Shards as trainers get them: published to a real S3-compatible server, streamed back with
webdataset and HF datasets, sidecars, index, keyframes, seeded shuffle, crash safety."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.schemas.sample import SCHEMA_VERSION
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner
from vidcurate.schemas.readers import clip_frames, open_shards, shard_urls, signed_shard_urls, training_samples
from vidcurate.schemas.sample import validate_sample
from vidcurate.pipelines.publish import publish
from vidcurate.stages.shard import sample_order

DEST = "s3://published/dataset"


@pytest.fixture(scope="module")
def published(tmp_path_factory, synthetic_videos, s3_endpoint, ray_local):
    fsspec.filesystem("s3").mkdir("published")
    run_dir = tmp_path_factory.mktemp("publish")
    overrides = {"shard.output": DEST, "shard.keyframes": 2, "shard.maxcount": 3, "split.max_clip_s": 4.0}
    cfg = load_config(None, profile="tiny", inputs=str(synthetic_videos[0]), run_dir=str(run_dir), stages=[], **overrides)
    stats = Runner(cfg).run_all()
    kept = sorted(r["id"] for r in pq.read_table(run_dir / "ledger.parquet").to_pylist() if r["entity"] == "clip" and r["status"] == "kept")
    return run_dir, stats, kept


def test_published_shards_stream_back_with_webdataset(published):
    _, stats, kept = published
    samples = list(open_shards(DEST))
    assert sorted(s["__key__"] for s in samples) == kept
    assert len(samples) == stats["samples"] and len(shard_urls(DEST)) == len(stats["shards"]) >= 3
    for sample in samples:
        meta = json.loads(sample["json"])
        validate_sample(meta)
        assert Image.open(io.BytesIO(sample["f000.jpg"])).size[1] == 224
        assert "f001.jpg" in sample
        frames, times = clip_frames(sample["mp4"], 4)
        assert frames.shape[0] == 4 and frames.shape[-1] == 3
        assert 0 <= times[0] < times[-1] <= meta["duration_s"]


def test_published_shards_stream_with_hf_datasets(published):
    from datasets import Video, load_dataset

    _, _, kept = published
    urls = signed_shard_urls(DEST)
    assert all(u.startswith("http") and "Signature" in u for u in urls)
    ds = load_dataset("webdataset", data_files={"train": urls}, split="train", streaming=True)
    rows = list(ds.cast_column("mp4", Video(decode=False)))  # bytes as stored; decode with clip_frames
    assert sorted(r["__key__"] for r in rows) == kept
    assert all(isinstance(r["json"], dict) and r["json"]["clip_id"] == r["__key__"] for r in rows)
    assert clip_frames(rows[0]["mp4"]["bytes"], 2)[0].shape[0] == 2


def test_index_sidecars_and_card_describe_the_shards(published):
    fs = fsspec.filesystem("s3")
    index = json.loads(fs.cat(f"{DEST}/index.json"))
    assert index["__kind__"] == "wids-shard-index-v1"
    for entry, url in zip(index["shardlist"], shard_urls(DEST)):
        keys = [s["__key__"] for s in open_shards(url)]
        side = pq.read_table(f"{DEST}/{entry['url'].replace('.tar', '.parquet')}", filesystem=fs).to_pylist()
        assert [r["key"] for r in sorted(side, key=lambda r: r["offset"])] == keys
        assert entry["nsamples"] == len(keys) and entry["filesize"] == fs.size(url)
        assert all(json.loads(r["json"])["duration_s"] == r["duration_s"] for r in side)
    card = fs.cat(f"{DEST}/README.md").decode()
    stats = json.loads(fs.cat(f"{DEST}/stats.json"))
    assert f"{stats['samples']} clip samples in {len(stats['shards'])} WebDataset shards" in card
    assert "not for training" not in card  # no model stage ran (stages: []), so no random-weight model
    assert not fs.exists(f"{DEST}/_staging")


def test_samples_are_shuffled_across_shards_by_seed(published):
    ids = [f"{v}_{i:09d}_{i + 1000:09d}" for v in ("aa", "bb", "cc") for i in range(0, 20000, 1000)]
    assert sample_order(ids, 0) == sample_order(list(reversed(ids)), 0)
    assert sample_order(ids, 0) != sample_order(ids, 1) != sorted(ids)
    assert sample_order(ids, None) == sorted(ids)
    first_shard = next(iter(shard_urls(DEST)))
    assert len({json.loads(s["json"])["video_id"] for s in open_shards(first_shard)}) > 1


def test_republishing_fewer_shards_removes_the_stale_ones(tmp_path, published):
    run_dir, _, _ = published
    dataset = run_dir / "shard" / "dataset"
    dest = tmp_path / "dest"
    publish(dataset, str(dest))
    assert len(list(dest.glob("v-*/*.tar"))) >= 3 and not list(dest.glob("*.tar"))
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    first = json.loads((dataset / "index.json").read_text())["shardlist"][0]
    for name in (first["url"], first["url"].replace(".tar", ".parquet")):
        (fewer / name).write_bytes((dataset / name).read_bytes())
    (fewer / "index.json").write_text(json.dumps({"shardlist": [first]}))
    publish(fewer, str(dest))
    assert sorted(p.name for p in dest.glob("v-*/*.tar")) == [first["url"]]
    assert sorted(p.name for p in dest.glob("v-*/*.parquet")) == [first["url"].replace(".tar", ".parquet")]
    assert [s["__key__"] for s in open_shards(str(dest))] == [s["__key__"] for s in open_shards(str(fewer))]


def test_training_samples_give_frames_on_the_annotation_clock(published):
    _, stats, _ = published
    seen = 0
    for item in training_samples(DEST, frames=3):
        assert item["frames"].shape[0] == 3 and item["frames"].dtype.name == "uint8"
        assert item["times_s"][0] == 0.0 and item["times_s"][-1] < item["meta"]["duration_s"]
        assert item["key"] == item["meta"]["clip_id"]
        seen += 1
    assert seen == stats["samples"]


def test_inspect_prints_samples_from_object_storage(published, capsys):
    assert cli_main(["inspect", DEST, "-n", "1"]) == 0
    assert f'"schema_version": "{SCHEMA_VERSION}"' in capsys.readouterr().out


def test_killing_the_writer_mid_shard_leaves_no_partial_shard(tmp_path, published):
    """SIGKILL while tars are being written: nothing appears under the output, and a re-run
    produces complete, readable shards."""
    run_dir, _, kept = published
    out = tmp_path / "shard"
    config = tmp_path / "slow.yaml"
    config.write_text("shard:\n  maxcount: 1\n  keyframes: 64\n  keyframe_height: 720\n")
    cmd = [sys.executable, "-m", "vidcurate.pipelines.cli", "stage", "shard", "--input", str(run_dir / "split"),
           "--output", str(out), "--config", str(config)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out.with_name("shard.tmp") / "dataset"
    deadline = time.monotonic() + 120
    while not (staging.exists() and len(list(staging.glob("*.tar"))) >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, "the writer finished before it could be killed; make it slower"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # only the .tmp directory holds the half-written shard
    assert cli_main(["stage", "shard", "--input", str(run_dir / "split"), "--output", str(out), "--config", str(config)]) == 0
    samples = list(open_shards(str(out / "dataset")))
    assert sorted(s["__key__"] for s in samples) == kept
    assert not out.with_name("shard.tmp").exists()


def test_shard_writer_makes_webdatasets_bytes(tmp_path):
    """Our standard-library writer against webdataset's own ShardWriter (which imports torch):
    the same samples give byte-identical tar files, rotated at the same samples by count and by
    size; with no sample, ours leaves no empty tar."""
    import webdataset as wds

    from vidcurate.stages.shard_writer import ShardWriter

    samples = [
        {"__key__": f"v{i:02d}_000_{1000 + i}", "mp4": os.urandom(700 + 300 * i), "json": b'{"i": %d}' % i, "f000.jpg": b"\xff\xd8" * i}
        for i in range(7)
    ]
    for limits in ({"maxcount": 3, "maxsize": 1 << 30}, {"maxcount": 100, "maxsize": 2000}):
        ours, theirs = tmp_path / f"ours{limits['maxcount']}", tmp_path / f"theirs{limits['maxcount']}"
        ours.mkdir(), theirs.mkdir()
        with ShardWriter(str(ours / "s-%06d.tar"), **limits) as sink:
            for s in samples:
                sink.write(s)
        with wds.ShardWriter(str(theirs / "s-%06d.tar"), **limits, verbose=0, mtime=0.0) as sink:
            for s in samples:
                sink.write(s)
        names = sorted(p.name for p in theirs.iterdir())
        assert len(names) >= 3 and sorted(p.name for p in ours.iterdir()) == names
        assert all((ours / n).read_bytes() == (theirs / n).read_bytes() for n in names)
    with ShardWriter(str(tmp_path / "empty-%06d.tar"), maxcount=3, maxsize=1 << 30):
        pass
    assert not list(tmp_path.glob("empty-*"))
