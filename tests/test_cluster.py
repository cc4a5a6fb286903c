"""A real 2-node Ray cluster on loopback (`ray start --head` + `ray start --address`): the same
command runs on it, and SIGKILL of the worker node mid-run loses nothing and duplicates
nothing: shards and ledger equal a local run's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, _free_port, dataset_digests
from vidcurate.pipelines.cli import main as cli_main

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's token authentication would need the head's token on every node and driver; a loopback
# test cluster runs without it.
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}, "RAY_AUTH_MODE": "disabled"}


def _start_node(*args: str) -> int:
    """`ray start ...` in a new process group (its daemons inherit it); returns the group id."""
    proc = subprocess.Popen([RAY, "start", *args, "--disable-usage-stats"], env=ENV,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return proc.pid


@contextlib.contextmanager
def _nodes(*node_args: tuple[str, ...]):
    """A head, then a worker node for each further entry of `node_args` (`ray start` flags);
    yields the address and the nodes' process groups."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="vc-ray-")  # short: Ray's socket paths must fit in 107 bytes
    head = ("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}")
    groups = []
    try:
        for index, args in enumerate(node_args):
            groups.append(_start_node(*(head if index == 0 else (f"--address=127.0.0.1:{port}",)), "--node-ip-address=127.0.0.1", *args))
        yield f"127.0.0.1:{port}", groups
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def cluster():
    with _nodes(("--num-cpus=1",), ("--num-cpus=1",)) as (address, groups):
        yield address, groups[1]


def _alive_nodes(address: str) -> int:
    code = "import ray; ray.init(address=%r, log_to_driver=False); print('alive', sum(n['Alive'] for n in ray.nodes()))" % address
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    return int(next(line for line in out.stdout.splitlines() if line.startswith("alive ")).split()[1])  # Ray may print warnings too


def _wait_alive_nodes(address: str, expected: int, timeout_s: float = 120) -> int:
    """Alive nodes once they reach `expected` or the timeout: the head marks a killed node dead
    only after its health checks fail (seconds), and a short run can end before that."""
    deadline = time.monotonic() + timeout_s
    while (alive := _alive_nodes(address)) != expected and time.monotonic() < deadline:
        time.sleep(2)
    return alive


def _task_workers(group: int, name: str) -> list[int]:
    """The node's worker processes running Ray task `name`: children of the node's raylet (process
    group `group`; a worker has a group of its own), titled `ray::<task>` while they run one."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if os.getpgid(parent) == group and (proc / "cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _ledger(run_dir) -> list[tuple]:
    rows = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    return sorted((r["entity"], r["id"], r["status"], r["stage"], r["reason"]) for r in rows)


def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(ray_local, prefect_server, cluster, tmp_path, mixed_inputs):
    address, worker_group = cluster
    assert _alive_nodes(address) == 2
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"inputs": str(mixed_inputs), "stages": [], "split": {"max_clip_s": 3.0}}))
    assert cli_main(["run", "--config", str(config), "--run-dir", str(tmp_path / "local")]) == 0

    run_dir = tmp_path / "cluster-run"
    cmd = [sys.executable, "-m", "vidcurate.pipelines.cli", "run", "--config", str(config), "--run-dir", str(run_dir), "--ray-address", address]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ((run_dir / "split.tmp").exists() and (splitting := _task_workers(worker_group, "write_part"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    os.killpg(worker_group, signal.SIGKILL)  # the worker node's raylet and daemons, while it runs a split batch
    for pid in splitting:
        with contextlib.suppress(ProcessLookupError):  # it may have gone down with its raylet already
            os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert dataset_digests(run_dir) == dataset_digests(tmp_path / "local")
    assert _ledger(run_dir) == _ledger(tmp_path / "local")
    assert _wait_alive_nodes(address, 1) == 1  # the kill took the node down, not just some of its processes


def test_gpu_actors_take_batches_decoded_ahead_and_ship_what_in_process_ships(ray_local, prefect_server, tmp_path, synthetic_videos):
    """Caption and embed with `num_gpus: 1` on a node with one GPU: each actor takes batches a
    1-CPU task decoded ahead of it (an actor given undecoded rows would fail: it does not decode).
    Ray counts the GPU from `--num-gpus`, it does not probe one, so on a machine without one
    torch runs on CPU and the shards must equal an in-process run's."""
    videos, _ = synthetic_videos
    settings = {"profile": "tiny", "inputs": str(videos), "stages": ["caption", "embed"]}
    gpu = {stage: {"resources": {"num_gpus": 1}} for stage in ("caption", "embed")}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**settings, **gpu}))
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({**settings, "executor": "in_process"}))
    assert cli_main(["run", "--config", str(local), "--run-dir", str(tmp_path / "local")]) == 0
    with _nodes(("--num-cpus=2", "--num-gpus=1")) as (address, _):
        cmd = [sys.executable, "-m", "vidcurate.pipelines.cli", "run", "--config", str(config), "--run-dir", str(tmp_path / "gpu"), "--ray-address", address]
        out = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:]
    assert dataset_digests(tmp_path / "gpu") == dataset_digests(tmp_path / "local") != {}
