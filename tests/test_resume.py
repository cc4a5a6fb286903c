"""kill -9 of a whole run in the middle, then the same command again: the shards are
byte-identical to an uninterrupted run's and the ledger is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from conftest import REPO, dataset_digests
from vidcurate.pipelines.cli import main as cli_main


def _ledger(run_dir) -> list[tuple]:
    rows = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    return sorted((r["entity"], r["id"], r["status"], r["stage"], r["reason"]) for r in rows)


def test_kill_9_midway_then_rerun_matches_an_uninterrupted_run(tmp_path, mixed_inputs, ray_local, prefect_server):
    job = tmp_path / "job.yaml"
    job.write_text("profile: tiny\n")
    args = ["run", "--config", str(job), "--inputs", str(mixed_inputs)]
    assert cli_main([*args, "--run-dir", str(tmp_path / "clean")]) == 0

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "vidcurate.pipelines.cli", *args, "--run-dir", str(crashed)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own temporary server
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (crashed / "split.tmp").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray workers and Prefect's server, all at once
    proc.wait()
    assert (crashed / "probe" / "_SUCCESS.json").exists() and not (crashed / "split").exists()
    left = crashed / "media" / "clips" / "killed.mp4.4242-0123456789ab.part"  # as a killed writer leaves it
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half a clip")

    assert cli_main([*args, "--run-dir", str(crashed)]) == 0
    assert not list((crashed / "media").rglob("*.part"))
    assert dataset_digests(crashed) == dataset_digests(tmp_path / "clean")
    assert _ledger(crashed) == _ledger(tmp_path / "clean")
