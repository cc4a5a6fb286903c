"""What every stage's config model shares: unknown keys are errors, and the Ray resources a
stage's tasks take (never part of its fingerprint: they do not change its output)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)  # a default of 14400 for a float field is 14400.0, as after a round trip (fingerprints)


class StageResources(StrictModel):
    """How Ray runs a stage's tasks; never part of a stage's fingerprint (it does not change output)."""

    num_cpus: float | None = Field(
        None, gt=0, description="CPUs each task or model actor holds; None: 1, but a model actor on CPU shares a node's CPUs with the stage's other actors"
    )
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="tasks at a time, or a model stage's actors; None: as many tasks as CPUs allow, one actor")
    batch_size: int = Field(1, ge=1, description="rows (videos or clips) per task or actor call")


def real_model_by_default(model_id: str):
    """A stage's `resolve_profile` for a config with a `model` field: under profile `default` an
    unnamed model is `model_id`, the real one; under `tiny` it stays unnamed, which the stage reads
    as its random toy model, built locally."""

    def resolve(cfg, profile: str):
        if profile == "default" and cfg.model is None:
            return cfg.model_copy(update={"model": model_id})
        return cfg

    return resolve
