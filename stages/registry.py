"""Every stage, by name in pipeline order: the one list of stage names. The runner runs each
through its `Stage` declaration, with no code of its own per stage; config, CLI, ledger and
reports derive their lists from this."""

from __future__ import annotations

from vidcurate.stages import caption, dedup, embed, ground, probe, quality, shard, split
from vidcurate.stages.contract import Stage
from vidcurate.stages.frame_store import FrameNeed

STAGES: dict[str, Stage] = {
    spec.name: spec
    for spec in (probe.SPEC, split.SPEC, caption.SPEC, ground.SPEC, embed.SPEC, quality.SPEC, dedup.SPEC, shard.SPEC)
}
ALWAYS = ("probe", "split", "shard")  # every run; a config chooses among the others
OPTIONAL = tuple(name for name in STAGES if name not in ALWAYS)  # in pipeline order


def pipeline(chosen: list[str]) -> tuple[str, ...]:
    """The stages a run with these optional stages runs, in order."""
    return tuple(name for name in STAGES if name in ALWAYS or name in chosen)


def frame_needs(run) -> tuple[FrameNeed, ...]:
    """The frames of each clip that the run's stages sample: split keeps them as it encodes."""
    return tuple(need for name in run.pipeline() for need in STAGES[name].frames(run))
