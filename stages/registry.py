"""The clip stages that map clips to rows, by name in pipeline order: the runner runs each
through its `ClipStage` declaration, with no code of its own per stage."""

from __future__ import annotations

from vidcurate.stages import caption, embed, ground, quality
from vidcurate.stages.contract import ClipStage

MAPPED: dict[str, ClipStage] = {spec.name: spec for spec in (caption.SPEC, ground.SPEC, embed.SPEC, quality.SPEC)}
