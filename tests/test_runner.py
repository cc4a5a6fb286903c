"""The runner's fingerprint, skip and update logic on the in-process executor: no Ray, no
Prefect, every stage through its declaration in this process."""

from __future__ import annotations

import logging
import sys

from conftest import dataset_digests
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner, read_marker

STAGES = ["quality"]


def _runner(videos, run_dir, **overrides) -> Runner:
    return Runner(load_config(None, profile="tiny", inputs=str(videos), run_dir=str(run_dir), stages=STAGES, executor="in_process", **overrides))


def _markers(run_dir) -> dict:
    return {s: read_marker(run_dir / s) for s in ("probe", "split", "quality", "shard")}


def test_a_rerun_skips_every_completed_stage(tmp_path, synthetic_videos, caplog):
    videos, _ = synthetic_videos
    ray_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    stats = _runner(videos, tmp_path).run_all()
    assert stats["samples"] > 0
    if not ray_running:  # in this process, unless another test started Ray here already
        assert not ("ray" in sys.modules and sys.modules["ray"].is_initialized())
    before, digests = _markers(tmp_path), dataset_digests(tmp_path)
    with caplog.at_level(logging.INFO, logger="vidcurate"):
        _runner(videos, tmp_path).run_all()
    skipped = [r.getMessage().split(":")[0] for r in caplog.records if "complete, skipped" in r.getMessage()]
    assert skipped == ["probe", "split", "quality", "shard"]
    assert _markers(tmp_path) == before and dataset_digests(tmp_path) == digests


def test_a_changed_setting_redoes_that_stage_and_the_ones_after(tmp_path, synthetic_videos):
    videos, _ = synthetic_videos
    _runner(videos, tmp_path).run_all()
    first = _markers(tmp_path)
    _runner(videos, tmp_path, **{"quality.frames": 4}).run_all()
    second = _markers(tmp_path)
    assert second["probe"] == first["probe"] and second["split"] == first["split"]
    for stage in ("quality", "shard"):
        assert second[stage]["fingerprint"] != first[stage]["fingerprint"]


def test_in_process_and_on_ray_give_identical_shards(tmp_path, synthetic_videos, ray_local):
    """The executor is not part of the output."""
    videos, _ = synthetic_videos
    _runner(videos, tmp_path / "here").run_all()
    Runner(load_config(None, profile="tiny", inputs=str(videos), run_dir=str(tmp_path / "ray"), stages=STAGES)).run_all()
    assert dataset_digests(tmp_path / "here") == dataset_digests(tmp_path / "ray") != {}
