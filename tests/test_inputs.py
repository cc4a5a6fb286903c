"""Input specs: directory, glob, list file, and an s3:// prefix on a real S3-compatible server."""

from __future__ import annotations

import shutil

import fsspec
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_VIDEOS
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner
from vidcurate.stages.media import list_inputs
from vidcurate.stages.probe import fingerprint


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("a.mp4", "sub/b.webm", ".hidden/c.mp4", ".d.mp4"):
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_directory_is_listed_recursively_without_hidden_files(tree):
    assert list_inputs(str(tree)) == [str(tree / "a.mp4"), str(tree / "sub" / "b.webm")]


def test_glob_and_list_file(tree):
    assert list_inputs(str(tree / "**" / "*.webm")) == [str(tree / "sub" / "b.webm")]
    listing = tree / "inputs.txt"
    listing.write_text(f"# two videos\n{tree / 'sub' / 'b.webm'}\n\n{tree / 'a.mp4'}\n{tree / 'a.mp4'}\n")
    assert list_inputs(str(listing)) == [str(tree / "a.mp4"), str(tree / "sub" / "b.webm")]


def test_missing_spec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory, glob, list file or remote prefix"):
        list_inputs(str(tmp_path / "nowhere"))


def test_s3_prefix_is_probed_through_ray(tmp_path, s3_endpoint, ray_local):
    fs = fsspec.filesystem("s3")
    fs.mkdir("videos-in")
    fs.put(str(SHARED_VIDEOS / "psd_counter.mp4"), "videos-in/raw/counter.mp4")
    fs.pipe("videos-in/raw/broken.mp4", b"\x00" * 1000)
    uris = list_inputs("s3://videos-in/raw/")
    assert uris == ["s3://videos-in/raw/broken.mp4", "s3://videos-in/raw/counter.mp4"]

    cfg = load_config(None, profile="tiny", inputs="s3://videos-in/raw/", run_dir=str(tmp_path / "run"))
    Runner(cfg).run_stage("probe")
    rows = {r["uri"]: r for r in pq.read_table(tmp_path / "run" / "probe").to_pylist()}
    assert rows["s3://videos-in/raw/counter.mp4"]["status"] == "kept"
    assert rows["s3://videos-in/raw/counter.mp4"]["n_frames"] == 30
    assert rows["s3://videos-in/raw/broken.mp4"]["reason"].startswith("unreadable:")
    local = tmp_path / "counter.mp4"
    shutil.copy(SHARED_VIDEOS / "psd_counter.mp4", local)
    assert rows["s3://videos-in/raw/counter.mp4"]["video_id"] == fingerprint(str(local))


def test_a_link_to_nothing_and_a_folder_named_like_a_video_end_in_the_ledger(tree):
    """Every entry of an input folder that could be meant as a video is listed, and probe says what it is."""
    from vidcurate.stages.probe import ProbeConfig, probe_video

    (tree / "gone.mp4").symlink_to(tree / "deleted.mp4")
    (tree / "season.mkv").mkdir()
    (tree / "season.mkv" / "episode.mkv").write_bytes(b"x")
    (tree / "plain folder").mkdir()
    listed = list_inputs(str(tree))
    assert {str(tree / n) for n in ("gone.mp4", "season.mkv", "season.mkv/episode.mkv")} <= set(listed)
    assert str(tree / "plain folder") not in listed  # searched, not an input
    gone, folder = (probe_video(str(tree / n), ProbeConfig(), str(tree)) for n in ("gone.mp4", "season.mkv"))
    assert (gone["status"], gone["reason"]) == ("rejected", f"unreadable: a link to nothing ({tree / 'deleted.mp4'})")
    assert (folder["status"], folder["reason"]) == ("rejected", "unreadable: a folder, not a video file")
