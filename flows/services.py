"""The processes a run starts for itself, and their end.

Prefect's temporary server (where no PREFECT_API_URL is set) and a local Ray start side by side
(one after the other they took 8-12 s of a small run). However the run ends (done, failed,
Ctrl-C, SIGTERM, or a server that never answered), every process they started is stopped before
`run_services` returns, so nothing outlives the run (issue #42).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.executors import ensure_ray

log = logging.getLogger("vidcurate")

PROGRESS_EVERY_S = 5


class ServerDidNotStart(RuntimeError):
    """Prefect's temporary server did not answer in time (`timed_out`), or exited before it did."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


class Terminated(KeyboardInterrupt):
    """SIGTERM to the run (`kill`, a scheduler or container stopping it): it unwinds the run as
    Ctrl-C does, so the processes the run started are stopped. Python's default action ends the
    process at once and left Prefect's server running."""


class TemporaryServer:
    """Prefect's temporary server as the one instance every Prefect client of this process asks
    for (`SubprocessASGIServer()`), spawned without waiting so that Ray starts meanwhile.

    Prefect's own `start()` waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (20 s) and then
    marks the server not running while its process goes on starting; the flow's client then
    called `start()` again, which launched a second server on the same port and dropped the
    first one's handle, so `stop()` never reached it. Here the instance counts as running from
    the spawn on, so no client starts another, and its one process is waited on as long as the
    run allows, then stopped.
    """

    def __init__(self, server) -> None:
        self.server = server
        self.answered = False

    @classmethod
    def unless_running(cls) -> TemporaryServer | None:
        """None where this process already has one running (not this run's to stop)."""
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        return None if server.running else cls(server)

    def spawn(self) -> None:
        server = self.server
        server.port = server.find_available_port()
        log.info("starting Prefect's temporary server on %s", server.address)
        with _deaf_to_ctrl_c():
            server.server_process = server._run_uvicorn_command()
            server.running = True
        self.spawned = time.monotonic()

    def wait(self, timeout_s: float) -> None:
        """Until it answers; progress every PROGRESS_EVERY_S seconds."""
        next_note = PROGRESS_EVERY_S
        while not self._answers():
            elapsed = time.monotonic() - self.spawned
            code = self.server.server_process.poll()
            if code is not None:
                message = f"Prefect's temporary server exited with code {code} before it answered (its errors are above)"
                raise ServerDidNotStart(message, timed_out=False)
            if elapsed >= timeout_s:
                raise ServerDidNotStart(f"Prefect's temporary server did not answer within {timeout_s:g} s", timed_out=True)
            if elapsed >= next_note:
                log.info("waiting for Prefect's temporary server, %d s", elapsed)
                next_note = (elapsed // PROGRESS_EVERY_S + 1) * PROGRESS_EVERY_S
            time.sleep(0.1)
        self.answered = True

    def _answers(self) -> bool:
        """Healthy, and on a port its own process listens on (not another run's server that took
        the port while this one was still starting)."""
        import httpx
        import psutil

        pid, port = self.server.server_process.pid, self.server.port
        try:
            connections = psutil.Process(pid).net_connections("tcp")
            listening = any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in connections)
            return listening and httpx.get(f"{self.server.api_url}/health", timeout=5).status_code == 200
        except (psutil.Error, httpx.TransportError):
            return False

    def stop(self) -> None:
        """Once Prefect's log and event workers have sent what they hold (else they try again at
        exit, against a server that is gone: "Error logging to API")."""
        if self.answered:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=10, at_exit=False)
        elif self.server.server_process is not None:  # it never served: nothing to shut down gracefully,
            self.server.server_process.kill()  # and a frozen one would not hear SIGTERM
        self.server.stop()


@contextmanager
def _deaf_to_ctrl_c() -> Iterator[None]:
    """Processes spawned inside start with SIGINT blocked: the mask survives fork and exec, and
    uvicorn's handler does not unblock it. Ctrl-C reaches the terminal's whole process group, and
    a server stopped by it could not record the flow run's end (a ConnectError traceback instead
    of "interrupted"); the run stops it itself, afterwards (SIGTERM)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _stops_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM arriving while the run stops its processes is held until they are
    stopped, then raised. Raised inside `ray.shutdown`, Ctrl-C cut the shutdown short: Ray's
    daemons stayed up until the interpreter's exit, where further presses killed the process
    (exit -2) or printed "Exception ignored" tracebacks."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    held: list[BaseException] = []
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: held.append(KeyboardInterrupt())),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: held.append(Terminated())),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            raise held[0]


@contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the body (Prefect's flow engine, which
    catches SIGTERM itself while a flow runs, hands it on to this handler once it has recorded
    the flow run's crash)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@contextmanager
def run_services(cfg: PipelineConfig, start_timeout_s: float, start_ray: bool = True) -> Iterator[None]:
    """Prefect's temporary server (where no PREFECT_API_URL is set) and, with `start_ray` and the
    Ray executor, the run's Ray, for the body. Afterwards, however the body ended, the server is
    stopped and a Ray this run started (here or in a stage) is shut down with its processes. Ray
    starts in this thread (started in a thread, it failed to reach its GCS: docs/decisions.md)."""
    from prefect.settings import PREFECT_API_URL

    with _terminate_unwinds():
        stack = ExitStack()
        if not _ray_initialized():
            stack.callback(_shut_down_ray)
        server = None if PREFECT_API_URL.value() else TemporaryServer.unless_running()
        if server is not None:
            stack.callback(server.stop)
        try:
            if server is not None:
                server.spawn()
            if start_ray and cfg.executor == "ray":
                ensure_ray(cfg)
            if server is not None:
                server.wait(start_timeout_s)
            yield
        finally:
            with _stops_held():
                stack.close()  # each stop runs, even where one before it raised


def _shut_down_ray() -> None:
    if _ray_initialized():
        import ray

        ray.shutdown()
