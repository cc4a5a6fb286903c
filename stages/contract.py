"""What a stage declares about itself, and what it is given when it runs.

One `Stage` in the stage's own module says everything the pipeline needs to know about it, so
the runner, the config, the CLI and the ledger name no stage:
- `name`, its `config_model` (the config section of that name), `table` (its rows' Arrow schema,
  `schemas.tables`) and `key`;
- `reads`: what it reads: `inputs` (the URIs the config lists), `videos` (the videos the stage
  reading inputs kept) or `clips` (the clips its predecessor kept, merged with every earlier clip
  stage's columns); `columns` of each (None: all), `optional` ones an earlier stage may have written;
- its place: `always` (in every pipeline) or chosen in `stages:` (`by_default`: in the default list;
  a stage that needs the user's input, or costs much, runs only when named); `needs`: stages it needs before it,
  and `needs_for(config)`: those its settings need (caption's `use_speech` needs speech);
- its fingerprint: its own section (but `resources` and `unhashed` fields), the other config
  `sections` it reads (they reach it in its context, and only they), the run-level `run_fields`,
  and `outside(config)`: a digest of files its output depends on besides its input (decontam's
  eval sets), so a changed file redoes it;
- its vocabulary: `reasons` (code -> (status, meaning)) and, for codes made of rule names,
  `rule_codes` (quality's `motion+ocr_coverage`);
- its profile defaults: `tiny_defaults` (config values under profile `tiny` unless the config sets
  them) and `resolve_profile` (e.g. the real model's id under profile `default`);
- its marker: `marker_fields` it adds (name -> how partitions combine them: sum or concat), and
  `measure(done_table)` for fields computed from the rows it made;
- its work: `core(table, **arguments(ctx))` on each batch (a function: Ray tasks; a class whose
  constructor loads models: Ray actors), with an optional CPU `decode` step streamed ahead of a GPU
  core; or `whole(rows, ctx) -> (rows, marker fields)` over every row at once;
  `prepare(rows, ctx)` before the map and `finalize(rows, ctx)` after it over every row, old and new;
  `frames(config)`: the frames of each clip it samples (split keeps them: decode once);
  `check(ctx)`: what must hold before any work starts; `redo_unit`: the rows an update redoes
  together (None: the whole table);
- across runs: `ships` (the dataset folder of the stage that writes the shards), `memory` (what it
  remembers of shipped clips across runs, and gathers for a partition from earlier ones), and
  `sub_config(section, sub)` (its section in a sub-run: a partition or an increment).
A later clip stage's column of the same name replaces an earlier one's in the rows the stages
after it read (ground's refined `events` replace caption's; decontam's filtered `qa`, ground's).
Stages never import Ray or the runner: what they need arrives in their `StageContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa

from vidcurate.stages.settings import StrictModel


class Executor(Protocol):
    """The parallel map whole-run work uses: `[fn(item, **shared) for item in items]`, in order
    (Ray tasks, or this process); each shared value travels once."""

    def map(self, fn: Callable, items: list, **shared) -> list: ...


def map_here(fn: Callable, items: list, **shared) -> list:
    """`fn(item, **shared)` for each item, in order, in this process."""
    return [fn(item, **shared) for item in items]


class InProcess:
    """The executor of work done in this process."""

    map = staticmethod(map_here)


@dataclass(frozen=True)
class StageView:
    """What a stage sees of the run directory: the folder it writes (a temporary one until the
    stage completes), the media folder beside the stage folders, and the tables of the stages
    before it, by name."""

    output: Path
    media: Path
    tables: Callable[[str], pa.Table]

    def table(self, name: str) -> pa.Table:
        return self.tables(name)


@dataclass(frozen=True)
class RunFacts:
    """What a stage is told about the run it works in."""

    run_dir: Path
    inputs: str | None = None
    profile: str = "default"
    passed: tuple[str, ...] = ()  # the stages before this one, in pipeline order
    frame_needs: tuple = ()  # the frames of each clip that the run's stages sample


@dataclass(frozen=True)
class StageContext:
    """Everything a stage's work receives: its own config section, the other sections it declared,
    facts about the run, the executor's parallel map and its view of the run directory."""

    name: str
    config: Any
    sections: Mapping[str, Any] = field(default_factory=dict)
    run: RunFacts = RunFacts(Path("."))
    executor: Executor = InProcess()
    store: StageView | None = None


@dataclass(frozen=True)
class SubRun:
    """A run made from a parent run: a `partition` of a corpus run (`name` p00000, ...) or an
    `increment` of a scheduled corpus; `root` is where the parent keeps what its sub-runs share."""

    kind: Literal["partition", "increment"]
    name: str
    run_dir: Path
    root: Path


class ShippedMemory(Protocol):
    """What a stage remembers of shipped clips across runs (dedup's history of shipped clips)."""

    def record(self, config, run_dir: Path, shipped: list[dict]) -> None:
        """After a run ships: remember its shipped clips (rows merged through this stage)."""

    def gather(self, config, parent, sub: SubRun, earlier: list[SubRun]) -> None:
        """Before the stage runs in partition `sub`: what the parent remembers and what the
        `earlier` partitions shipped, where `config` (the partition's section) looks."""


def _nothing(*_args) -> dict:
    return {}


def _unchanged(rows: list[dict], _ctx) -> list[dict]:
    return rows


def _no_check(_ctx) -> None:
    return None


def _no_frames(_config) -> tuple:
    return ()


def _same_section(section, *_args):
    return section


def _no_needs(_config) -> tuple[str, ...]:
    return ()


def _nothing_outside(_config) -> str:
    return ""


@dataclass(frozen=True)
class Stage:
    name: str
    config_model: type[StrictModel]
    table: pa.Schema
    reads: Literal["inputs", "videos", "clips"] = "clips"
    key: str = "clip_id"
    columns: tuple[str, ...] | None = None
    optional: tuple[str, ...] = ()
    always: bool = False
    by_default: bool = True
    needs: tuple[str, ...] = ()
    needs_for: Callable[[Any], tuple[str, ...]] = _no_needs
    sections: tuple[str, ...] = ()
    run_fields: tuple[str, ...] = ()
    unhashed: tuple[str, ...] = ()
    outside: Callable[[Any], str] = _nothing_outside
    reasons: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    rule_codes: str | None = None
    tiny_defaults: Mapping[str, Any] = field(default_factory=dict)
    resolve_profile: Callable[[Any, str], Any] = _same_section
    marker_fields: Mapping[str, Literal["sum", "concat"]] = field(default_factory=dict)
    measure: Callable[[pa.Table], dict] = _nothing
    core: Callable | type | None = None
    whole: Callable[[list[dict], StageContext], tuple[list[dict], dict]] | None = None
    arguments: Callable[[StageContext], dict] = _nothing
    decode: Callable[..., pa.Table] | None = None
    decode_arguments: Callable[[StageContext], dict] = _nothing
    prepare: Callable[[list[dict], StageContext], list[dict]] = _unchanged
    finalize: Callable[[list[dict], StageContext], list[dict]] = _unchanged
    frames: Callable[[Any], tuple] = _no_frames
    check: Callable[[StageContext], None] = _no_check
    redo_unit: str | None = "clip_id"
    ships: str | None = None
    memory: ShippedMemory | None = None
    sub_config: Callable[[Any, SubRun], Any] = _same_section

    def __post_init__(self):
        if (self.core is None) == (self.whole is None):
            raise ValueError(f"stage {self.name}: declare a per-batch `core` or a whole-run `whole`, one of them")
        if self.decode is not None and not isinstance(self.core, type):
            raise ValueError(f"stage {self.name}: a decode step goes with a class core (it feeds model actors)")

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

    def batch_work(self, kwargs: dict, decode_kwargs: dict | None) -> Callable[[pa.Table], pa.Table]:
        """The stage's work on one batch, ready to call: `core` with `kwargs` (`arguments(ctx)`; a
        class core's models load here, once), after the decode step where `decode_kwargs` are given
        (None: batches come decoded, or the stage has no decode step)."""
        work = self.core(**kwargs) if self.is_actor else partial(self.core, **kwargs)
        if self.decode is None or decode_kwargs is None:
            return work
        return lambda table: work(self.decode(table, **decode_kwargs))

    def portable(self, ctx: StageContext) -> StageContext:
        """The context a remote worker gets: no executor and no store (they stay with the runner)."""
        return replace(ctx, executor=InProcess(), store=None)
