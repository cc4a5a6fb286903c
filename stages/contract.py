"""What a clip stage declares, so one generic runner can run any of them.

A clip stage reads the clips its predecessor kept and writes one row of its table per clip, in
the order it was given them. It declares:
- `name`, and its `table`: the Arrow schema of its rows (`schemas.tables`);
- `columns`: what it reads of each clip; `optional`: what it reads when an earlier stage wrote it;
- `core`: the work on a batch, either a function `core(table, **arguments) -> table` or a class
  whose constructor loads models (`setup`: Ray runs it as an actor) and whose call maps a batch;
- `decode`: an optional CPU step, `decode(table, **decode_arguments) -> table`, that the runner
  streams ahead of the core in parallel tasks, so a GPU core never waits on decoding;
- `arguments(run)` / `decode_arguments(run)`: their keyword arguments from the run's config
  (its own section, plus what it is told about the run: the stages present, the captioner);
- `prepare(rows, run)`: whole-run work before the map (ground's distractors come from other
  clips); `finalize(rows, run)`: whole-run work after it over every row, old and new (quality's
  rules are corpus percentiles);
- `frames(run)`: the `FrameNeed`s of the frames it samples from each clip, which split keeps
  while it encodes the clip (decode once);
- `check(run)`: what must hold before any work starts (an optional dependency installed);
- `redo_unit`: the rows an update recomputes together (`video_id` where a clip's row depends on
  its video's other clips).
Stages never import Ray: the runner picks the executor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa


def _none(_run) -> dict:
    return {}


def _unchanged(rows: list[dict], _run) -> list[dict]:
    return rows


def _nothing(_run) -> None:
    return None


def _no_frames(_run) -> tuple:
    return ()


@dataclass(frozen=True)
class ClipStage:
    name: str
    table: pa.Schema
    columns: tuple[str, ...]
    core: Callable | type
    arguments: Callable[[object], dict]
    optional: tuple[str, ...] = ()
    decode: Callable[..., pa.Table] | None = None
    decode_arguments: Callable[[object], dict] = _none
    prepare: Callable[[list[dict], object], list[dict]] = _unchanged
    finalize: Callable[[list[dict], object], list[dict]] = _unchanged
    frames: Callable[[object], tuple] = _no_frames
    check: Callable[[object], None] = _nothing
    redo_unit: str = "clip_id"

    def config(self, run):
        """The stage's own section of the run's config."""
        return getattr(run, self.name)

    def project(self, clips: list[dict]) -> list[dict]:
        """Each clip narrowed to what the stage reads."""
        return [{**{k: c[k] for k in self.columns}, **{k: c.get(k) for k in self.optional}} for c in clips]

    @property
    def is_actor(self) -> bool:
        return isinstance(self.core, type)

    @property
    def decides_over_run(self) -> bool:
        return self.finalize is not _unchanged
