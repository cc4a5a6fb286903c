"""What a stage declares, so one generic runner can run any of them.

A stage reads rows and writes its table, keyed by `key`. It declares:
- `name`, its `table` (the Arrow schema of its rows, `schemas.tables`) and `key`;
- `reads`: what the runner hands it: `inputs` (the URIs the config lists), `videos` (the
  videos probe kept) or `clips` (the clips its predecessor kept, merged with every earlier
  stage's columns); `columns`: what it reads of each (None: all), `optional`: what it reads
  when an earlier stage wrote it;
- `core`: the work on a batch, either a function `core(table, **arguments) -> table` or a class
  whose constructor loads models (`setup`: Ray runs it as actors) and whose call maps a batch;
  or `whole(rows, run, place) -> (rows, marker fields)`: work that needs every row at once
  (dedup, shard);
- `decode`: an optional CPU step of a class core, `decode(table, **decode_arguments) -> table`,
  that the runner streams ahead of a GPU core in parallel tasks, so it never waits on decoding
  (on CPU the actors run it themselves);
- `arguments(run, place)` / `decode_arguments(run)`: their keyword arguments from the run's
  config (its own section, plus what it is told about the run) and the run's `Place`;
- `prepare(rows, run)`: whole-run work before the map (ground's distractors come from other
  clips); `finalize(rows, run)`: whole-run work after it over every row, old and new
  (quality's rules are corpus percentiles, probe marks inputs with the same bytes);
- `frames(run)`: the `FrameNeed`s of the frames it samples from each clip, which split keeps
  while it encodes the clip (decode once);
- `check(run)`: what must hold before any work starts (an optional dependency installed);
- `redo_unit`: the rows an update recomputes together (`video_id` where a row depends on its
  video's other rows; None: the whole table).
Stages never import Ray: the runner picks the executor, and `Place.map` is its parallel map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa


def _no_arguments(_run, _place) -> dict:
    return {}


def _none(_run) -> dict:
    return {}


def _unchanged(rows: list[dict], _run) -> list[dict]:
    return rows


def _nothing(_run) -> None:
    return None


def _no_frames(_run) -> tuple:
    return ()


def map_here(fn: Callable, items: list, **shared) -> list:
    """`fn(item, **shared)` for each item, in order, in this process."""
    return [fn(item, **shared) for item in items]


@dataclass(frozen=True)
class Place:
    """What a stage is told about the run it works in: its folder, the stage folder it writes,
    the tables of the stages before it, the frames the run's stages sample, and the executor's
    parallel map `map(fn, items, **shared) -> [fn(item, **shared), ...]` (shared values travel once)."""

    run_dir: Path
    output: Path
    passed: tuple[str, ...] = ()  # the stages before this one, in pipeline order
    frame_needs: tuple = ()
    map: Callable[..., list] = map_here
    table: Callable[[str], pa.Table] | None = None  # a completed earlier stage's table, by name

    @property
    def media(self) -> Path:
        return self.output.parent / "media"  # beside the stage folders


@dataclass(frozen=True)
class Stage:
    name: str
    table: pa.Schema
    reads: Literal["inputs", "videos", "clips"] = "clips"
    key: str = "clip_id"
    columns: tuple[str, ...] | None = None
    optional: tuple[str, ...] = ()
    core: Callable | type | None = None
    whole: Callable[[list[dict], object, Place], tuple[list[dict], dict]] | None = None
    arguments: Callable[[object, Place], dict] = _no_arguments
    decode: Callable[..., pa.Table] | None = None
    decode_arguments: Callable[[object], dict] = _none
    prepare: Callable[[list[dict], object], list[dict]] = _unchanged
    finalize: Callable[[list[dict], object], list[dict]] = _unchanged
    frames: Callable[[object], tuple] = _no_frames
    check: Callable[[object], None] = _nothing
    redo_unit: str | None = "clip_id"

    def __post_init__(self):
        if (self.core is None) == (self.whole is None):
            raise ValueError(f"stage {self.name}: declare a per-batch `core` or a whole-run `whole`, one of them")
        if self.decode is not None and not isinstance(self.core, type):
            raise ValueError(f"stage {self.name}: a decode step goes with a class core (it feeds model actors)")

    def config(self, run):
        """The stage's own section of the run's config."""
        return getattr(run, self.name)

    def project(self, rows: list[dict]) -> list[dict]:
        """Each row narrowed to what the stage reads."""
        if self.columns is None:
            return rows
        return [{**{k: r[k] for k in self.columns}, **{k: r.get(k) for k in self.optional}} for r in rows]

    @property
    def is_actor(self) -> bool:
        return isinstance(self.core, type)

    @property
    def decides_over_run(self) -> bool:
        return self.finalize is not _unchanged
