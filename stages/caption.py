"""Caption stage: per clip, sampled frames with their timestamps -> a caption and dense events.

The model sees each frame after its time ("Frame at 1.50 s:") and must answer one JSON object
(`stages.answer`). An invalid answer is retried with a new seed and some temperature; after
`max_attempts` the clip is `failed` with the reason and the model's last raw answer kept.
Seeds derive from the clip id, so a re-run asks the same questions and gets the same answers.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, model_validator

from vidcurate.schemas.tables import CAPTIONS, FAILED, KEPT, stable_int, to_table
from vidcurate.stages.failures import failed, is_transient
from vidcurate.stages.answer import InvalidAnswer, answer_regex, answer_schema, clean_events, clean_text, parse_answer, time_choices
from vidcurate.stages.captioners import BackendError, Prompt
from vidcurate.stages.contract import Stage
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.media import pack_frames, unpack_frames
from vidcurate.stages.models import DEFAULT_CAPTION_MODEL, tiny_qwen2vl
from vidcurate.stages.settings import StageResources, StrictModel, real_model_by_default


class EndpointConfig(StrictModel):
    """Where an OpenAI-compatible server is and how hard to try it (captions; speech's transcriptions)."""

    base_url: str = Field("http://localhost:8000/v1", description="an OpenAI-compatible server, e.g. `vllm serve`")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never logged)")
    concurrency: int = Field(8, ge=1, description="requests in flight per worker")
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    timeout_s: float = Field(300.0, gt=0)


class OpenAIEndpoint(EndpointConfig):
    structured: Literal["vllm", "json_schema", "off"] = Field(
        "vllm", description="how the answer grammar is sent: vLLM's structured_outputs regex, the standard "
        "response_format JSON schema (hosted APIs, llama.cpp, SGLang), or not at all; caption.structured: off wins"
    )


class CaptionConfig(StrictModel):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = Field(
        None, description="hub id or local path; unset: the profile's (default: Qwen2.5-VL-7B-Instruct; tiny: a random "
        "toy Qwen2-VL built locally)"
    )
    frames: int = Field(8, ge=1, description="frames per clip (when fps is not set)")
    fps: float | None = Field(None, gt=0, description="sample at this rate instead, capped by max_frames")
    max_frames: int = Field(32, ge=1)
    frame_height: int = Field(336, ge=16, description="frames are scaled to this height before the model")
    frames_as: Literal["images", "video"] = Field(
        "images", description="images: each frame after its time as text; video: one video input with the frames' "
        "times in its metadata (the model's native video path: Qwen2.5-VL's absolute time, Qwen3-VL's timestamps); "
        "transformers backend"
    )
    max_events: int = Field(8, ge=0)
    min_event_s: float = Field(0.2, ge=0)
    event_overlap: Literal["merge", "trim"] = "merge"
    max_tokens: int = Field(512, ge=16)
    temperature: float = Field(0.0, ge=0, description="first attempt; retries sample at retry_temperature")
    retry_temperature: float = Field(0.7, ge=0)
    max_attempts: int = Field(3, ge=1)
    structured: Literal["auto", "on", "off"] = Field(
        "auto", description="enforce the answer grammar (auto and on alike): vLLM and servers take its regex or JSON "
        "schema, the transformers backend runs the regex through llguidance at any vocabulary size, and a model whose "
        "grammar llguidance cannot build stops the stage at start-up; off: free text, checked only by parsing and retries"
    )
    device: str = Field("auto", description="transformers backend: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(
        8, ge=1, description="transformers backend: prompts per generate call (at most the clips of one "
        "resources.batch_size batch)"
    )
    use_speech: bool = Field(
        False, description="put what is said in the clip, with its times, in the prompt (the speech stage's transcript, "
        "as HowToCaption prompts with timed speech)"
    )
    vllm: dict = Field(default_factory=dict, description="extra vllm.LLM arguments (tensor_parallel_size, ...)")
    openai: OpenAIEndpoint = OpenAIEndpoint()
    resources: StageResources = StageResources(batch_size=8)

    @model_validator(mode="after")
    def _frames(self) -> CaptionConfig:
        if self.frames > self.max_frames:
            raise ValueError(f"frames ({self.frames}) must not exceed max_frames ({self.max_frames})")
        if self.frames_as == "video" and self.backend != "transformers":
            raise ValueError(f"frames_as: video needs backend: transformers (the {self.backend} backend sends frames as images)")
        return self


log = logging.getLogger("vidcurate")
STAGE = "caption"

OPENING = {
    "images": "The frames above are from one video clip lasting {duration:.2f} seconds. ",
    "video": "The video above is one clip lasting {duration:.2f} seconds; its frames are at {frame_times} seconds. ",
}
INSTRUCTION = (
    "Reply with a JSON object: "
    '{{"caption": "<one paragraph describing the clip>", "events": [{{"start_s": <s>, "end_s": <s>, '
    '"text": "<what happens>"}}, ...]}}. List at most {max_events} events in time order. Times are seconds '
    "from the clip start and must be one of: {times}."
)


def frame_need(cfg: CaptionConfig) -> FrameNeed:
    return FrameNeed(cfg.frames, cfg.fps, cfg.max_frames)


def sample_frames(clip: dict, cfg: CaptionConfig) -> tuple[list[np.ndarray], list[float]]:
    """Evenly spaced frames of a clip row scaled to `frame_height`, with their times from the clip start."""
    rgb, times = read_frames(clip, frame_need(cfg).count_for(clip["end_s"] - clip["start_s"]))
    frames = []
    for frame in rgb:
        image = Image.fromarray(frame)
        width = max(2, round(image.width * cfg.frame_height / image.height))
        frames.append(np.asarray(image.resize((width, cfg.frame_height), Image.Resampling.BILINEAR)))
    return frames, [round(float(t), 3) for t in times]


def seed_for(clip_id: str, attempt: int) -> int:
    return stable_int(f"{clip_id}/{attempt}")


def spoken_text(speech: dict) -> str:
    """A clip's transcript as the prompt gives it: each segment after its times."""
    if speech["no_speech"]:
        return "Nobody speaks in the clip. "
    said = " ".join(f"[{s['start_s']:.2f}-{s['end_s']:.2f} s] {s['text']}" for s in speech["segments"])
    return f"Speech heard in the clip, with its times in seconds from the clip start: {said} "


def build_prompt(clip_id: str, frames, times, duration_s: float, cfg: CaptionConfig, attempt: int, speech: dict | None = None) -> Prompt:
    """The frames (or the video) with their times, what is said in the clip where `speech` (its
    transcript) is given, and the answer's instruction."""
    parts: list[tuple[str, object]] = []
    if cfg.frames_as == "video":
        parts.append(("video", (list(frames), list(times), duration_s)))
    else:
        for frame, t in zip(frames, times):
            parts += [("text", f"Frame at {t:.2f} s:"), ("image", frame)]
    choices = ", ".join(time_choices(times, duration_s))
    opening = OPENING[cfg.frames_as].format(duration=duration_s, frame_times=", ".join(f"{t:.2f}" for t in times))
    heard = spoken_text(speech) if speech is not None else ""
    parts.append(("text", opening + heard + INSTRUCTION.format(max_events=cfg.max_events, times=choices)))
    return Prompt(
        parts=parts,
        regex=answer_regex(times, duration_s, cfg.max_events),
        schema=answer_schema(times, duration_s, cfg.max_events),
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature if attempt == 0 else cfg.retry_temperature,
        seed=seed_for(clip_id, attempt),
    )


def decode_clips(clips: list[dict], cfg: CaptionConfig) -> list[dict]:
    """CPU half of the stage: each clip's sampled frames (packed) and their times, or the
    decoding error. Runs in Ray tasks that stream into the model actors."""
    out = []
    for clip in clips:
        item = {k: clip[k] for k in ("clip_id", "video_id", "start_s", "end_s")}
        item["speech"] = clip.get("speech") if cfg.use_speech else None
        try:
            frames, times = sample_frames(clip, cfg)
            item.update(frames=pack_frames(frames), frame_times=times, error=None)
        except Exception as exc:  # noqa: BLE001 - an unreadable clip fails alone, with its error
            item.update(frames=None, frame_times=None, error=failed("frames", exc))
        out.append(item)
    return out


def caption_clips(clips: list[dict], captioner, cfg: CaptionConfig) -> list[dict]:
    """Clips (clip_id, video_id, clip_uri, start_s, end_s) -> CAPTIONS rows, one per clip."""
    return caption_decoded(decode_clips(clips, cfg), captioner, cfg)


def caption_decoded(decoded: list[dict], captioner, cfg: CaptionConfig) -> list[dict]:
    """Model half of the stage: decoded clips -> CAPTIONS rows, in input order."""
    rows, pending = {}, {}
    for clip in decoded:
        base = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE, "model": captioner.name}
        if clip["error"]:
            rows[clip["clip_id"]] = {**base, **clip["error"], "attempts": 0}
            continue
        frames = list(unpack_frames(clip["frames"]))
        duration = clip["end_s"] - clip["start_s"]
        speech = json.loads(clip["speech"]) if clip.get("speech") else None
        pending[clip["clip_id"]] = {**base, "duration": duration, "frames": frames, "frame_times": list(clip["frame_times"]), "speech": speech}
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        ids = sorted(pending)
        asked = [pending[i] for i in ids]
        prompts = [build_prompt(i, p["frames"], p["frame_times"], p["duration"], cfg, attempt, p["speech"]) for i, p in zip(ids, asked)]
        try:
            answers = captioner.generate(prompts)
        except Exception as exc:
            if not isinstance(exc, BackendError) and not is_transient(exc):
                raise  # our bug, not the clips': fail the stage loudly
            for i in ids:  # the backend is down or out of memory: a later run retries these clips
                rows[i] = {**_row(pending.pop(i), FAILED, None, attempt + 1), **failed("backend", exc)}
            break
        for i, raw in zip(ids, answers):
            item = pending[i]
            item["raw_answer"] = raw
            try:
                answer = parse_answer(raw)
            except InvalidAnswer as exc:
                item["error"] = str(exc)
                continue
            events = clean_events(answer["events"], item["duration"], cfg.min_event_s, cfg.event_overlap)
            caption = clean_text(answer["caption"])
            rows[i] = _row(pending.pop(i), KEPT, None, attempt + 1, caption=caption, events=json.dumps(events))
    for i, item in pending.items():
        rows[i] = _row(item, FAILED, f"invalid_output: {item['error']}", cfg.max_attempts)
    return [rows[c["clip_id"]] for c in decoded]


def _row(item: dict, status: str, reason: str | None, attempts: int, **fields) -> dict:
    keep = ("clip_id", "video_id", "stage", "model", "frame_times", "raw_answer")
    return {**{k: item.get(k) for k in keep}, "status": status, "reason": reason, "attempts": attempts, **fields}


def startup_grammar(cfg: CaptionConfig) -> str:
    """The answer grammar of a one-frame clip: what the captioner (and `vidcurate doctor`) compile
    before any clip, since every clip's grammar has its shape."""
    return answer_regex([0.0], 1.0, cfg.max_events)


def make_captioner(cfg: CaptionConfig):
    """The configured backend with `model`; none named: profile tiny's random model, built locally."""
    model = cfg.model or str(tiny_qwen2vl())
    if cfg.backend == "transformers":
        from vidcurate.stages.captioners import TransformersCaptioner

        captioner = TransformersCaptioner(model, device=cfg.device, structured=cfg.structured, batch_size=cfg.batch_size)
        if cfg.frames_as == "video" and not captioner.takes_video:
            raise ValueError(f"caption.frames_as: video, but {model} has no video processor: use frames_as: images")
        if captioner.grammar:  # a grammar llguidance cannot build fails here, before any clip
            captioner.grammar.matcher(startup_grammar(cfg))
        return captioner
    if cfg.backend == "vllm":
        from vidcurate.stages.captioners import VllmCaptioner

        return VllmCaptioner(model, max_images=cfg.max_frames, structured=cfg.structured, **cfg.vllm)
    from vidcurate.stages.captioners import OpenAICaptioner

    endpoint = cfg.openai.model_dump()
    if cfg.structured == "off":
        endpoint["structured"] = "off"
    return OpenAICaptioner(model, **endpoint)


class CaptionWorker:
    """The stage core (an actor on Ray): loads the model once, then captions batches of decoded clips."""

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.captioner = make_captioner(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table(caption_decoded(batch.to_pylist(), self.captioner, self.cfg), CAPTIONS)


def decode_batch(batch: pa.Table, cfg: CaptionConfig) -> pa.Table:
    """The decode step: clips to the frames the model takes (in the actor on CPU, in tasks ahead of a GPU)."""
    return pa.Table.from_pylist(decode_clips(batch.to_pylist(), cfg))


REASONS = {
    "invalid_output": (FAILED, "no answer passed the grammar in `caption.max_attempts` tries (raw answer kept)"),
    "backend": (FAILED, "the model or server failed (unreachable, 5xx, out of memory: transient)"),
    "frames": (FAILED, "the clip's frames could not be read (split's stored frames, else the clip decoded)"),
}

SPEC = Stage(
    name=STAGE,
    config_model=CaptionConfig,
    table=CAPTIONS,
    columns=("clip_id", "video_id", "clip_uri", "start_s", "end_s"),
    optional=("frames_uri", "speech"),
    run_fields=("profile",),
    reasons=REASONS,
    # a random model's greedy answer repeats one token to the length limit: sample, short answers
    tiny_defaults={"temperature": 1.0, "frames": 4, "frame_height": 112, "max_events": 4, "max_tokens": 1024},
    resolve_profile=real_model_by_default(DEFAULT_CAPTION_MODEL),
    core=CaptionWorker,
    arguments=lambda ctx: {"cfg": ctx.config},
    decode=decode_batch,
    decode_arguments=lambda ctx: {"cfg": ctx.config},
    frames=lambda cfg: (frame_need(cfg),),
    needs_for=lambda cfg: ("speech",) if cfg.use_speech else (),  # the transcripts go into the prompt
)
