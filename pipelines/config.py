"""Pipeline configuration: YAML validated by pydantic, so a typo fails before any work starts.

Each stage's settings are its own model, declared with the stage (`stages/<stage>.py`); the
config is a section per registered stage beside what belongs to a run: inputs, run directory,
profile, executor, Ray, partitions, the failure budget. Profiles, the order of the stages, what
each needs and what enters each fingerprint come from the stages' declarations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, create_model, model_validator

from vidcurate.stages.contract import SubRun
from vidcurate.stages.registry import DEFAULT, OPTIONAL, STAGES, pipeline
from vidcurate.stages.settings import StrictModel


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


class RunSettings(StrictModel):
    """What belongs to a run rather than to a stage; `PipelineConfig` adds a section per stage."""

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
    stages: list[Literal[OPTIONAL]] = Field(
        default_factory=lambda: list(DEFAULT),
        description="optional clip stages between split and shard, in pipeline order (default: those on by default)",
    )
    failures: FailureConfig = FailureConfig()

    @model_validator(mode="before")
    @classmethod
    def _tiny_defaults(cls, data):
        """Profile `tiny` runs random-initialised models: each stage's `tiny_defaults` apply where
        the config does not set them (sampling instead of greedy decoding, short answers, ...)."""
        if isinstance(data, dict) and data.get("profile") == "tiny":
            data = {**data}
            for name, spec in STAGES.items():
                if not spec.tiny_defaults:
                    continue
                part = data.get(name)
                part = dict(part) if isinstance(part, dict) else part.model_dump() if isinstance(part, BaseModel) else {}
                data[name] = {**spec.tiny_defaults, **part}
        return data

    @model_validator(mode="after")
    def _resolve_profile(self):
        """The profile becomes concrete models here, once (each stage says how: `resolve_profile`)."""
        for name, spec in STAGES.items():
            setattr(self, name, spec.resolve_profile(getattr(self, name), self.profile))
        return self

    @model_validator(mode="after")
    def _stage_order(self):
        if self.stages != sorted(set(self.stages), key=OPTIONAL.index):
            raise ValueError(f"stages must be distinct and in the order {list(OPTIONAL)}; got {self.stages}")
        chosen = self.pipeline()
        for stage in chosen:
            for needed in STAGES[stage].needs:
                if needed not in chosen:
                    raise ValueError(f"stage {stage!r} needs stage {needed!r}")
            for needed in STAGES[stage].needs_for(getattr(self, stage)):
                if needed not in chosen[: chosen.index(stage)]:
                    raise ValueError(f"{stage}'s settings need stage {needed!r} before it: add {needed} to `stages:`")
        return self

    def pipeline(self) -> tuple[str, ...]:
        """Every stage this config runs, in order."""
        return pipeline(self.stages)

    def section(self, stage: str, exclude: tuple[str, ...] = ()) -> dict:
        """A stage's settings that decide its output (never its Ray `resources`)."""
        return getattr(self, stage).model_dump(exclude={"resources", *exclude})

    def stage_hash(self, stage: str) -> str:
        """Fingerprint of what decides a stage's output, so a changed setting re-runs it: its own
        section, the sections it reads and the run settings it declares (`Stage`)."""
        spec = STAGES[stage]
        payload = {
            "own": self.section(stage, spec.unhashed),
            "sections": {name: self.section(name) for name in spec.sections},
            "run": {name: getattr(self, name) for name in spec.run_fields},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def sub_run(self, sub: SubRun, **settings):
        """The config of a run made from this one (a partition or an increment): its own run
        directory, each stage's section as that stage derives it for `sub`, and `settings`."""
        sections = {name: spec.sub_config(getattr(self, name), sub) for name, spec in STAGES.items()}
        return self.model_copy(update={"run_dir": str(sub.run_dir), **sections, **settings})


PipelineConfig = create_model(
    "PipelineConfig",
    __base__=RunSettings,
    __doc__="The whole config: the run's settings and one section per stage (its module's config model).",
    **{name: (spec.config_model, Field(default_factory=spec.config_model)) for name, spec in STAGES.items()},
)


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
