"""Scheduled corpus building: increments take only unseen inputs, ship nothing twice, finish
an interrupted increment first, and `vidcurate serve --cron` serves it as a Prefect deployment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from vidcurate.flows.incremental import incremental_flow, plan_increment
from vidcurate.pipelines.config import load_config

STAGES = ["embed", "dedup"]  # what cross-increment dedup needs; captioning has its own tests


@pytest.fixture()
def corpus(tmp_path, synthetic_videos):
    videos, _ = synthetic_videos
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return inbox, sorted(videos.glob("*.mp4")), tmp_path / "corpus"


def _config(inbox, root) -> dict:
    return load_config(None, profile="tiny", inputs=str(inbox), run_dir=str(root), stages=STAGES).model_dump()


def test_increments_take_only_new_inputs_and_never_reship(corpus, ray_local, prefect_server):
    inbox, videos, root = corpus
    shutil.copy(videos[0], inbox / "a.mp4")
    first = incremental_flow(_config(inbox, root))
    assert len(first["increments_run"]) == 1 and first["samples"] > 0

    shutil.copy(videos[1], inbox / "b.mp4")
    second = incremental_flow(_config(inbox, root))
    (new,) = second["increments_run"]
    probed = pq.read_table(root / "increments" / new / "probe").column("uri").to_pylist()
    assert [os.path.basename(u) for u in probed] == ["b.mp4"]
    assert second["samples"] > first["samples"]

    assert incremental_flow(_config(inbox, root))["increments_run"] == []  # nothing new

    shutil.copy(videos[0], inbox / "a_again.mp4")  # same content, new name
    fourth = incremental_flow(_config(inbox, root))
    assert fourth["samples"] == second["samples"]
    (again,) = fourth["increments_run"]
    dedup = pq.read_table(root / "increments" / again / "dedup").to_pylist()
    assert dedup and all(r["status"] == "rejected" and "(shipped, " in r["reason"] for r in dedup)


def test_an_interrupted_increment_is_finished_first(corpus, ray_local, prefect_server):
    inbox, videos, root = corpus
    shutil.copy(videos[0], inbox / "a.mp4")
    planned = plan_increment(load_config(None, profile="tiny", inputs=str(inbox), run_dir=str(root), stages=STAGES))
    interrupted = os.path.basename(planned["run_dir"])  # planned, then the process died
    shutil.copy(videos[1], inbox / "b.mp4")
    result = incremental_flow(_config(inbox, root))
    assert result["increments_run"][0] == interrupted and len(result["increments_run"]) == 2
    assert (root / "increments" / interrupted / "ledger.parquet").is_file()


def test_serve_cron_deploys_and_runs_the_incremental_flow(corpus, prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    inbox, videos, root = corpus
    shutil.copy(videos[0], inbox / "a.mp4")
    config = tmp_path / "corpus.yaml"
    config.write_text(yaml.safe_dump({"profile": "tiny", "inputs": str(inbox), "run_dir": str(root), "stages": STAGES, "ray": {"num_cpus": 1}}))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "vidcurate.pipelines.cli", "serve", "--config", str(config), "--cron", "0 3 * * *", "--name", "nightly"]
    server = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deployment = asyncio.run(_wait_for_deployment("vidcurate-incremental/nightly", get_client))
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        flow_run = run_deployment("vidcurate-incremental/nightly", timeout=600)
        assert flow_run.state.is_completed(), flow_run.state
        (increment,) = (root / "increments").iterdir()
        assert (increment / "ledger.parquet").is_file()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


async def _wait_for_deployment(name: str, get_client, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            try:
                return await client.read_deployment_by_name(name)
            except Exception:  # noqa: BLE001 - not registered yet
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)


def test_increment_config_records_its_inputs(corpus):
    inbox, videos, root = corpus
    shutil.copy(videos[0], inbox / "a.mp4")
    planned = plan_increment(load_config(None, profile="tiny", inputs=str(inbox), run_dir=str(root), stages=STAGES))
    recorded = json.loads((root / "increments" / os.path.basename(planned["run_dir"]) / "config.json").read_text())
    assert recorded["inputs_list"] == [str(inbox / "a.mp4")]
    assert recorded["config"]["dedup"]["history"] == str(root / "shipped")
    assert plan_increment(load_config(None, profile="tiny", inputs=str(inbox), run_dir=str(root), stages=STAGES)) is None  # seen
