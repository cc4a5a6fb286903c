"""`vidcurate doctor`: check a config end to end in seconds, before hours of work.

Each check prints one line: `ok` with what was found, or `FAIL` with the problem and its fix.
Nothing is downloaded and nothing is written except a probe object that is removed again.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from vidcurate.pipelines.config import PipelineConfig


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.check}: {self.detail}{fix}"


def diagnose(cfg: PipelineConfig) -> list[Finding]:
    """Every check that applies to this config; a check that crashes is a failure, not a crash."""
    findings = []
    for check, run in _checks(cfg):
        try:
            findings.append(run())
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not stop
            findings.append(Finding(check, False, f"{type(exc).__name__}: {exc}"))
    return findings


def _checks(cfg: PipelineConfig) -> Iterator[tuple[str, Callable[[], Finding]]]:
    yield "inputs", lambda: _inputs(cfg)
    yield "run directory", lambda: _run_dir(cfg)
    yield "disk space", lambda: _disk_space(cfg)
    if "caption" in cfg.stages:
        if cfg.caption.backend == "openai":
            yield "caption server", lambda: _caption_server(cfg)
        else:
            yield "caption model", lambda: _caption_model(cfg)
        if cfg.caption.backend == "transformers" and cfg.caption.structured != "off":
            yield "caption grammar", lambda: _caption_grammar(cfg)
    if "embed" in cfg.stages:
        yield "embed model", lambda: _embed_model(cfg)
    if "decontam" in cfg.stages:
        yield "eval sets", lambda: _eval_sets(cfg)
    if _wants_gpu(cfg):
        yield "gpu", _gpu
    if cfg.shard.output:
        yield "publish store", lambda: _store(cfg.shard.output)
    yield "ray", lambda: _ray(cfg.ray.address)


def _inputs(cfg: PipelineConfig) -> Finding:
    from vidcurate.stages.media import list_inputs

    fix = "point `inputs` (or --inputs) at a folder, glob, list file or s3:// prefix of videos"
    try:
        found = list_inputs(cfg.inputs)
    except FileNotFoundError as exc:
        return Finding("inputs", False, str(exc), fix)
    if not found:
        return Finding("inputs", False, f"no files at {cfg.inputs!r}", fix)
    return Finding("inputs", True, f"{len(found)} files at {cfg.inputs}")


def _run_dir(cfg: PipelineConfig) -> Finding:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / f".doctor-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    probe.unlink()
    return Finding("run directory", True, f"{run_dir} is writable")


def _disk_space(cfg: PipelineConfig) -> Finding:
    """Free space where the run writes against what it will write: `written_per_video_hour` of the
    config times the inputs' hours (read from their container headers; local inputs only)."""
    import shutil

    import av

    from vidcurate.pipelines.disk import size_text, mount_of, written_per_video_hour
    from vidcurate.stages.media import is_remote, list_inputs

    free = shutil.disk_usage(mount_of(Path(cfg.run_dir))).free
    try:
        inputs = list_inputs(cfg.inputs) if cfg.inputs else []
    except FileNotFoundError:  # the inputs check says so
        return Finding("disk space", True, f"{size_text(free)} free at {cfg.run_dir}; no inputs to estimate the run's size from")
    seconds, unknown = 0.0, 0
    for uri in inputs:
        try:
            if is_remote(uri):
                raise ValueError("remote")
            with av.open(uri) as container:
                seconds += (container.duration or 0) / 1e6
        except Exception:  # noqa: BLE001 - an input that does not open is probe's to judge, not the estimate's
            unknown += 1
    need = written_per_video_hour(cfg) * seconds / 3600
    counted = f"{seconds / 3600:.2f} video-hours" + (f" ({unknown} inputs not counted)" if unknown else "")
    detail = f"{size_text(free)} free at {cfg.run_dir}; the run will write about {size_text(need)} for {counted}"
    if free < need:
        return Finding("disk space", False, detail, "free space, or point run_dir at a larger disk (a full disk stops the run; the same command resumes it)")
    return Finding("disk space", True, detail)


def _hub_cached(model: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, filename), str)


def _not_here(check: str, what: str, repo: str, instead: str) -> Finding:
    return Finding(
        check, False, f"{what} is on this machine neither as a folder nor in the Hugging Face cache ({repo})",
        f"`huggingface-cli download {repo}` on a machine with the hub, or {instead}",
    )  # fmt: skip


def _caption_model(cfg: PipelineConfig) -> Finding:
    from vidcurate.stages.models import cache_dir

    model = cfg.caption.model
    if model is None:
        return Finding("caption model", True, f"tiny random model, built into {cache_dir()} (not for training)")
    if (Path(model) / "config.json").is_file() or _hub_cached(model):
        return Finding("caption model", True, f"{model} is on this machine")
    return _not_here("caption model", model, model, "set caption.model to a local folder")


def _caption_grammar(cfg: PipelineConfig) -> Finding:
    """Compiles the answer grammar for the model's tokenizer as the captioner will at start-up
    (tokenizer and config only: no weights are loaded)."""
    from vidcurate.stages.caption import startup_grammar
    from vidcurate.stages.grammar import AnswerGrammar, GrammarError
    from vidcurate.stages.models import tiny_qwen2vl

    model = cfg.caption.model or str(tiny_qwen2vl())
    if not ((Path(model) / "config.json").is_file() or _hub_cached(model)):
        return Finding("caption grammar", True, f"not checked: {model} is not on this machine (see caption model)")
    try:
        grammar = AnswerGrammar.from_checkpoint(model)
        grammar.matcher(startup_grammar(cfg.caption))
    except GrammarError as exc:
        return Finding("caption grammar", False, exc.problem, exc.fix)
    return Finding("caption grammar", True, f"llguidance builds the answer grammar for {model} ({grammar.vocab_rows} logits)")


def _embed_model(cfg: PipelineConfig) -> Finding:
    import open_clip

    model, pretrained = cfg.embed.model, cfg.embed.pretrained
    if model is None:
        return Finding("embed model", True, "tiny random CLIP, built locally (not for training)")
    if model not in open_clip.list_models():
        return Finding("embed model", False, f"open_clip has no model {model!r}", "pick one of `open_clip.list_models()`")
    if pretrained is None or Path(pretrained).is_file():
        return Finding("embed model", True, f"{model} with {'random weights' if pretrained is None else pretrained}")
    hub = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "").rstrip("/")
    if not hub:
        return Finding("embed model", False, f"{model} has no pretrained tag {pretrained!r}", f"one of {open_clip.list_pretrained_tags_by_model(model)}")
    if any(_hub_cached(hub, f) for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
        return Finding("embed model", True, f"{model}/{pretrained} is in the Hugging Face cache")
    return _not_here("embed model", f"{model}/{pretrained}", hub, "set embed.pretrained to a checkpoint file")


def _eval_sets(cfg: PipelineConfig) -> Finding:
    from vidcurate.stages.decontam import EvalSetError, check_eval_sets

    try:
        sets = check_eval_sets(cfg.decontam)
    except EvalSetError as exc:
        return Finding("eval sets", False, str(exc), "point decontam.eval_sets at the benchmark's videos and its QA file (JSON lines with `question`)")
    found = "; ".join(f"{s['name']}: {s['videos']} videos, {s['questions']} questions" for s in sets)
    return Finding("eval sets", True, found or "none given: decontam checks nothing")


def _wants_gpu(cfg: PipelineConfig) -> bool:
    devices = [cfg.caption.device if "caption" in cfg.stages else "", cfg.embed.device if "embed" in cfg.stages else ""]
    gpus = [getattr(cfg, s).resources.num_gpus for s in cfg.stages if hasattr(getattr(cfg, s, None), "resources")]
    vllm = "caption" in cfg.stages and cfg.caption.backend == "vllm"
    return vllm or any(d.startswith("cuda") for d in devices) or any(g > 0 for g in gpus)


def _gpu() -> Finding:
    import torch

    if torch.cuda.is_available():
        return Finding("gpu", True, f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    return Finding("gpu", False, "a stage asks for a GPU but none is visible", "run on a GPU node, or set the stage's device: cpu and resources.num_gpus: 0")


def _caption_server(cfg: PipelineConfig) -> Finding:
    import numpy as np

    from vidcurate.stages.answer import InvalidAnswer, parse_answer
    from vidcurate.stages.caption import build_prompt, make_captioner
    from vidcurate.stages.captioners import BackendError

    endpoint = cfg.caption.openai
    captioner = make_captioner(cfg.caption.model_copy(update={"openai": endpoint.model_copy(update={"max_retries": 0})}))
    grey = np.full((cfg.caption.frame_height, cfg.caption.frame_height, 3), 128, dtype=np.uint8)
    prompt = build_prompt("doctor", [grey], [0.0], 1.0, cfg.caption.model_copy(update={"temperature": 0.0}), 0)
    started = time.monotonic()
    try:
        answer = captioner.generate([prompt])[0]
    except BackendError as exc:
        refused = "HTTP 400" in str(exc) and captioner.structured == "vllm"
        fix = "the server is not vLLM: set caption.openai.structured: json_schema (or off)" if refused else (
            f"start the server (e.g. `vllm serve {captioner.name}`) or fix caption.openai.base_url / api_key_env"
        )  # fmt: skip
        return Finding("caption server", False, f"{endpoint.base_url}: {exc}", fix)
    seconds = time.monotonic() - started
    if captioner.structured == "off":
        return Finding("caption server", True, f"{endpoint.base_url} answered in {seconds:.1f} s (grammar off: answers are not checked)")
    try:
        parse_answer(answer)
    except InvalidAnswer as exc:
        other = "json_schema" if captioner.structured == "vllm" else "vllm"
        return Finding(
            "caption server", False, f"{endpoint.base_url} answered outside the grammar ({exc})",
            f"the server ignored caption.openai.structured: {captioner.structured}; try {other}",
        )  # fmt: skip
    return Finding("caption server", True, f"{endpoint.base_url} answered in the grammar in {seconds:.1f} s")


def _store(url: str) -> Finding:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    probe = f"{root.rstrip('/')}/.vidcurate-doctor-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - any store error is the finding
        return Finding("publish store", False, f"cannot write to {url}: {type(exc).__name__}: {exc}", "check the bucket or folder exists and the credentials may write there")
    return Finding("publish store", True, f"{url} is writable")


def _ray(address: str | None) -> Finding:
    if address is None:
        return Finding("ray", True, "local Ray, started by the run")
    if address == "auto":
        import os

        if os.environ.get("RAY_ADDRESS") or Path("/tmp/ray/ray_current_cluster").is_file():
            return Finding("ray", True, "a running cluster is registered on this machine")
        return Finding("ray", False, "'auto' but no Ray cluster runs on this machine", "`ray start --head`, or give ray://host:port")
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    port = parsed.port or 10001
    try:
        socket.create_connection((parsed.hostname, port), timeout=3).close()
    except OSError as exc:
        return Finding("ray", False, f"{parsed.hostname}:{port} is not reachable ({exc})", "start the cluster's head (and its client server) or fix ray.address")
    return Finding("ray", True, f"{parsed.hostname}:{port} accepts connections")
