"""Probe on real files: good ones described correctly, bad ones rejected with a reason."""

from __future__ import annotations

import shutil
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import SHARED_VIDEOS, faststart_copy
from vidcurate.stages.probe import ProbeConfig, mark_exact_duplicates, probe_video


def _write_video(path, width, height, frames, fps=25):
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), (i * 20) % 255, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


def _write_audio_only(path):
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_real_video_metadata():
    row = probe_video(str(SHARED_VIDEOS / "psd_testvideo.mp4"), ProbeConfig())
    assert row["status"] == "kept", row
    assert (row["width"], row["height"], row["codec"], row["rotation"]) == (1280, 720, "h264", 0)
    assert row["n_frames"] == 720
    assert row["duration_s"] == pytest.approx(24.02, abs=0.05)
    assert row["fps"] == pytest.approx(29.97, abs=0.01)
    assert len(row["video_id"]) == 20


def test_container_without_duration_gets_one_from_its_packets():
    row = probe_video(str(SHARED_VIDEOS / "moviepy_no_duration.webm"), ProbeConfig())
    assert row["status"] == "kept", row
    assert row["duration_s"] == pytest.approx(4.94, abs=0.1)


def test_broken_audio_does_not_reject_the_video():
    row = probe_video(str(SHARED_VIDEOS / "moviepy_video_with_failing_audio.mp4"), ProbeConfig())
    assert row["status"] == "kept", row


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), "unreadable"),
        (_write_audio_only, "no_video_stream"),
        (lambda p: _write_video(p, 64, 64, 5), "too_short"),
        (lambda p: _write_video(p, 7696, 16, 2), "too_large"),
    ],
    ids=["zero-byte", "random-bytes", "audio-only", "five-frames", "huge-declared-width"],
)
def test_bad_inputs_are_rejected_with_a_reason(tmp_path, make, code):
    path = tmp_path / "input.mp4"
    make(path)
    row = probe_video(str(path), ProbeConfig())
    assert row["status"] == "rejected", row
    assert row["reason"].startswith(code + ":"), row["reason"]


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.8, 0.97])
def test_truncated_file_is_rejected(tmp_path, keep):
    data = faststart_copy(SHARED_VIDEOS / "psd_testvideo.mp4", tmp_path / "full.mp4").read_bytes()
    assert probe_video(str(tmp_path / "full.mp4"), ProbeConfig())["status"] == "kept"
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * keep)])
    row = probe_video(str(path), ProbeConfig())
    assert row["status"] == "rejected"
    assert row["reason"].startswith("truncated:"), row["reason"]


def test_missing_file_fails_without_raising(tmp_path):
    row = probe_video(str(tmp_path / "gone.mp4"), ProbeConfig())
    assert row["status"] == "failed" and "FileNotFoundError" in row["reason"]


def test_same_bytes_under_two_names_keep_the_first(tmp_path):
    src = SHARED_VIDEOS / "psd_counter.mp4"
    for name in ("b.mp4", "a.mp4"):
        shutil.copy(src, tmp_path / name)
    rows = mark_exact_duplicates([probe_video(str(tmp_path / n), ProbeConfig()) for n in ("b.mp4", "a.mp4")])
    by_name = {r["uri"].rsplit("/", 1)[1]: r for r in rows}
    assert by_name["a.mp4"]["status"] == "kept"
    assert by_name["b.mp4"]["status"] == "rejected"
    assert by_name["b.mp4"]["reason"] == f"duplicate: same content as {tmp_path / 'a.mp4'}"


def test_symlink_leaving_the_input_directory_is_rejected(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(SHARED_VIDEOS / "psd_counter.mp4", root / "real.mp4")
    (root / "inside.mp4").symlink_to(root / "real.mp4")
    (root / "outside.mp4").symlink_to(SHARED_VIDEOS / "psd_counter.mp4")
    assert probe_video(str(root / "inside.mp4"), ProbeConfig(), str(root))["status"] == "kept"
    row = probe_video(str(root / "outside.mp4"), ProbeConfig(), str(root))
    assert row["status"] == "rejected" and row["reason"].startswith("outside_root:")
