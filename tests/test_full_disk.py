"""A full disk loses nothing. The run directory sits on a real small file system (a tmpfs the test
mounts; root only, as in CI), filled so the disk runs out at several points of the run; each time
`vidcurate run` stops with one line, no traceback, and after space is freed the same command
finishes with the shards of an undisturbed run, byte for byte. The captioner is the alignment
tests' test double (planted events, at the backend interface, over a real HTTP server)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import dataset_digests
from planted import DURATION_S as PLANTED_S
from planted import PlantedEventCaptioner, make_planted_video
from vidcurate.pipelines.cli import main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.disk import written_per_video_hour
from vidcurate.pipelines.doctor import diagnose

DISK = 16 << 20  # the tmpfs: room for the filler and the run


@contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at `path` for the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode:
        if os.environ.get("CI") == "true":
            pytest.fail(f"could not mount a tmpfs: {mounted.stderr}")
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leave_free(disk: Path, free: int) -> Path:
    """Fill the disk with a file so that about `free` bytes stay free; returns the filler."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(stat.f_bavail * stat.f_frsize - free, 1))
    return filler


def disk_use(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def job(tmp_path_factory, prefect_server):
    """The planted video, the caption server (test double) and a config file for `vidcurate run`
    (caption + ground: clips, and a window over them), plus an undisturbed run's digests and size."""
    from openai_server import OpenAIServer

    root = tmp_path_factory.mktemp("full-disk")
    (root / "inputs").mkdir()
    make_planted_video(root / "inputs" / "planted.mp4")
    with OpenAIServer(PlantedEventCaptioner()) as server:
        settings = {
            "inputs": str(root / "inputs"),
            "profile": "tiny",
            "executor": "in_process",
            "stages": ["caption", "ground"],
            "split": {"clip_max_height": 120},
            "caption": {"backend": "openai", "openai": {"base_url": server.base_url}},
            "shard": {"keyframes": 1},
        }
        config = root / "job.yaml"
        config.write_text(yaml.safe_dump(settings))
        assert main(["run", "--config", str(config), "--run-dir", str(root / "undisturbed")]) == 0
        yield {"config": config, "digests": dataset_digests(root / "undisturbed"), "size": disk_use(root / "undisturbed"), "root": root}


@pytest.mark.parametrize(
    "share, where",
    [(0.02, "probe: "), (0.2, "split: "), (0.45, "shard: "), (0.7, "shard: 1 of 5 rows failed on local storage (window: "), (0.97, "finishing the run")],
)
def test_a_full_disk_stops_the_run_in_one_line_and_the_same_command_recovers(job, tmp_path, capfd, share, where):
    """The disk runs out after `share` of what the run writes: writing probe's table, in split
    (clips and the frames kept), in the shard stage (tars; a window's media, a failed row) or
    writing the ledger and the dataset's stats."""
    with small_disk(tmp_path / "disk", DISK) as disk:
        filler = leave_free(disk, int(job["size"] * share))
        command = ["run", "--config", str(job["config"]), "--run-dir", str(disk / "run")]
        capfd.readouterr()
        assert main(command) == 3
        out, err = capfd.readouterr()
        ours = [line for line in err.splitlines() if line.startswith("vidcurate:")]
        assert len(ours) == 1 and ours[0].startswith("vidcurate: failed: ") and "free space and run the same command again" in ours[0], err
        assert str(disk) in ours[0] and "Traceback" not in out + err
        assert ours[0].startswith("vidcurate: failed: " + where), ours[0]
        filler.unlink()
        assert main(command) == 0
        shards = {name: digest for name, digest in dataset_digests(disk / "run").items() if name != "stats.json"}  # stats count the retries
        assert shards == {name: digest for name, digest in job["digests"].items() if name != "stats.json"}
        ledger = pq.read_table(disk / "run" / "ledger.parquet").to_pylist()
        assert all(r["status"] != "failed" for r in ledger) and any(r["entity"] == "window" for r in ledger)


def test_doctor_warns_when_the_run_will_not_fit(job, tmp_path):
    """Its estimate is a figure per input-video-hour from the config: within 3x of what the run wrote."""
    cfg = load_config(job["config"], run_dir=str(tmp_path / "roomy"))
    estimate = written_per_video_hour(cfg) * PLANTED_S / 3600
    assert job["size"] / 3 < estimate < job["size"] * 3
    with small_disk(tmp_path / "disk", 256 << 10) as disk:
        cfg = load_config(job["config"], run_dir=str(disk / "run"))
        (finding,) = [f for f in diagnose(cfg) if f.check == "disk space"]
        assert not finding.ok and "will write about" in finding.detail and "free space" in finding.fix
    (finding,) = [f for f in diagnose(cfg) if f.check == "disk space"]
    assert finding.ok, finding.detail


def test_pyav_running_out_of_disk_is_transient_and_bad_media_is_not(tmp_path):
    """PyAV raises a full disk as one of its FFmpeg errors (an OSError too): once, every clip it
    failed was lost for good as a permanent failure."""
    import av
    import numpy as np

    from vidcurate.stages.failures import is_transient

    with small_disk(tmp_path / "disk", 16 << 10) as disk:
        with pytest.raises(av.error.FFmpegError) as full:
            with av.open(str(disk / "clip.mp4"), "w", format="mp4") as out:
                stream = out.add_stream("libx264", rate=25)
                stream.width = stream.height = 128
                for _ in range(200):
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8), format="rgb24")))
    assert full.value.errno == 28 and is_transient(full.value)
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 4096)
    with pytest.raises(av.error.FFmpegError) as junk:
        av.open(str(tmp_path / "junk.mp4"))
    assert not is_transient(junk.value)
