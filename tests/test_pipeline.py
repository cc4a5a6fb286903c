"""End to end: the Prefect flow over Ray on mixed real/synthetic/damaged inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import dataset_digests
from vidcurate.flows.corpus import corpus_flow
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.store import StageStore
from vidcurate.pipelines.ledger import known
from vidcurate.schemas.sample import SCHEMA_VERSION, validate_sample
from vidcurate.schemas.tables import clip_id


def _run(inputs: Path, run_dir: Path, **overrides) -> dict:
    """The foundation: probe -> split -> shard (the clip stages have their own tests)."""
    cfg = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(run_dir), stages=[], **overrides)
    return corpus_flow(cfg.model_dump())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mixed_inputs, ray_local, prefect_server):
    run_dir = tmp_path_factory.mktemp("run")
    stats = _run(mixed_inputs, run_dir, **{"split.max_clip_s": 8.0, "shard.maxcount": 4})
    return run_dir, stats


def test_shards_are_readable_and_match_the_ledger(full_run):
    run_dir, stats = full_run
    urls = sorted(str(p) for p in (run_dir / "shard" / "dataset").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    kept_clips = sorted(r["id"] for r in ledger if r["entity"] == "clip" and r["status"] == "kept")
    assert sorted(s["__key__"] for s in samples) == kept_clips
    assert stats["samples"] == len(samples) == stats["clips"]["kept"] > 0
    assert len(urls) == len(stats["shards"]) >= 2  # maxcount=4 forces several shards
    for sample in samples:
        meta = json.loads(sample["json"])
        validate_sample(meta)
        assert "." not in sample["__key__"]
        assert meta["clip_id"] == sample["__key__"] == clip_id(
            meta["video_id"], meta["provenance"]["source_start_s"], meta["provenance"]["source_end_s"]
        )
        assert meta["duration_s"] <= 8.0 + 1e-6
        with av.open(io.BytesIO(sample["mp4"])) as clip:
            stream = clip.streams.video[0]
            decoded = sum(1 for _ in clip.decode(stream))
            assert stream.codec_context.name == "h264"
        span = meta["provenance"]["end_frame"] - meta["provenance"]["start_frame"]
        assert decoded == span


def test_every_stage_reports_its_cost_per_video_hour(full_run, capsys):
    """Markers, the log line and `vidcurate inspect` carry video covered, its rate and CPU-seconds
    per video-hour; the video a stage covered is what its rows span in probe and split."""
    run_dir, _ = full_run
    store = StageStore(run_dir)
    probe, split, shard = (store.completed(s).cost | {"seconds": store.completed(s).seconds} for s in ("probe", "split", "shard"))
    clips = [c for c in store.table(run_dir / "split").to_pylist() if c["status"] == "kept"]
    probed = store.table(run_dir / "probe").to_pylist()
    assert probe["video_s"] > 0 and probe["video_s"] == pytest.approx(sum(v["duration_s"] or 0 for v in probed), abs=0.01)
    assert shard["video_s"] > 0 and shard["video_s"] == pytest.approx(sum(c["end_s"] - c["start_s"] for c in clips), abs=0.01)
    assert split["cpu_s"] > 0  # it decodes and encodes every frame; probe and shard may take under the 0.1 s stored
    for marker in (probe, split, shard):
        assert marker["cpu_s"] >= 0 and marker["video_s_per_s"] == pytest.approx(marker["video_s"] / marker["seconds"], rel=0.01)
        rounding = 0.05 / marker["video_s"] * 3600 + 0.1  # cpu_s is stored to 0.1 s, the rate from the exact value
        assert marker["cpu_s_per_video_h"] == pytest.approx(marker["cpu_s"] / marker["video_s"] * 3600, abs=rounding)
        assert "gpu_s" not in marker  # no stage asked for a GPU
    capsys.readouterr()
    assert cli_main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{split['cpu_s_per_video_h']} CPU-s per video-hour" in out
    assert f"cost: {probe['video_s']} video-s in" in out


def test_every_input_ends_in_the_ledger_once_with_a_reason(full_run, mixed_inputs):
    run_dir, stats = full_run
    ledger = pq.read_table(run_dir / "ledger.parquet").to_pylist()
    videos = {r["id"]: r for r in ledger if r["entity"] == "video"}
    inputs = sorted(str(p) for p in mixed_inputs.iterdir())
    assert sorted(videos) == inputs
    assert stats["videos"]["total"] == len(inputs)
    by_name = {Path(uri).name: row for uri, row in videos.items()}
    expected = {"empty.mp4": "empty", "random_bytes.mp4": "unreadable", "notes.txt.mov": "unreadable",
                "truncated.mp4": "truncated", "index_at_end_truncated.mp4": "unreadable",
                "escaping link.mp4": "outside_root"}
    for name, code in expected.items():
        row = by_name[name]
        assert (row["status"], row["stage"]) == ("rejected", "probe"), row
        assert row["reason"].startswith(code + ":"), row
    for name in ("real nature clip.mp4", "synthetic_010.mp4", "synthetic_011.mp4"):
        assert by_name[name]["status"] == "kept"
    for row in ledger:
        assert row["status"] in ("kept", "rejected", "failed")
        assert (row["reason"] is None) == (row["status"] == "kept"), row
        assert row["status"] == "kept" or known(row["stage"], row["status"], row["reason"]), row
    stats_file = json.loads((run_dir / "shard" / "dataset" / "stats.json").read_text())
    assert stats_file["videos"] == stats["videos"] and stats_file["clips"] == stats["clips"]


def test_rerun_skips_completed_stages_and_gives_identical_shards(full_run, mixed_inputs):
    run_dir, _ = full_run
    before = {s: StageStore(run_dir).completed(s) for s in ("probe", "split", "shard")}
    digests = dataset_digests(run_dir)
    _run(mixed_inputs, run_dir, **{"split.max_clip_s": 8.0, "shard.maxcount": 4})
    after = {s: StageStore(run_dir).completed(s) for s in ("probe", "split", "shard")}
    assert after == before  # markers untouched: nothing was recomputed
    assert dataset_digests(run_dir) == digests


def test_changed_setting_reruns_that_stage_and_later_ones(tmp_path, synthetic_videos, ray_local, prefect_server):
    videos, _ = synthetic_videos
    _run(videos, tmp_path, **{"shard.maxcount": 100})
    first = {s: StageStore(tmp_path).completed(s) for s in ("probe", "split", "shard")}
    _run(videos, tmp_path, **{"shard.maxcount": 100, "split.max_clip_s": 3.0})
    second = {s: StageStore(tmp_path).completed(s) for s in ("probe", "split", "shard")}
    assert second["probe"] == first["probe"]
    assert second["split"].fingerprint != first["split"].fingerprint
    assert second["shard"].fingerprint != first["shard"].fingerprint
    assert second["split"].rows > first["split"].rows


def test_independent_runs_give_byte_identical_shards(tmp_path, synthetic_videos, ray_local, prefect_server):
    videos, _ = synthetic_videos
    _run(videos, tmp_path / "a")
    _run(videos, tmp_path / "b")
    assert dataset_digests(tmp_path / "a") == dataset_digests(tmp_path / "b") != {}


def test_stages_run_alone_from_the_cli(tmp_path, synthetic_videos, ray_local, capsys):
    videos, _ = synthetic_videos
    run = tmp_path / "run"
    assert cli_main(["stage", "probe", "--input", str(videos), "--output", str(run / "probe")]) == 0
    assert cli_main(["stage", "split", "--input", str(run / "probe"), "--output", str(run / "split")]) == 0
    assert cli_main(["stage", "shard", "--input", str(run / "split"), "--output", str(run / "shard")]) == 0
    assert StageStore.marker(run / "shard").counts["kept"] == StageStore.marker(run / "split").counts["kept"]
    capsys.readouterr()
    assert cli_main(["inspect", str(run / "shard" / "dataset"), "-n", "1"]) == 0
    assert f'"schema_version": "{SCHEMA_VERSION}"' in capsys.readouterr().out


def test_stage_without_its_input_fails_clearly(tmp_path, capsys):
    code = cli_main(["stage", "split", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "split")])
    assert code == 2
    assert "needs a completed probe stage" in capsys.readouterr().err


@pytest.mark.parametrize(
    "split_yaml, expected",
    [("  thresold: 3\n", "split.thresold"), ("  min_clip_s: 5\n  max_clip_s: 2\n", "min_clip_s (5.0) must be below")],
)
def test_bad_config_is_rejected_before_work(tmp_path, capsys, split_yaml, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(f"inputs: x\nrun_dir: {tmp_path / 'run'}\nsplit:\n{split_yaml}")
    assert cli_main(["run", "--config", str(config)]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
