"""The needle audit end to end: a run's clips get needles at known times, the run's own caption
settings caption them, and the figures reach audit.json and the dataset card. With the test double
that sees the needles (tests/planted.py NeedleCaptioner, at the backend interface, over a real
HTTP server) every needle is found, and refined boundaries beat the coarse ones; with the tiny
random model the audit runs and reports whatever it finds."""

from __future__ import annotations

import json

import pytest

from planted import NeedleCaptioner
from vidcurate.pipelines.audit import NEEDLES, audit
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner


def _run(tmp_path, inputs, **caption) -> object:
    cfg = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(tmp_path / "run"), executor="in_process", stages=["caption"],
                      **{"split.clip_max_height": 120, **{f"caption.{k}": v for k, v in caption.items()}})  # fmt: skip
    Runner(cfg).run_all()
    return tmp_path / "run"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synthetic_videos):
    import shutil

    folder = tmp_path_factory.mktemp("audit-inputs")
    shutil.copy(sorted(synthetic_videos[0].glob("*.mp4"))[0], folder / "video.mp4")
    return folder


def test_the_audit_finds_every_needle_the_captioner_sees_and_says_so_in_the_card(tmp_path, inputs):
    from openai_server import OpenAIServer

    with OpenAIServer(NeedleCaptioner()) as server:
        run = _run(tmp_path, inputs, backend="openai", frames=8, **{"openai.base_url": server.base_url})
        report = audit(run, clips=4)
    assert report["clips"] == 4 and report["frames"] == 8
    for kind in NEEDLES:
        figures = report["kinds"][kind]
        assert figures["needles"] == 2 and figures["recall"] == 1.0, report
        assert figures["boundary_error_s"]["refined"] < figures["boundary_error_s"]["coarse"], report
    assert json.loads((run / "audit.json").read_text()) == report
    card = (run / "shard" / "dataset" / "README.md").read_text()
    assert "## Needle audit of the captioner" in card and "| image | 2 | 1.0 |" in card


def test_with_the_tiny_random_model_the_audit_runs_reports_and_leaves_no_scratch(tmp_path, inputs, monkeypatch):
    import tempfile

    run = _run(tmp_path, inputs)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = audit(run, clips=2)
    assert not list(scratch.glob("vidcurate-audit-*")), "the needled copies were left behind"
    assert set(report["kinds"]) == set(NEEDLES) and sum(k["needles"] for k in report["kinds"].values()) == 2
    assert all(k["recall"] is None or 0 <= k["recall"] <= 1 for k in report["kinds"].values())
