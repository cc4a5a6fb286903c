"""Nothing a run starts outlives it (issue #42): the real `vidcurate` console script runs in a
subprocess on one short synthetic video, its process tree is collected with psutil while it
runs, and afterwards every one of those processes must be gone. Prefect's temporary server is
made slow or dead by freezing its real process (SIGSTOP), as a busy machine would. Those runs
start Ray and Prefect's server of their own, so they are marked slow by hand (the fixtures that
mark the others are not used)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from vidcurate.pipelines.cli import build_parser

VIDCURATE = Path(sys.executable).with_name("vidcurate")
SERVER = "prefect.server.api.server:create_app"  # in the temporary server's command line
RAY_DAEMONS = {"raylet", "gcs_server"}


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """One 2-second video through probe -> split -> shard on local Ray (1 CPU: fewer workers to start)."""
    from make_synthetic import encode, render

    root = tmp_path_factory.mktemp("services")
    frames, _ = render(3, shots=2)
    (root / "videos").mkdir()
    encode(frames[:50], root / "videos" / "one.mp4")
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump({"inputs": str(root / "videos"), "stages": [], "ray": {"num_cpus": 1}}))
    return config


@pytest.fixture(scope="module")
def job_without_ray(job) -> Path:
    config = job.with_name("in_process.yaml")
    config.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "executor": "in_process"}))
    return config


@pytest.fixture
def launch(tmp_path):
    """Starts watched runs; whatever a failing test leaves of them is killed at its end (by pid, its own only)."""
    runs: list[WatchedRun] = []

    def start(args: list[str], **env: str) -> WatchedRun:
        runs.append(WatchedRun(args, tmp_path / f"log{len(runs)}", _env(**env)))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for p in run.seen:
            if _alive(p):
                p.kill()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own temporary server
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


class WatchedRun:
    """`vidcurate ARGS` in a session of its own; `watch` records every process of its tree until it exits."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen([str(VIDCURATE), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[psutil.Process, str] = {}  # by pid and start time; its command line as last seen alive
        self.children: set[psutil.Process] = set()  # of the `vidcurate` process itself

    def tree(self) -> list[psutil.Process]:
        try:
            run = psutil.Process(self.proc.pid)
            found = run.children(recursive=True)
            self.children.update(run.children())
        except psutil.NoSuchProcess:
            return []
        for p in found:  # a forked child shows its parent's command line until it execs
            self.seen[p] = _cmdline(p) or self.seen.get(p, "")
        return found

    def servers(self) -> list[psutil.Process]:
        """Not the server's own forks, which show its command line until they exec."""
        return [p for p, cmdline in self.seen.items() if SERVER in cmdline and p in self.children]

    def programs(self) -> set[str]:
        return {_program(cmdline) for cmdline in self.seen.values()}

    def watch(self, step=None, timeout_s: float = 300) -> int:
        """Until the run exits; `step(self)` after each look at the tree."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            self.tree()
            if step is not None:
                step(self)
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.02)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()

    def left_running(self) -> list[str]:
        return [f"{p.pid} {cmdline[:120]}" for p, cmdline in self.seen.items() if _alive(p)]


def _cmdline(p: psutil.Process) -> str:
    """Empty once it has exited (a zombie has none)."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _program(cmdline: str) -> str:
    return cmdline.split(" ")[0].rsplit("/", 1)[-1]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running also tells a reused pid apart
    except psutil.NoSuchProcess:
        return False


def _freeze_servers(until_age_s: float | None):
    """A step that stops (SIGSTOP) each temporary server as soon as it appears and lets it go on
    once it is `until_age_s` old (None: never)."""
    frozen: set[psutil.Process] = set()

    def step(run: WatchedRun) -> None:
        for server in run.servers():
            with contextlib.suppress(psutil.NoSuchProcess):
                if server not in frozen:
                    server.suspend()
                    frozen.add(server)
                elif until_age_s is not None and time.time() - server.create_time() > until_age_s:
                    server.resume()

    return step


@pytest.mark.slow
def test_a_start_slower_than_prefects_own_timeout_is_waited_for_and_leaves_nothing(job, tmp_path, launch):
    """Prefect's own start-up timeout forced to 1 s and the server frozen for its first 6 s: the
    run waits, says so, and ships; one server, and afterwards no process of the run is left
    (Prefect's server, Ray's daemons and workers). Before the fix this printed a traceback,
    started a second server on the same port and left the first one running."""
    run = launch(["run", "--config", str(job), "--run-dir", str(tmp_path / "run")], PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    code = run.watch(_freeze_servers(until_age_s=6))
    out = run.output()
    assert code == 0, out[-3000:]
    assert re.search(r"INFO vidcurate: waiting for Prefect's temporary server, \d+ s", out), out[-3000:]
    assert "Traceback" not in out and "Timed out" not in out, out[-3000:]
    assert len(run.servers()) == 1, [run.seen[p] for p in run.servers()]
    assert RAY_DAEMONS <= run.programs(), "the run's Ray was not seen"
    assert (tmp_path / "run" / "shard" / "dataset" / "index.json").is_file()
    assert run.left_running() == []


@pytest.mark.slow
def test_a_server_that_never_answers_ends_the_run_in_one_line_and_leaves_nothing(job, tmp_path, launch):
    """Frozen for good: after --prefect-start-timeout the run stops it and its Ray, and says what to do."""
    run = launch(["run", "--config", str(job), "--run-dir", str(tmp_path / "run"), "--prefect-start-timeout", "3"])
    code = run.watch(_freeze_servers(until_age_s=None))
    out = run.output()
    assert code == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("vidcurate: failed: Prefect's temporary server did not answer within 3 s; run again with a longer --prefect-start-timeout"), out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "probe").exists()
    assert len(run.servers()) == 1 and RAY_DAEMONS <= run.programs()
    assert run.left_running() == []


@pytest.mark.slow
def test_a_server_that_exits_while_starting_ends_the_run_at_once_in_one_line(job_without_ray, tmp_path, launch):
    """Its database cannot be opened, so uvicorn exits (code 3): the run says so at once instead
    of waiting out --prefect-start-timeout (600 s here, past the watch's 300 s)."""
    args = ["run", "--config", str(job_without_ray), "--run-dir", str(tmp_path / "run"), "--prefect-start-timeout", "600"]
    run = launch(args, PREFECT_SERVER_DATABASE_CONNECTION_URL="sqlite+aiosqlite:////proc/nowhere/prefect.db")
    code = run.watch()
    last = run.output().strip().splitlines()[-1]
    assert code == 1, run.output()[-3000:]
    assert last == (
        "vidcurate: failed: Prefect's temporary server exited with code 3 before it answered (its errors are above); "
        "start a server (`prefect server start`) and set PREFECT_API_URL"
    )
    assert len(run.servers()) == 1 and run.left_running() == []


def _ray_stopping(run: WatchedRun) -> bool:
    """The server is gone and Ray's daemons are all still up: the run is inside `ray.shutdown`."""
    daemons = [p for p, cmdline in run.seen.items() if _program(cmdline) in RAY_DAEMONS]
    return not any(_alive(p) for p in run.servers()) and all(_alive(p) for p in daemons)


def _signal_mid_stage_and_while_stopping(run_dir: Path, send) -> tuple[list[float], object]:
    """A step that calls `send()` once split is running on Ray, then every 0.1 s from the server's
    end until Ray's daemons start going (inside `ray.shutdown`, which a press there cut short)."""
    sent: list[float] = []

    def step(run: WatchedRun) -> None:
        if sent and time.monotonic() - sent[-1] < 0.1:
            return
        if (not sent and (run_dir / "split.tmp").exists()) or (sent and _ray_stopping(run)):
            send(run)
            sent.append(time.monotonic())

    return sent, step


@pytest.mark.slow
def test_ctrl_c_mid_stage_and_again_while_stopping_stops_every_process_of_the_run(job, tmp_path, launch):
    """SIGINT to the run's whole process group, as Ctrl-C in a terminal sends it, while split runs
    on Ray; then, as an impatient user would, again while the run stops its processes."""
    run_dir = tmp_path / "run"
    run = launch(["run", "--config", str(job), "--run-dir", str(run_dir)])
    pressed, ctrl_c = _signal_mid_stage_and_while_stopping(run_dir, lambda run: os.killpg(run.proc.pid, signal.SIGINT))
    code = run.watch(ctrl_c)
    out = run.output()
    assert len(pressed) >= 2 and code == 130, (len(pressed), out[-3000:])
    assert out.strip().splitlines()[-1] == "vidcurate: interrupted"
    assert "Traceback" not in out, out[-3000:]
    assert RAY_DAEMONS <= run.programs()
    assert run.left_running() == []


@pytest.mark.slow
def test_sigterm_mid_stage_and_again_while_stopping_stops_every_process_of_the_run(job, tmp_path, launch):
    """SIGTERM to the `vidcurate` process alone, as `kill PID` or a container runtime stopping its
    first process sends it, while split runs on Ray, and again while the run stops its
    processes: one line, exit code 143, nothing of the run left. Before, Python's default action
    ended the process at once and left Prefect's server running."""
    run_dir = tmp_path / "run"
    run = launch(["run", "--config", str(job), "--run-dir", str(run_dir)])
    sent, term = _signal_mid_stage_and_while_stopping(run_dir, lambda run: run.proc.send_signal(signal.SIGTERM))
    code = run.watch(term)
    out = run.output()
    assert len(sent) >= 2 and code == 143, (len(sent), code, out[-3000:])
    assert out.strip().splitlines()[-1] == "vidcurate: terminated"
    assert "Traceback" not in out, out[-3000:]
    assert RAY_DAEMONS <= run.programs()
    assert run.left_running() == []


def test_the_wait_is_the_option_or_else_the_environment_variable_or_else_120_s(monkeypatch):
    monkeypatch.delenv("VIDCURATE_PREFECT_START_TIMEOUT", raising=False)
    assert build_parser().parse_args(["run"]).prefect_start_timeout == 120
    monkeypatch.setenv("VIDCURATE_PREFECT_START_TIMEOUT", "300")
    assert build_parser().parse_args(["run"]).prefect_start_timeout == 300
    assert build_parser().parse_args(["serve", "--cron", "0 3 * * *"]).prefect_start_timeout == 300
    assert build_parser().parse_args(["run", "--prefect-start-timeout", "7.5"]).prefect_start_timeout == 7.5
