"""Pipeline configuration: YAML validated by pydantic, so a typo fails before any work starts.

Each stage's settings are its own model, in its module (`stages/<stage>.py`); this composes
them with what belongs to a run: inputs, run directory, profile, Ray, the failure budget.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, model_validator

from vidcurate.stages.caption import CaptionConfig
from vidcurate.stages.dedup import DedupConfig
from vidcurate.stages.embed import EmbedConfig
from vidcurate.stages.ground import GroundConfig
from vidcurate.stages.models import DEFAULT_CAPTION_MODEL, DEFAULT_CLIP_MODEL
from vidcurate.stages.probe import ProbeConfig
from vidcurate.stages.quality import QualityConfig
from vidcurate.stages.registry import OPTIONAL, STAGES, pipeline
from vidcurate.stages.settings import StrictModel
from vidcurate.stages.shard import ShardConfig
from vidcurate.stages.split import SplitConfig


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: local ray.init(); 'auto' or 'ray://host:port' for a cluster")
    num_cpus: int | None = Field(None, ge=1, description="local runs only: CPUs Ray may use")


class PartitionConfig(StrictModel):
    """Streaming a corpus in partitions of videos (pipelines/partitions.py)."""

    videos: int = Field(
        0, ge=0, description="videos per partition: each runs split -> shard on its own and ships its shards as soon "
        "as it is done, while the next partition's stages run; 0: the run is one partition"
    )
    in_flight: int = Field(2, ge=1, description="partitions worked on at once (each stage takes one partition at a time)")


class FailureConfig(StrictModel):
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
        unknown = sorted(set(self.stage_max_failed_fraction) - set(STAGES))
        if unknown:
            raise ValueError(f"stage_max_failed_fraction names unknown stages {unknown}; stages: {list(STAGES)}")
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


class PipelineConfig(StrictModel):
    inputs: str | None = Field(None, description="directory, glob, list file (.txt) or s3:// prefix; probe needs it")
    run_dir: str = "runs/default"
    profile: Literal["tiny", "default"] = Field(
        "default", description="default: the real models' weights; tiny: random toy models built locally (tests, the sample job)"
    )
    executor: Literal["ray", "in_process"] = Field(
        "ray", description="ray: stages on Ray (local or `ray.address`); in_process: everything in this process, "
        "Ray never started (small runs, tools, tests)"
    )
    ray: RayConfig = RayConfig()
    partitions: PartitionConfig = PartitionConfig()
    probe: ProbeConfig = ProbeConfig()
    split: SplitConfig = SplitConfig()
    stages: list[Literal[OPTIONAL]] = Field(
        default_factory=lambda: list(OPTIONAL),
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
    def _resolve_profile(self) -> PipelineConfig:
        """The profile becomes concrete models here, once: `default` names the real ones where the
        config names none; under `tiny` an unnamed model is the stage's random toy, built locally."""
        if self.profile == "default":
            self.caption = self.caption.model_copy(update={"model": self.caption.model or DEFAULT_CAPTION_MODEL})
            self.embed = self.embed.model_copy(update={"model": self.embed.model or DEFAULT_CLIP_MODEL})
        return self

    @model_validator(mode="after")
    def _stage_order(self) -> PipelineConfig:
        if self.stages != sorted(set(self.stages), key=OPTIONAL.index):
            raise ValueError(f"stages must be distinct and in the order {list(OPTIONAL)}; got {self.stages}")
        for stage, needs in STAGE_NEEDS.items():
            if stage in self.stages and needs not in self.stages:
                raise ValueError(f"stage {stage!r} needs stage {needs!r}")
        return self

    def pipeline(self) -> tuple[str, ...]:
        """Every stage this config runs, in order."""
        return pipeline(self.stages)

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
