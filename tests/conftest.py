"""Shared fixtures: real local Ray, real Prefect (temporary server), real S3-compatible server,
real decoders on real and synthetic videos. Nothing here is mocked."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "data" / "videos"
sys.path.insert(0, str(REPO / "sample_data"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tiny models are built once per test session into a fresh cache (set before Ray starts, so
# Ray workers build and read the same one), removed when the session ends.
SESSION_CACHE = None if "VIDCURATE_CACHE" in os.environ else tempfile.mkdtemp(prefix="vidcurate-cache-")
if SESSION_CACHE:
    os.environ["VIDCURATE_CACHE"] = SESSION_CACHE


# Tests that start a Ray cluster or Prefect's server are the heavy end-to-end ones: marked
# `slow`, so `pytest -m "not slow"` is the fast loop of unit tests (CI runs everything).
HEAVY_FIXTURES = frozenset({"ray_local", "prefect_server"})


def pytest_unconfigure(config):
    """Each session's cache is ~66 MB of models: left behind, hundreds of runs filled the disk."""
    if SESSION_CACHE:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index (moov) first, as streaming sites serve MP4: truncating such a file
    leaves it openable, with data missing at the end."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), mode="w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def dataset_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file trainers get (shards, sidecars, index, stats, card)."""
    dataset = run_dir / "shard" / "dataset"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dataset.iterdir())}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto in server mode on loopback; credentials and endpoint exported before Ray starts,
    so Ray workers inherit them."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic videos with known transitions: (videos dir, truth dir)."""
    from make_synthetic import make

    out = tmp_path_factory.mktemp("synthetic") / "videos"
    make(out, count=2, seed=10)
    return out, out.parent / "truth"


@pytest.fixture(scope="session")
def mixed_inputs(tmp_path_factory, synthetic_videos) -> Path:
    """Good videos (synthetic + one real) beside damaged and non-video files."""
    root = tmp_path_factory.mktemp("inputs")
    for video in sorted(synthetic_videos[0].glob("*.mp4")):
        shutil.copy(video, root / video.name)
    shutil.copy(SHARED_VIDEOS / "psd_testvideo.mp4", root / "real nature clip.mp4")
    (root / "empty.mp4").write_bytes(b"")
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (root / "notes.txt.mov").write_text("this is not a video\n")
    data = faststart_copy(SHARED_VIDEOS / "psd_testvideo.mp4", root / "faststart.tmp").read_bytes()
    (root / "faststart.tmp").unlink()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "escaping link.mp4").symlink_to(SHARED_VIDEOS / "psd_counter.mp4")
    (root / "index_at_end_truncated.mp4").write_bytes((SHARED_VIDEOS / "psd_testvideo.mp4").read_bytes()[:100_000])
    return root


@pytest.fixture(scope="session")
def cut_clips(tmp_path_factory, synthetic_videos) -> list[dict]:
    """Kept clip rows (with their mp4 files) of the first synthetic video, cut by the real
    probe and split stages: input for the clip-level stages' tests."""
    from vidcurate.stages.probe import ProbeConfig
    from vidcurate.stages.split import SplitConfig
    from vidcurate.stages.probe import probe_video
    from vidcurate.stages.split import split_video

    videos, _ = synthetic_videos
    video = probe_video(str(sorted(videos.glob("*.mp4"))[0]), ProbeConfig(), None)
    rows = split_video(video, tmp_path_factory.mktemp("media"), SplitConfig(max_clip_s=4.0, clip_max_height=96))
    return [r for r in rows if r["status"] == "kept"]
