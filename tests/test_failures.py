"""Transient failures never become permanent losses. Faults are injected with real parts: an
OpenAI-compatible caption server that is down or overloaded, a Ray worker process killed
while it captions, an object store (moto behind a proxy) in an outage during publish."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import fsspec
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import dataset_digests
from vidcurate.flows.corpus import corpus_flow
from vidcurate.flows.incremental import SHIPPED_MARKER, incremental_flow
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import FailureBudgetExceeded, Runner
from vidcurate.schemas.readers import open_shards
from vidcurate.stages.caption import CaptionConfig
from vidcurate.stages.captioners import BackendError
from vidcurate.stages.failures import is_transient
from vidcurate.pipelines.publish import PublishError, dataset_version, publish
from vidcurate.pipelines.store import StageStore

CAPTION = CaptionConfig(frames=4, frame_height=112, max_events=3, max_tokens=1024, temperature=1.0)
TRAINER_FILES = (".tar", ".parquet", "index.json")  # what a trainer reads; stats and card also count retries


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synthetic_videos):
    """One synthetic video, at one path for every run of this module (its URI is in the samples)."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(sorted(synthetic_videos[0].glob("*.mp4"))[0], folder / "a.mp4")
    return folder


@pytest.fixture(scope="module")
def tiny():
    from vidcurate.stages.caption import make_captioner

    return make_captioner(CAPTION)


def _overrides(base_url: str) -> dict:
    return {
        "stages": ["caption", "ground"],
        "split": {"max_clip_s": 4.0},
        "caption": {
            "backend": "openai",
            "openai": {"base_url": base_url, "max_retries": 0, "backoff_s": 0.01},
            "resources": {"batch_size": 2},
        },
    }


def _config(inputs, run_dir, base_url: str, **failures):
    data = {"inputs": str(inputs), "run_dir": str(run_dir), **_overrides(base_url), "failures": failures}
    return load_config(None, profile="tiny", **{k: v for k, v in data.items()})


def _ledger(run_dir) -> list[dict]:
    return [r for r in pq.read_table(run_dir / "ledger.parquet").to_pylist() if r["entity"] == "clip"]


def _trainer_digests(run_dir) -> dict[str, str]:
    return {k: v for k, v in dataset_digests(run_dir).items() if k.endswith(TRAINER_FILES)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, inputs, tiny, ray_local):
    """The reference: the same job with a healthy caption server."""
    from openai_server import OpenAIServer

    run_dir = tmp_path_factory.mktemp("uninterrupted")
    with OpenAIServer(tiny) as server:
        stats = Runner(_config(inputs, run_dir, server.base_url)).run_all()
    assert stats["clips"]["failed"] == 0 and stats["samples"] >= 3
    return run_dir, stats


def test_failures_are_classified_transient_or_permanent(tmp_path):
    import torch

    with socket.socket() as s:  # a port nobody listens on: a server that is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError) as refused:
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert is_transient(refused.value)
    garbage = tmp_path / "garbage.mp4"
    # seeded, not os.urandom: about 1 random 4 KiB blob in 300 probes as some format (e.g. lrc) and opens
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(av.error.FFmpegError) as undecodable:
        av.open(str(garbage))
    assert not is_transient(undecodable.value)  # an OSError subclass, but the media's fault
    with pytest.raises(FileNotFoundError) as missing:
        open(tmp_path / "absent.mp4", "rb")
    assert not is_transient(missing.value)
    assert is_transient(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_transient(TimeoutError("read timed out"))
    assert not is_transient(ValueError("a bug of ours"))
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as exc:
            raise RuntimeError("could not read the clip") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)  # the cause decides
    assert is_transient(BackendError("HTTP 503 after 5 retries", transient=True))
    assert not is_transient(BackendError("HTTP 400: bad request", transient=False))


def test_a_rerun_retries_exactly_the_transient_failures(tmp_path, inputs, tiny, uninterrupted):
    """An overloaded server fails some clips; the next run asks again for those clips only,
    keeps everything else, and ships what the uninterrupted run shipped."""
    from openai_server import OpenAIServer

    reference, ref_stats = uninterrupted
    run_dir = tmp_path / "run"
    with OpenAIServer(tiny, fail_first=1) as server:
        cfg = _config(inputs, run_dir, server.base_url, max_failed_fraction=1.0)
        Runner(cfg).run_all()
        failed = [r for r in _ledger(run_dir) if r["status"] == "failed"]
        assert failed and len(failed) < ref_stats["clips"]["kept"]  # one batch failed, the others were captioned
        assert all(r["stage"] == "caption" and r["transient"] and r["tries"] == 1 for r in failed)
        assert all(r["reason"].startswith("backend: BackendError: HTTP 503") for r in failed)
        split_marker = StageStore.marker(run_dir / "split")
        asked = len(server.requests)

        stats = Runner(cfg).run_all()

        assert len(server.requests) - asked == len(failed)  # exactly the failed clips were asked again
    assert StageStore.marker(run_dir / "split") == split_marker  # upstream untouched
    marker = StageStore.marker(run_dir / "caption")
    assert marker.rows_done == len(failed) and marker.rows == ref_stats["clips"]["total"] - ref_stats["clips"]["rejected"]
    retried = {r["id"]: r for r in _ledger(run_dir) if r["id"] in {f["id"] for f in failed}}
    assert all(r["status"] == "kept" and r["tries"] == 2 for r in retried.values())
    assert stats["samples"] == ref_stats["samples"] and stats["clips"]["retried"] == len(failed)
    assert _trainer_digests(run_dir) == _trainer_digests(reference)


def test_a_run_while_the_server_is_down_fails_then_ships_everything_once_it_is_up(
    tmp_path, inputs, tiny, uninterrupted, prefect_server, capsys
):
    from openai_server import OpenAIServer

    reference, ref_stats = uninterrupted
    server = OpenAIServer(tiny)  # its port is taken but nobody answers yet: the server is down
    run_dir = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"profile": "tiny", "inputs": str(inputs), "run_dir": str(run_dir), **_overrides(server.base_url)}))

    assert cli_main(["run", "--config", str(config)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the failure budget" in err[0] and "transient failures a re-run retries" in err[0]
    clips = _ledger(run_dir)
    assert clips and all(r["status"] == "failed" and r["transient"] for r in clips if r["stage"] == "caption")
    written = json.loads((run_dir / "shard" / "dataset" / "stats.json").read_text())
    assert written["samples"] == 0 and written["failure_budget"]  # written locally, not published
    state = corpus_flow(load_config(config).model_dump(), return_state=True)  # as a deployment runs it
    assert state.is_failed(), state

    with server:
        assert cli_main(["run", "--config", str(config), "--no-retry"]) == 3
        assert server.requests == []  # told not to retry: nothing was asked
        assert cli_main(["run", "--config", str(config)]) == 0
        assert len(server.requests) == len([r for r in clips if r["stage"] == "caption"])
    assert all(r["status"] != "failed" for r in _ledger(run_dir))
    assert _trainer_digests(run_dir) == _trainer_digests(reference)
    assert cli_main(["inspect", str(run_dir)]) == 0
    assert "failed (0 transient, 0 permanent)" in capsys.readouterr().out


def test_report_and_inspect_tell_transient_from_permanent(tmp_path, inputs, capsys, ray_local):
    from vidcurate.pipelines.report import build_report

    run_dir = tmp_path / "run"
    with socket.socket() as down:  # bound, never listening: connections are refused
        down.bind(("127.0.0.1", 0))
        cfg = _config(inputs, run_dir, f"http://127.0.0.1:{down.getsockname()[1]}/v1", max_failed_fraction=1.0)
        Runner(cfg).run_all()
    html = build_report(run_dir)
    failed = [r for r in _ledger(run_dir) if r["status"] == "failed"]
    assert failed and html.count("<td>transient</td>") >= 1 and "<th>tries</th>" in html
    assert cli_main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{len(failed)} failed ({len(failed)} transient, 0 permanent)" in out
    assert f"failed(caption, transient): backend" in out and f"transient failures by tries so far: {len(failed)} after 1" in out


def test_scheduled_increments_during_an_outage_ship_once_the_server_is_back(
    tmp_path, inputs, tiny, uninterrupted, prefect_server
):
    from openai_server import OpenAIServer

    reference, ref_stats = uninterrupted
    server = OpenAIServer(tiny)
    root = tmp_path / "corpus"
    config = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(root), **_overrides(server.base_url)).model_dump()

    with pytest.raises(FailureBudgetExceeded, match="did not ship"):
        incremental_flow(config)  # night 1: the server is down
    (increment,) = (root / "increments").iterdir()
    assert not (increment / SHIPPED_MARKER).exists()

    with server:  # night 2: the server is back but overloaded for a moment; the budget allows it
        server.failures_left = 1
        lenient = {**config, "failures": {**config["failures"], "max_failed_fraction": 0.5}}
        second = incremental_flow(lenient)
        retried = [r for r in _ledger(increment) if r["status"] == "failed"]
        assert second["increments_run"] == [increment.name] and (increment / SHIPPED_MARKER).is_file()
        assert retried and all(r["transient"] and r["tries"] == 2 for r in retried)  # shipped, not yet whole
        result = incremental_flow(config)  # night 3: the increment still has retries, so it runs again
    assert result["increments_run"] == [increment.name] and result["samples"] == ref_stats["samples"]
    assert not [r for r in _ledger(increment) if r["status"] == "failed"]

    def samples(location):
        return sorted((s["__key__"], s["json"], s["mp4"]) for s in open_shards(str(location)))

    assert samples(increment / "shard" / "dataset") == samples(reference / "shard" / "dataset")


def _caption_worker_pids() -> list[int]:
    """Ray names its worker processes after the actor they hold (their /proc cmdline)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"CaptionWorker" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_a_killed_model_worker_loses_and_duplicates_nothing(tmp_path, inputs, ray_local):
    """SIGKILL to the Ray worker process holding the captioning model, mid-stage: Ray restarts
    the actor and re-runs its batch; every clip is captioned exactly once, as without the kill."""
    overrides = {"stages": ["caption"], "split.max_clip_s": 4.0, "caption.resources.batch_size": 1}
    runners = {}
    for name in ("killed", "calm"):
        runners[name] = Runner(load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(tmp_path / name), **overrides))
        for stage in ("probe", "split"):
            runners[name].run_stage(stage)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_run_or_error(runners["killed"], "caption")))
    thread.start()
    deadline = time.monotonic() + 300
    while not (pids := _caption_worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids, "no captioning worker appeared"
    time.sleep(2.0)  # let it load the model and start a batch
    assert thread.is_alive(), "the stage finished before the worker could be killed"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    restarted = set()
    while not restarted and thread.is_alive():
        restarted = set(_caption_worker_pids()) - set(pids)
        time.sleep(0.1)
    assert restarted, "Ray did not start a new captioning worker"
    thread.join(600)
    assert errors == [None]
    runners["calm"].run_stage("caption")

    def captions(name):
        rows = pq.read_table(tmp_path / name / "caption").to_pylist()
        return sorted((r["clip_id"], r["status"], r["caption"], r["events"]) for r in rows)

    killed = captions("killed")
    assert len({r[0] for r in killed}) == len(killed)  # no duplicates
    assert killed == captions("calm")  # nothing lost, nothing changed


def _run_or_error(runner, stage):
    try:
        runner.run_stage(stage)
    except Exception as exc:  # noqa: BLE001 - reported to the test thread
        return exc
    return None


@pytest.fixture()
def flaky_store(s3_endpoint, monkeypatch):
    """The S3 test server behind a proxy that can go down; botocore's own retries are off, so
    the publish's retries are the ones tested."""
    from flaky_proxy import FlakyProxy

    with FlakyProxy(s3_endpoint) as proxy:
        monkeypatch.setitem(
            fsspec.config.conf, "s3", {"endpoint_url": proxy.url, "config_kwargs": {"retries": {"max_attempts": 1}}}
        )
        fsspec.filesystem("s3").mkdir("flaky")
        yield proxy


def _published(url: str) -> list[tuple]:
    fsspec.filesystem("s3").invalidate_cache()
    return sorted((s["__key__"], s["mp4"]) for s in open_shards(url))


def test_an_object_store_outage_during_publish_never_shows_a_partial_dataset(tmp_path, uninterrupted, flaky_store):
    reference, _ = uninterrupted
    full = reference / "shard" / "dataset"
    first_shard = json.loads((full / "index.json").read_text())["shardlist"][0]
    smaller = tmp_path / "smaller"  # another version of the dataset: its first shard only
    smaller.mkdir()
    for name in (first_shard["url"], first_shard["url"].replace(".tar", ".parquet")):
        shutil.copy(full / name, smaller / name)
    (smaller / "index.json").write_text(json.dumps({"shardlist": [first_shard]}))
    url = "s3://flaky/dataset"

    publish(smaller, url)
    assert _published(url) == _published(str(smaller))

    flaky_store.fail_next = 3  # a short outage: the publish retries through it
    publish(full, url, backoff_s=0.05)
    assert flaky_store.refused == 3 and _published(url) == _published(str(full))

    flaky_store.failing = True  # a long outage, from the first upload on
    with pytest.raises(PublishError, match="failed at"):
        publish(smaller, url, retries=2, backoff_s=0.05)
    flaky_store.failing = False
    assert _published(url) == _published(str(full))  # the previous dataset, whole

    flaky_store.fail_writes_to = "index.json"  # every shard uploads, then the commit point fails
    with pytest.raises(PublishError, match="failed at index.json"):
        publish(smaller, url, retries=2, backoff_s=0.05)
    flaky_store.fail_writes_to = None
    assert _published(url) == _published(str(full))  # the new shards are there, but nothing names them
    assert fsspec.filesystem("s3").exists(f"flaky/dataset/{dataset_version(smaller)}")

    publish(smaller, url)  # the store is back: the next publish goes through
    assert _published(url) == _published(str(smaller))
    versions = [p for p in fsspec.filesystem("s3").ls("flaky/dataset", detail=False) if "/v-" in p]
    assert len(versions) == 1  # the versions no index names are gone
