"""A corpus streamed in partitions: the same samples as one run, stages overlapping across
partitions in order, duplicates across partitions shipped once, publishing partition by
partition, and a killed run resuming at the partition it was in."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.publish import partition_of, publish
from vidcurate.pipelines.runner import Runner
from vidcurate.pipelines.store import StageStore
from vidcurate.schemas.readers import open_shards

STAGES = ["embed", "quality", "dedup"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synthetic_videos) -> Path:
    """Two synthetic videos, an exact copy of the first and a re-encode of it (a near copy),
    named so that each copy lands in a later partition than its original."""
    import av

    root = tmp_path_factory.mktemp("partitioned") / "videos"
    root.mkdir()
    first, second = sorted(synthetic_videos[0].glob("*.mp4"))
    shutil.copy(first, root / "a_first.mp4")
    shutil.copy(second, root / "b_second.mp4")
    shutil.copy(first, root / "c_exact_copy.mp4")
    with av.open(str(first)) as inp, av.open(str(root / "d_reencoded.mp4"), "w") as out:
        stream = inp.streams.video[0]
        encoder = out.add_stream("libx264", rate=stream.average_rate, options={"crf": "30"})
        encoder.width, encoder.height, encoder.pix_fmt = stream.width, stream.height, "yuv420p"
        for frame in inp.decode(stream):
            for packet in encoder.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in encoder.encode():
            out.mux(packet)
    return root


def _config(inputs: Path, run_dir: Path, partitions: int, **overrides):
    settings = {"executor": "in_process", "partitions.videos": partitions, "shard.prefix": "part", **overrides}
    return load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(run_dir), stages=STAGES, **settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict:
    root = tmp_path_factory.mktemp("runs")
    whole = Runner(_config(corpus, root / "whole", 0)).run_all()
    parted = Runner(_config(corpus, root / "parted", 1, **{"shard.output": str(root / "published")})).run_all()
    return {"root": root, "whole": whole, "parted": parted}


def _members(run_dir: Path) -> dict[str, bytes]:
    """Every sample member the dataset holds, by `<key>.<member>`."""
    return {f"{s['__key__']}.{name}": data for s in open_shards(str(run_dir / "shard" / "dataset")) for name, data in s.items() if not name.startswith("__")}


def _tars(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "shard" / "dataset").glob("*.tar"))}


def test_partitions_ship_byte_for_byte_the_samples_one_run_ships(runs):
    root = runs["root"]
    assert runs["parted"]["samples"] == runs["whole"]["samples"] > 0
    assert _members(root / "parted") == _members(root / "whole")
    assert {p.name for p in (root / "parted" / "partitions").glob("p?????")} == {"p00000", "p00001", "p00002"}  # the exact copy: rejected by probe
    assert all(partition_of(name) for name in _tars(root / "parted"))

    def outcomes(run):
        return {(r["entity"], r["id"], r["status"]) for r in pq.read_table(root / run / "ledger.parquet").to_pylist()}

    assert outcomes("parted") == outcomes("whole")  # every input and clip has its one final status


def test_a_near_copy_in_a_later_partition_is_rejected_as_already_shipped(runs):
    root = runs["root"]
    dedup = pq.read_table(root / "parted" / "dedup").to_pylist()
    probe = {r["video_id"]: r["uri"] for r in pq.read_table(root / "parted" / "probe").to_pylist()}
    rejected = [r for r in dedup if r["status"] == "rejected"]
    assert rejected and all(probe[r["video_id"]].endswith("d_reencoded.mp4") for r in rejected)
    shipped = {r["clip_id"] for r in StageStore(root / "parted").table(root / "parted" / "shard").to_pylist() if r["status"] == "kept"}
    assert all(r["dup_kind"] == "shipped" and r["duplicate_of"] in shipped for r in rejected)


def test_each_stage_takes_the_partitions_in_order_while_the_next_partition_overlaps(runs):
    marker = StageStore(runs["root"] / "parted").completed("shard")
    timeline = marker.fields["timeline"]
    for stage in {t["stage"] for t in timeline}:
        spans = sorted((t["partition"], t["start_s"], t["end_s"]) for t in timeline if t["stage"] == stage)
        assert [s[0] for s in spans] == ["p00000", "p00001", "p00002"]
        assert all(later[1] >= earlier[2] for earlier, later in zip(spans, spans[1:]))  # one partition at a time
    first_done = max(t["end_s"] for t in timeline if t["partition"] == "p00000")
    assert min(t["start_s"] for t in timeline if t["partition"] == "p00001") < first_done  # streaming: not one after the other
    fields = marker.fields
    assert fields["first_shard_s"] <= first_done + 5 < fields["wall_s"] + 5 and fields["partitions"] == 3
    assert f"3 partitions, first shards after {fields['first_shard_s']} s" in marker.describe()  # inspect and the log say it


def test_the_dataset_loads_by_its_card_and_each_partition_was_published_once(runs):
    from datasets import load_dataset

    root = runs["root"]
    samples = runs["parted"]["samples"]
    assert load_dataset(str(root / "parted" / "shard" / "dataset"), split="train").num_rows == samples
    published = root / "published"
    assert load_dataset(str(published), split="train").num_rows == samples
    urls = {s["url"] for s in json.loads((published / "index.json").read_text())["shardlist"]}
    assert {str(p.relative_to(published)) for p in published.glob("v-*/*.tar")} == urls  # no shard the index does not name
    versions = sorted(p.name for p in published.glob("v-*"))  # the last partition's clips were all duplicates: it ships none
    assert len(versions) == 2 and all(len({partition_of(f.name) for f in (published / v).iterdir()}) == 1 for v in versions)


def test_publishing_a_grown_dataset_uploads_only_the_new_partitions_shards(tmp_path):
    local, dest = tmp_path / "dataset", tmp_path / "dest"
    local.mkdir()

    def add(partition: str) -> None:
        for suffix in (".tar", ".parquet"):
            (local / f"ds-{partition}-000000{suffix}").write_bytes(partition.encode() * 100)
        names = sorted(p.name for p in local.glob("*.tar"))
        index = {"shardlist": [{"url": n, "nsamples": 1, "filesize": 300} for n in names]}
        (local / "index.json").write_text(json.dumps(index))

    add("p00000")
    publish(local, str(dest), group_of=partition_of)
    (first,) = list(dest.glob("v-*/*.tar"))
    written = first.stat().st_mtime_ns
    time.sleep(0.01)
    add("p00001")
    publish(local, str(dest), group_of=partition_of)
    assert first.stat().st_mtime_ns == written  # not uploaded again
    urls = [s["url"] for s in json.loads((dest / "index.json").read_text())["shardlist"]]
    assert len(urls) == 2 and len({u.split("/")[0] for u in urls}) == 2 and all((dest / u).is_file() for u in urls)


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_partition_it_was_in(runs, corpus, tmp_path, caplog):
    """SIGKILL once the first partition has shipped; the re-run keeps that partition as it was
    and gives the shards of an uninterrupted run."""
    run_dir = tmp_path / "parted"
    cfg = _config(corpus, run_dir, 1)
    script = f"from vidcurate.pipelines.runner import Runner; from vidcurate.pipelines.config import PipelineConfig; Runner(PipelineConfig.model_validate({cfg.model_dump()!r})).run_all()"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shipped = run_dir / "partitions" / "p00000" / "shard" / "_SUCCESS.json"
    deadline = time.monotonic() + 300
    while not shipped.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert shipped.is_file() and not (run_dir / "ledger.parquet").exists()  # killed mid-run, after p00000 shipped
    first = {s: StageStore(run_dir / "partitions" / "p00000").completed(s) for s in ("split", *STAGES, "shard")}
    with caplog.at_level(logging.INFO, logger="vidcurate"):
        Runner(cfg).run_all()
    assert {s: StageStore(run_dir / "partitions" / "p00000").completed(s) for s in first} == first
    skipped = [r for r in caplog.records if r.threadName.startswith("partition") and "complete, skipped" in r.getMessage()]
    assert len(skipped) >= len(first)  # p00000's stages, at least, were not redone
    assert _tars(run_dir) == _tars(runs["root"] / "parted")


def test_partitions_on_ray_give_the_shards_the_in_process_run_gives(runs, corpus, tmp_path, ray_local):
    """Stages of different partitions run at once on a 2-CPU cluster: their model actors take
    turns (each holds every CPU) and the shards do not depend on it."""
    Runner(_config(corpus, tmp_path / "parted", 1, executor="ray", **{"partitions.in_flight": 3})).run_all()
    assert _tars(tmp_path / "parted") == _tars(runs["root"] / "parted")


@pytest.mark.slow
def test_an_outage_during_a_partitioned_run_publishes_nothing_then_ships_everything(corpus, tmp_path):
    """The caption server is down for the first run: every partition's captions fail
    transiently, so no partition is published early and the run fails its budget; once the server
    is up the same command retries exactly those clips and ships what a healthy run ships. The
    test double is the server's one boundary: it answers with the tiny captioner's real outputs."""
    from openai_server import OpenAIServer

    from vidcurate.pipelines.runner import FailureBudgetExceeded
    from vidcurate.stages.caption import CaptionConfig, make_captioner

    tiny = make_captioner(CaptionConfig(frames=4, frame_height=112, max_events=3, max_tokens=1024, temperature=1.0))
    server = OpenAIServer(tiny)  # its port is taken but nobody answers yet: the server is down
    caption = {"backend": "openai", "openai": {"base_url": server.base_url, "max_retries": 0, "backoff_s": 0.01}}

    def config(run_dir: Path):
        settings = {"executor": "in_process", "partitions.videos": 1, "shard.output": str(run_dir.parent / f"{run_dir.name}-published")}
        return load_config(None, profile="tiny", inputs=str(corpus), run_dir=str(run_dir), stages=["caption"], caption=caption, **settings)

    run_dir = tmp_path / "run"
    with pytest.raises(FailureBudgetExceeded):
        Runner(config(run_dir)).run_all()
    assert not (tmp_path / "run-published").exists()  # not even the first partition's shards
    failed = [r for r in pq.read_table(run_dir / "ledger.parquet").to_pylist() if r["entity"] == "clip" and r["status"] == "failed"]
    assert failed and all(r["stage"] == "caption" and r["transient"] for r in failed)
    with server:
        stats = Runner(config(run_dir)).run_all()
        assert len(server.requests) == len(failed)  # exactly the failed clips were asked again
        healthy = Runner(config(tmp_path / "healthy")).run_all()
    assert stats["samples"] == healthy["samples"] > 0 and stats["clips"]["failed"] == 0
    assert _members(run_dir) == _members(tmp_path / "healthy")
    published = json.loads((tmp_path / "run-published" / "index.json").read_text())
    assert sum(s["nsamples"] for s in published["shardlist"]) == stats["samples"]
