"""Pipeline configuration: YAML validated by pydantic, so a typo fails before any work starts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    batch_size: int = Field(1, ge=1, description="videos per task")

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
    threshold: float = Field(12.0, gt=0, description="min frame-difference score (0-255 scale) of a hard cut")
    adaptive_ratio: float = Field(3.0, ge=1, description="a cut's score must exceed this multiple of its neighbours'")
    window: int = Field(8, ge=1, description="frames on each side used for the adaptive ratio")
    min_clip_s: float = Field(1.0, ge=0)
    max_clip_s: float = Field(30.0, gt=0)
    short_shots: Literal["merge", "drop"] = "merge"
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


class ShardConfig(_Strict):
    prefix: str = Field("vidcurate", pattern=r"^[A-Za-z0-9_-]+$")
    maxcount: int = Field(1000, ge=1, description="samples per shard at most")
    maxsize: int = Field(1 << 30, ge=1 << 16, description="bytes per shard at most (one sample may overshoot)")
    shuffle_seed: int | None = Field(0, description="seeded order of samples across shards; null: sorted by clip id")
    keyframes: int = Field(0, ge=0, le=64, description="JPEG keyframes per sample as f000.jpg, f001.jpg, ...")
    keyframe_height: int = Field(224, ge=16)
    output: str | None = Field(None, description="publish the dataset here too: a directory or fsspec URL (s3://...)")


class PipelineConfig(_Strict):
    inputs: str | None = Field(None, description="directory, glob, list file (.txt) or s3:// prefix; probe needs it")
    run_dir: str = "runs/default"
    profile: Literal["tiny", "default"] = "tiny"
    ray: RayConfig = RayConfig()
    probe: ProbeConfig = ProbeConfig()
    split: SplitConfig = SplitConfig()
    shard: ShardConfig = ShardConfig()

    def stage_hash(self, stage: str) -> str:
        """Fingerprint of what decides a stage's output, so a changed setting re-runs it."""
        section = getattr(self, stage, None)
        payload = section.model_dump(exclude={"resources"}) if isinstance(section, BaseModel) else {}
        if stage == "probe":
            payload = {**payload, "inputs": self.inputs}
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
