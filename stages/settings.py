"""What every stage's config model shares: unknown keys are errors, and the Ray resources a
stage's tasks take (never part of its fingerprint: they do not change its output)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)  # a default of 14400 for a float field is 14400.0, as after a round trip (fingerprints)


class StageResources(StrictModel):
    """How Ray runs a stage's tasks; never part of a stage's fingerprint (it does not change output)."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="tasks at a time; None: as many as resources allow")
    batch_size: int = Field(1, ge=1, description="rows (videos or clips) per task")

    def map_batches_args(self) -> dict:
        args = {"num_cpus": self.num_cpus, "batch_size": self.batch_size, "concurrency": self.concurrency}
        return {**args, "num_gpus": self.num_gpus} if self.num_gpus else args
