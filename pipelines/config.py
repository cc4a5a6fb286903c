"""Pipeline configuration: YAML validated by pydantic, so a typo fails before any work starts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.tables import CLIP_STAGES, TABLES
from stages.content_flags import OCR_GATE_SIDE, OCR_SIDE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(_Strict):
    address: str | None = Field(None, description="None: local ray.init(); 'auto' or 'ray://host:port' for a cluster")
    num_cpus: int | None = Field(None, ge=1, description="local runs only: CPUs Ray may use")


class StageResources(_Strict):
    """How Ray runs a stage's tasks; never part of a stage's fingerprint (it does not change output)."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="tasks at a time; None: as many as resources allow")
    batch_size: int = Field(1, ge=1, description="rows (videos or clips) per task")

    def map_batches_args(self) -> dict:
        args = {"num_cpus": self.num_cpus, "batch_size": self.batch_size, "concurrency": self.concurrency}
        return {**args, "num_gpus": self.num_gpus} if self.num_gpus else args


class ProbeConfig(_Strict):
    min_duration_s: float = Field(0.5, ge=0)
    max_duration_s: float = Field(4 * 3600, gt=0)
    max_width: int = Field(7680, gt=0, description="decoder-bomb guard: larger declared sizes are rejected")
    max_height: int = Field(4320, gt=0)
    max_file_bytes: int = Field(50 * 2**30, gt=0)
    resources: StageResources = StageResources()


class SplitConfig(_Strict):
    detector: Literal["content", "transnetv2", "combined"] = Field(
        "content", description="content: frame differences + dissolve (calm and moving shots) and black analysis; "
        "transnetv2: the bundled TransNetV2 network; combined: content cuts plus TransNetV2's transitions away from them"
    )
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2 transition probability")
    device: str = Field("auto", description="TransNetV2: auto, cpu, cuda")
    threshold: float = Field(12.0, gt=0, description="min frame-difference score (0-255 scale) of a hard cut")
    adaptive_ratio: float = Field(3.0, ge=1, description="a cut's score must exceed this multiple of its neighbours'")
    window: int = Field(8, ge=1, description="frames on each side used for the adaptive ratio")
    min_clip_s: float = Field(1.0, ge=0)
    max_clip_s: float = Field(30.0, gt=0)
    short_shots: Literal["merge", "drop"] = "merge"
    static_lead_in_s: float = Field(
        1.0, ge=0, description="a first shot frozen for at least this long before it starts moving loses the frozen "
        "part as rejected(static); 0 keeps it"
    )
    analysis_width: int = Field(64, ge=16, description="approximate width of the frames the detector sees")
    clip_max_height: int = Field(360, ge=16, description="extracted clips are scaled down to at most this height")
    clip_crf: int = Field(23, ge=0, le=51)
    clip_preset: str = "veryfast"
    resources: StageResources = StageResources()

    @model_validator(mode="after")
    def _lengths(self) -> SplitConfig:
        if self.min_clip_s >= self.max_clip_s:
            raise ValueError(f"min_clip_s ({self.min_clip_s}) must be below max_clip_s ({self.max_clip_s})")
        return self


class OpenAIEndpoint(_Strict):
    base_url: str = Field("http://localhost:8000/v1", description="an OpenAI-compatible server, e.g. `vllm serve`")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never logged)")
    concurrency: int = Field(8, ge=1, description="requests in flight per worker")
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    timeout_s: float = Field(300.0, gt=0)
    structured: Literal["vllm", "json_schema", "off"] = Field(
        "vllm", description="how the answer grammar is sent: vLLM's structured_outputs regex, the standard "
        "response_format JSON schema (hosted APIs, llama.cpp, SGLang), or not at all; caption.structured: off wins"
    )


class CaptionConfig(_Strict):
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = Field(None, description="hub id or local path; None: the profile's model")
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
        "auto", description="enforce the answer grammar: vLLM/openai always (auto), transformers for small vocabularies"
    )
    device: str = Field("auto", description="transformers backend: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(
        8, ge=1, description="transformers backend: greedy prompts per generate call (at most the clips of one "
        "resources.batch_size batch)"
    )
    vllm: dict = Field(default_factory=dict, description="extra vllm.LLM arguments (tensor_parallel_size, ...)")
    openai: OpenAIEndpoint = OpenAIEndpoint()
    resources: StageResources = StageResources(batch_size=4)

    @model_validator(mode="after")
    def _frames(self) -> CaptionConfig:
        if self.frames > self.max_frames:
            raise ValueError(f"frames ({self.frames}) must not exceed max_frames ({self.max_frames})")
        if self.frames_as == "video" and self.backend != "transformers":
            raise ValueError(f"frames_as: video needs backend: transformers (the {self.backend} backend sends frames as images)")
        return self


class GroundConfig(_Strict):
    max_window_s: float = Field(60.0, gt=0, description="video-level samples span contiguous clips up to this long")
    rewrite: bool = Field(False, description="rephrase template questions with the captioner's model")
    min_rewrite_score: float = Field(0.6, ge=0, le=1, description="verification a rewrite needs to replace the template")
    rewrite_max_tokens: int = Field(96, ge=8)
    resources: StageResources = StageResources(batch_size=16)


class EmbedConfig(_Strict):
    model: str | None = Field(None, description="open_clip model (ViT-B-32, ViT-L-14, ViT-B-16-SigLIP, ...); None: the profile's")
    pretrained: str | None = Field("laion2b_s34b_b79k", description="open_clip pretrained tag or a checkpoint path")
    tokenizer: str | None = Field(
        None, description="hub id or local folder of the model's Hugging Face tokenizer (SigLIP's lives on the hub); "
        "None: the model's own"
    )
    keyframes: int = Field(4, ge=1, le=64, description="evenly spaced frames per clip")
    device: str = "auto"
    resources: StageResources = StageResources(batch_size=16)


class QualityRule(_Strict):
    """Bounds on one score; absolute (min/max) and/or corpus percentiles (0-100) of this run."""

    score: str
    min: float | None = None
    max: float | None = None
    percentile_min: float | None = Field(None, ge=0, le=100)
    percentile_max: float | None = Field(None, ge=0, le=100)


class QualityConfig(_Strict):
    frames: int = Field(8, ge=2, description="frames per clip the technical scores look at")
    aesthetic_head: str | None = Field(None, description="LAION-style linear head (.pth); None: seeded random head (tiny)")
    rules: list[QualityRule] = Field(
        default_factory=lambda: [
            QualityRule(score="black_fraction", max=0.5),
            QualityRule(score="brightness", min=12.0),
            QualityRule(score="motion", min=0.5),
            QualityRule(score="sharpness", min=20.0),
            QualityRule(score="letterbox", max=0.4),
            QualityRule(score="ocr_coverage", max=0.25),
            QualityRule(score="nsfw", max=0.5),
        ],
        description="a clip failing any rule is rejected, with every failing rule named; "
        "a rule on a score that was not computed (e.g. nsfw with nsfw off) does nothing",
    )
    ocr: bool = Field(False, description="score `ocr_coverage`: share of the frame in detected text (flags extra)")
    nsfw: bool = Field(False, description="score `nsfw`: NudeNet confidence of exposed nudity (flags extra)")
    flag_frames: int = Field(3, ge=1, description="frames per clip the ocr / nsfw detectors look at")
    ocr_side: int = Field(
        OCR_SIDE, ge=32, description="short side the text detector scales frames to (rapidocr's own 736 upsamples 360p "
        "clips 2x; benchmarks/flags_bench.py measures cost and agreement)"
    )
    ocr_gate_side: int | None = Field(
        OCR_GATE_SIDE, ge=32, description="first look for text with frames scaled down to this short side; only a "
        "clip where it finds some is measured at ocr_side (on its frame with the most text); null: every frame at ocr_side"
    )
    rank_scores: list[str] = Field(
        default_factory=lambda: ["sharpness", "aesthetic", "clip_score", "resolution"],
        description="their mean percentile rank is the `quality` dedup keeps the best copy by",
    )
    resources: StageResources = StageResources(batch_size=8)


class DedupConfig(_Strict):
    near_cosine: float = Field(0.97, gt=0, le=1, description="embedding cosine at or above which clips are near-duplicates")
    max_hamming: int | None = Field(6, ge=0, le=32, description="pHash bits that may differ for a near-duplicate; null: off")
    semantic_eps: float | None = Field(0.05, gt=0, lt=1, description="SemDeDup: same cluster and cosine >= 1 - eps; null: off")
    n_clusters: int | None = Field(None, ge=1, description="SemDeDup k-means clusters; None: sqrt(clips)")
    flat_max: int = Field(200_000, ge=2, description="exact search up to this many clips; beyond, clustered search on Ray")
    history: str | None = Field(None, description="folder of shipped clips shared by scheduled runs; null: this run only")
    resources: StageResources = StageResources()


class ShardConfig(_Strict):
    prefix: str = Field("vidcurate", pattern=r"^[A-Za-z0-9_-]+$")
    maxcount: int = Field(1000, ge=1, description="samples per shard at most")
    maxsize: int = Field(1 << 30, ge=1 << 16, description="bytes per shard at most (one sample may overshoot)")
    shuffle_seed: int | None = Field(0, description="seeded order of samples across shards; null: sorted by clip id")
    keyframes: int = Field(0, ge=0, le=64, description="JPEG keyframes per sample as f000.jpg, f001.jpg, ...")
    keyframe_height: int = Field(224, ge=16)
    output: str | None = Field(None, description="publish the dataset here too: a directory or fsspec URL (s3://...)")
    license: str | None = Field(
        None, description="the dataset's license for its card (an SPDX id such as cc-by-4.0, as the sources allow); "
        "unset: `unknown`, with a visible note"
    )


class FailureConfig(_Strict):
    """What a run does with failures; never part of a stage's fingerprint."""

    retry_transient: bool = Field(
        True, description="a re-run re-attempts the rows that failed transiently (backend down, OOM, lost worker, "
        "I/O), in their stage and every stage after it; false: completed stages are kept as they are"
    )
    max_tries: int = Field(3, ge=1, description="runs that may attempt one row; past this a transient failure stays")
    max_failed_fraction: float = Field(
        0.1, ge=0, le=1, description="failure budget: above this share of failed videos or clips (ledger), or of "
        "failed rows in any stage, the run still writes what succeeded, then fails (no publish, exit code 3)"
    )
    stage_max_failed_fraction: dict[str, float] = Field(
        default_factory=dict, description="per-stage budgets overriding max_failed_fraction, e.g. {caption: 0.3}"
    )

    @model_validator(mode="after")
    def _stages(self) -> FailureConfig:
        unknown = sorted(set(self.stage_max_failed_fraction) - set(TABLES))
        if unknown:
            raise ValueError(f"stage_max_failed_fraction names unknown stages {unknown}; stages: {list(TABLES)}")
        if any(not 0 <= v <= 1 for v in self.stage_max_failed_fraction.values()):
            raise ValueError("stage_max_failed_fraction values must lie in [0, 1]")
        return self

    def budget(self, stage: str) -> float:
        return self.stage_max_failed_fraction.get(stage, self.max_failed_fraction)


STAGE_NEEDS = {"ground": "caption", "dedup": "embed"}

# Profile `tiny` runs random-initialised models. Greedy decoding of a random model repeats one
# token until the length limit, and its embeddings are all alike (cosine ~0.97), so these
# settings apply unless the config sets them: sampling, short answers, and embedding-dedup
# thresholds that only match near-identical clips.
TINY_DEFAULTS = {
    "caption.temperature": 1.0,
    "caption.frames": 4,
    "caption.frame_height": 112,
    "caption.max_events": 4,
    "caption.max_tokens": 1024,
    "dedup.near_cosine": 0.9995,
    "dedup.semantic_eps": 0.0002,
}


class PipelineConfig(_Strict):
    inputs: str | None = Field(None, description="directory, glob, list file (.txt) or s3:// prefix; probe needs it")
    run_dir: str = "runs/default"
    profile: Literal["tiny", "default"] = Field(
        "default", description="default: the real models' weights; tiny: random toy models built locally (tests, the sample job)"
    )
    ray: RayConfig = RayConfig()
    probe: ProbeConfig = ProbeConfig()
    split: SplitConfig = SplitConfig()
    stages: list[Literal["caption", "ground", "embed", "quality", "dedup"]] = Field(
        default_factory=lambda: list(CLIP_STAGES),
        description="optional clip stages between split and shard, in pipeline order",
    )
    caption: CaptionConfig = CaptionConfig()
    ground: GroundConfig = GroundConfig()
    embed: EmbedConfig = EmbedConfig()
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    shard: ShardConfig = ShardConfig()
    failures: FailureConfig = FailureConfig()

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data):
        if isinstance(data, dict) and data.get("profile") == "tiny":
            data = {**data}
            for dotted, value in TINY_DEFAULTS.items():
                section, key = dotted.split(".")
                part = data.get(section)
                part = dict(part) if isinstance(part, dict) else part.model_dump() if isinstance(part, BaseModel) else {}
                part.setdefault(key, value)
                data[section] = part
        return data

    @model_validator(mode="after")
    def _stage_order(self) -> PipelineConfig:
        if self.stages != sorted(set(self.stages), key=CLIP_STAGES.index):
            raise ValueError(f"stages must be distinct and in the order {list(CLIP_STAGES)}; got {self.stages}")
        for stage, needs in STAGE_NEEDS.items():
            if stage in self.stages and needs not in self.stages:
                raise ValueError(f"stage {stage!r} needs stage {needs!r}")
        return self

    def pipeline(self) -> tuple[str, ...]:
        """Every stage this config runs, in order."""
        return ("probe", "split", *self.stages, "shard")

    def stage_hash(self, stage: str) -> str:
        """Fingerprint of what decides a stage's output, so a changed setting re-runs it."""
        section = getattr(self, stage, None)
        payload = section.model_dump(exclude={"resources", "license"}) if isinstance(section, BaseModel) else {}
        if stage == "probe":
            payload = {**payload, "inputs": self.inputs}
        if stage in ("caption", "embed", "quality") or (stage == "ground" and self.ground.rewrite):
            payload = {**payload, "profile": self.profile}  # the profile picks their models
        if stage == "ground" and self.ground.rewrite:
            payload = {**payload, "caption": self.caption.model_dump(exclude={"resources"})}
        if stage == "shard" and "ground" in self.stages:
            payload = {**payload, "max_window_s": self.ground.max_window_s}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, **overrides) -> PipelineConfig:
    """Read YAML (safe_load only) and apply CLI overrides given as dotted keys."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return PipelineConfig.model_validate(data)
