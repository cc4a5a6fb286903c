"""The clip stages that map clips to rows, by name in pipeline order: the runner runs each
through its `ClipStage` declaration, with no code of its own per stage."""

from __future__ import annotations

from vidcurate.stages import caption, embed, ground, quality, shard
from vidcurate.stages.contract import ClipStage
from vidcurate.stages.frame_store import FrameNeed

MAPPED: dict[str, ClipStage] = {spec.name: spec for spec in (caption.SPEC, ground.SPEC, embed.SPEC, quality.SPEC)}


def frame_needs(run) -> tuple[FrameNeed, ...]:
    """The frames of each clip that the run's stages sample: split keeps them as it encodes."""
    mapped = tuple(need for name in run.stages if name in MAPPED for need in MAPPED[name].frames(run))
    return mapped + shard.frame_needs(run.shard)
