"""`vidcurate doctor` against real parts: a caption server of each dialect, a dead port, moto's
S3 server, an unreachable Ray address, a model missing from the Hugging Face cache."""

from __future__ import annotations

import socket

import boto3

from vidcurate.pipelines.cli import main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.doctor import diagnose
from vidcurate.stages.caption import make_captioner

SAMPLE = "pipelines/configs/sample.yaml"


def _by_check(cfg) -> dict:
    return {f.check: f for f in diagnose(cfg)}


def test_the_sample_config_is_ready_and_exits_zero(capsys):
    assert main(["doctor", "--config", SAMPLE]) == 0
    out = capsys.readouterr().out
    assert "ready to run" in out and "FAIL" not in out


def test_each_problem_is_one_line_with_its_fix_and_the_exit_code_says_so(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, never listening: nothing answers there
        port = taken.getsockname()[1]
        code = main(["doctor", "--config", SAMPLE, "--inputs", str(tmp_path / "none"), "--ray-address", f"127.0.0.1:{port}"])
    lines = capsys.readouterr().out.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert code == 1 and len(failed) == 2 and lines[-1] == "2 problem(s)"
    assert all(" -> fix: " in line for line in failed)
    assert any(line.startswith("FAIL  ray: ") for line in failed)


def test_a_default_profile_model_missing_from_the_hub_cache_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = load_config(SAMPLE, profile="default", run_dir=str(tmp_path / "run"))
    found = _by_check(cfg)
    assert not found["caption model"].ok and "huggingface-cli download" in found["caption model"].fix
    assert not found["embed model"].ok and "ViT-B-32/laion2b_s34b_b79k" in found["embed model"].detail


def test_a_config_that_names_no_profile_runs_the_real_models_and_doctor_says_they_are_missing(tmp_path, monkeypatch):
    """Forgetting `profile:` must not ship random weights: the default profile names real models."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    job = tmp_path / "job.yaml"
    job.write_text(f"inputs: {tmp_path}\nrun_dir: {tmp_path / 'run'}\n")
    cfg = load_config(job)
    assert cfg.profile == "default" and cfg.caption.max_tokens == 512  # no tiny defaults either
    assert not _by_check(cfg)["caption model"].ok


def test_caption_server_checks_its_dialect_and_the_grammar(tmp_path):
    from openai_server import OpenAIServer

    base = load_config(SAMPLE, run_dir=str(tmp_path / "run"))
    tiny = make_captioner(base.caption)

    def check(server_url: str, structured: str):
        endpoint = base.caption.openai.model_copy(update={"base_url": server_url, "structured": structured})
        caption = base.caption.model_copy(update={"backend": "openai", "openai": endpoint, "max_events": 1})
        return _by_check(base.model_copy(update={"caption": caption}))["caption server"]

    with OpenAIServer(tiny, dialect="openai") as server:
        refused, schema = check(server.base_url, "vllm"), check(server.base_url, "json_schema")
    assert not refused.ok and "HTTP 400" in refused.detail and "structured: json_schema" in refused.fix
    assert schema.ok and "in the grammar" in schema.detail
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        down = check(f"http://127.0.0.1:{taken.getsockname()[1]}/v1", "vllm")
    assert not down.ok and "start the server" in down.fix


def test_publish_store_must_be_writable(s3_endpoint, tmp_path):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="doctor-ok")
    base = load_config(SAMPLE, run_dir=str(tmp_path / "run"))

    def check(url: str):
        return _by_check(base.model_copy(update={"shard": base.shard.model_copy(update={"output": url})}))["publish store"]

    assert check("s3://doctor-ok/dataset").ok
    assert not boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="doctor-ok").get("Contents")  # probe removed
    missing = check("s3://no-such-bucket/dataset")
    assert not missing.ok and "credentials" in missing.fix
