"""A generated corpus of hostile and odd inputs through the whole pipeline (real Ray, real decoders):
the run completes, each input gets a clear status and reason, and nothing crashes."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_VIDEOS, faststart_copy
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner
from vidcurate.schemas.readers import open_shards

GOOD = SHARED_VIDEOS / "psd_counter.mp4"
SHELL_NAME = "$(touch pwned); rm -rf ~ `id` | cat.mp4"


def _encode(path: Path, frames: int, size=(64, 48), fps=25, codec="libx264", fmt=None, rotation=0, pts_ms=None, gop=None):
    width, height = size
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if codec != "gif" else "rgb8"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", **({"g": str(gop)} if gop else {})}
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        for i in range(frames):
            img = base if pts_ms is None and frames > 1000 else np.roll(base, i, axis=1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _audio_only(path: Path):
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# name -> expected (status, reason code or None)
EXPECTED = {
    "empty.mp4": ("rejected", "empty"),
    "random_bytes.mp4": ("rejected", "unreadable"),
    "text_named_video.mp4": ("rejected", "unreadable"),
    "truncated_faststart.mp4": ("rejected", "truncated"),
    "truncated_index_at_end.mp4": ("rejected", "unreadable"),
    "audio_only.m4a": ("rejected", "no_video_stream"),
    "one_frame.mp4": ("rejected", "too_short"),
    "wider_than_limit.mp4": ("rejected", "too_large"),
    "long_static.mp4": ("kept", None),
    "vfr.mp4": ("kept", None),
    "rotated_portrait.mp4": ("kept", None),
    "mpeg4.avi": ("kept", None),
    "h264.mkv": ("kept", None),
    "h264.mov": ("kept", None),
    "animation.gif": ("kept", None),
    "vp8.webm": ("kept", None),
    "mpeg1.mpg": ("kept", None),
    "no_duration.webm": ("kept", None),
    "broken_audio.mp4": ("kept", None),
    "with spaces.mp4": ("kept", None),
    "quotes 'single' \"double\".mp4": ("kept", None),
    "ünïcødé 视频 🎬.mp4": ("kept", None),
    SHELL_NAME: ("kept", None),
    "same_bytes_again.mp4": ("rejected", "duplicate"),
    "escaping_symlink.mp4": ("rejected", "outside_root"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    (root / "empty.mp4").write_bytes(b"")
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(3).bytes(100_000))
    (root / "text_named_video.mp4").write_text("#!/bin/sh\necho not a video\n")
    full = faststart_copy(SHARED_VIDEOS / "psd_testvideo.mp4", root / "full.tmp").read_bytes()
    (root / "full.tmp").unlink()
    (root / "truncated_faststart.mp4").write_bytes(full[: len(full) * 2 // 3])
    (root / "truncated_index_at_end.mp4").write_bytes((SHARED_VIDEOS / "psd_testvideo.mp4").read_bytes()[:200_000])
    _audio_only(root / "audio_only.m4a")
    _encode(root / "one_frame.mp4", 1)
    _encode(root / "wider_than_limit.mp4", 30, size=(7696, 16))  # limit: 7680 (8K UHD)
    _encode(root / "long_static.mp4", 5 * 600, size=(64, 48), fps=5, gop=250)  # 10 minutes, one still frame
    _encode(root / "vfr.mp4", 60, pts_ms=[i * 40 for i in range(30)] + [1200 + i * 250 for i in range(30)])
    _encode(root / "rotated_portrait.mp4", 50, rotation=90)
    _encode(root / "mpeg4.avi", 50, codec="mpeg4")
    _encode(root / "h264.mkv", 50)
    _encode(root / "h264.mov", 50)
    _encode(root / "animation.gif", 40, codec="gif")
    shutil.copy(SHARED_VIDEOS / "moviepy_big_buck_bunny_0_30.webm", root / "vp8.webm")
    shutil.copy(SHARED_VIDEOS / "kivy_cityCC0.mpg", root / "mpeg1.mpg")
    shutil.copy(SHARED_VIDEOS / "moviepy_no_duration.webm", root / "no_duration.webm")
    shutil.copy(SHARED_VIDEOS / "moviepy_video_with_failing_audio.mp4", root / "broken_audio.mp4")
    for i, name in enumerate(["with spaces.mp4", "quotes 'single' \"double\".mp4", "ünïcødé 视频 🎬.mp4", SHELL_NAME]):
        _encode(root / name, 40 + i)  # distinct content, so none is a duplicate of another
    shutil.copy(GOOD, root / "good.mp4")
    shutil.copy(GOOD, root / "same_bytes_again.mp4")
    (root / "escaping_symlink.mp4").symlink_to(SHARED_VIDEOS / "psd_fades.mp4")
    return root


def test_hostile_corpus_completes_with_a_reason_for_every_input(corpus, tmp_path, ray_local, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell-interpreted name would create ./pwned here
    cfg = load_config(None, profile="tiny", inputs=str(corpus), run_dir=str(tmp_path / "run"), stages=[])  # ingest: probe, split, shard
    stats = Runner(cfg).run_all()
    ledger = pq.read_table(tmp_path / "run" / "ledger.parquet").to_pylist()
    videos = {Path(r["id"]).name: r for r in ledger if r["entity"] == "video"}
    assert sorted(videos) == sorted(p.name for p in corpus.iterdir())
    expected = {**EXPECTED, "good.mp4": ("kept", None)}
    for name, (status, code) in expected.items():
        row = videos[name]
        assert row["status"] == status, (name, row)
        if code:
            assert row["reason"].startswith(code + ":"), (name, row["reason"])
    assert all(r["status"] != "failed" for r in ledger), [r for r in ledger if r["status"] == "failed"]
    assert not (tmp_path / "pwned").exists() and not (corpus / "pwned").exists()

    samples = list(open_shards(str(tmp_path / "run" / "shard" / "dataset")))
    assert len(samples) == stats["samples"] == stats["clips"]["kept"]
    by_source = Counter(Path(json.loads(s["json"])["provenance"]["source_uri"]).name for s in samples)
    assert by_source["long_static.mp4"] == 20  # 600 s in windows of at most max_clip_s (30 s)
    assert by_source[SHELL_NAME] >= 1 and by_source["ünïcødé 视频 🎬.mp4"] >= 1
    figures = {
        "inputs": len(videos),
        "kept": sum(r["status"] == "kept" for r in videos.values()),
        "rejected_with_reason": sum(r["status"] == "rejected" and bool(r["reason"]) for r in videos.values()),
        "failed": sum(r["status"] == "failed" for r in videos.values()),
    }
    print("hostile corpus:", json.dumps(figures), json.dumps(stats["videos"]["reasons"]))
    assert figures["failed"] == 0 and figures["kept"] + figures["rejected_with_reason"] == figures["inputs"]
    assert os.listdir(tmp_path / "run" / "media" / "clips")  # clip files stay inside the run directory
