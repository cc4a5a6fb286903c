"""Every stage, in pipeline order: the one list of stage names. Adding a stage is its module and
one line here; the config, the CLI, the ledger's vocabulary and the stage order derive from it."""

from __future__ import annotations

from vidcurate.stages import caption, decontam, dedup, embed, ground, probe, quality, shard, speech, split
from vidcurate.stages.contract import Stage
from vidcurate.stages.frame_store import FrameNeed

STAGES: dict[str, Stage] = {
    spec.name: spec
    for spec in (probe.SPEC, split.SPEC, speech.SPEC, caption.SPEC, embed.SPEC, ground.SPEC, decontam.SPEC, quality.SPEC, dedup.SPEC, shard.SPEC)
}
ALWAYS = tuple(name for name, spec in STAGES.items() if spec.always)  # every run; a config chooses among the others
OPTIONAL = tuple(name for name in STAGES if name not in ALWAYS)  # in pipeline order
DEFAULT = tuple(name for name in OPTIONAL if STAGES[name].by_default)  # a config that names none runs these
VIDEO_SOURCE = next(name for name, spec in STAGES.items() if spec.reads == "inputs")  # lists and admits the videos
CLIP_SOURCE = next(name for name, spec in STAGES.items() if spec.reads == "videos")  # cuts the videos into clips
SHIPPER = next(name for name, spec in STAGES.items() if spec.ships)  # writes the shards


def pipeline(chosen: list[str]) -> tuple[str, ...]:
    """The stages a run with these optional stages runs, in order."""
    return tuple(name for name in STAGES if name in ALWAYS or name in chosen)


def frame_needs(cfg) -> tuple[FrameNeed, ...]:
    """The frames of each clip that the run's stages sample: split keeps them as it encodes."""
    return tuple(need for name in cfg.pipeline() for need in STAGES[name].frames(getattr(cfg, name)))
