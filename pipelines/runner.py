"""Runs any stage from its declaration (`stages.contract.Stage`), each into its folder of the run
directory, and finishes a run: ledger, stats, card, publish. It names no stage.

Layout of a run directory (`pipelines.store`): one folder per completed stage, in the order of the
registry (`stages.registry`), each with its table and a marker; `media/` beside them (clips, the
frames later stages sample, window media); `ledger.parquet`, one final status per input video,
clip and window. The stage that ships (`Stage.ships`) holds the dataset folder trainers read.

A stage's marker carries a fingerprint of its config (chained through its upstream stages') and
the `revision` (the kept rows) of the input it read. A re-run skips a stage whose fingerprint and
input revision match and that holds no row to retry, and redoes it whole (and so everything after
it) when its settings changed. Otherwise it is brought up to date row by row: rows that failed
transiently (under `failures.max_tries`) and rows its input gained are redone, in units that keep
the output equal to an uninterrupted run's (`Stage.redo_unit`: a video where a row depends on its
siblings, the whole table where a stage decides over all rows), and every other row is kept.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from vidcurate.pipelines.card import content_stats, dataset_card
from vidcurate.pipelines.cost import CpuMeter, cost_fields
from vidcurate.pipelines.disk import StorageFailed, written_per_video_hour
from vidcurate.pipelines.executors import executor_for
from vidcurate.pipelines.ledger import FailureBudgetExceeded, build_ledger, over_budget, pending_retries, retry_due, summarize
from vidcurate.pipelines.partitions import PartitionedRun
from vidcurate.pipelines.publish import partition_of, publish
from vidcurate.pipelines.store import StageMarker, StageStore, digest, write_atomically, write_rows
from vidcurate.schemas.tables import FAILED, KEPT
from vidcurate.stages.contract import RunFacts, Stage, StageContext, StageView
from vidcurate.stages.failures import failed_on_local_io, local_io_error
from vidcurate.stages.media import list_inputs, sweep_parts
from vidcurate.stages.registry import CLIP_SOURCE, SHIPPER, STAGES, VIDEO_SOURCE, frame_needs

log = logging.getLogger("vidcurate")


class Runner:
    """Executes stages of one run directory; every stage can also run alone on explicit folders."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.store = StageStore(self.run_dir)
        self.executor = executor_for(cfg)
        order = cfg.pipeline()
        self.upstream = {stage: (order[i - 1] if i else None) for i, stage in enumerate(order)}
        self._redo: tuple[str, set] | None = None  # while a stage is brought up to date: (unit, values) it redoes

    def fingerprint(self, stage: str, input_dir: Path | None) -> str:
        upstream = self.store.marker(input_dir).fingerprint if input_dir is not None else ""
        return digest(stage, self.cfg.stage_hash(stage), STAGES[stage].outside(getattr(self.cfg, stage)), upstream)

    def _dirs(self, stage: str, input_dir, output_dir) -> tuple[Path | None, Path]:
        if stage not in self.upstream:
            raise ValueError(f"stage {stage!r} is not in this config's pipeline {list(self.upstream)}")
        up = self.upstream[stage]
        input_dir = Path(input_dir) if input_dir else (self.store.path(up) if up else None)
        return input_dir, Path(output_dir) if output_dir else self.store.path(stage)

    def run_stage(self, stage: str, input_dir: str | Path | None = None, output_dir: str | Path | None = None) -> StageMarker:
        """Run one stage unless complete; returns its marker (with row counts by status)."""
        with self._storage_errors(stage):
            return self._run_stage(stage, input_dir, output_dir)

    @contextmanager
    def _storage_errors(self, doing: str):
        """The machine's own storage failing anywhere under the run (a full disk while writing a
        table, a Ray task's part) ends it as `StorageFailed`: one line that says where and how much."""
        try:
            yield
        except StorageFailed:
            raise
        except Exception as exc:
            if (error := local_io_error(exc)) is None:
                raise
            raise StorageFailed.of_error(doing, error, self.run_dir, self.expected_bytes()) from exc

    def expected_bytes(self) -> float | None:
        """What the whole run writes, estimated from its input video (`pipelines.disk`)."""
        listed = self.store.completed(VIDEO_SOURCE)
        video_s = listed.cost.get("video_s") if listed else None
        return written_per_video_hour(self.cfg) * video_s / 3600 if video_s else None

    def _run_stage(self, stage: str, input_dir, output_dir) -> StageMarker:
        input_dir, output_dir = self._dirs(stage, input_dir, output_dir)
        upstream = self.store.marker(input_dir) if input_dir is not None else None
        if input_dir is not None and upstream is None:
            raise FileNotFoundError(f"{stage} needs a completed {self.upstream[stage]} stage at {input_dir} (not complete)")
        spec = STAGES[stage]
        fingerprint = self.fingerprint(stage, input_dir)
        input_revision = upstream.revision if upstream else ""
        previous = self.store.marker(output_dir)
        same = previous is not None and previous.fingerprint == fingerprint
        old = self.store.table(output_dir, stage).to_pylist() if same else []
        retry = self.retryable(old)
        if same and previous.input_revision == input_revision and not retry:
            log.info("%s: complete, skipped (%s)", stage, output_dir)
            return previous
        started = time.monotonic()
        with CpuMeter() as meter:
            self._redo, keep = self._plan_redo(spec, input_dir, old, retry)
            if old:
                log.info("%s: retrying %d transiently failed rows; %d rows kept from the last run", stage, len(retry), len(keep))
            tmp = self.store.begin(output_dir)
            ctx = self.context(spec, input_dir, tmp)
            try:
                fields = self._run(spec, input_dir, ctx)
            finally:
                self._redo = None
            done = self.store.table(tmp, stage)
            table = self._merged(spec, ctx, keep, done, old) if old or spec.decides_over_run else done
        statuses = table.column("status").to_pylist()
        seconds = round(time.monotonic() - started, 2)
        marker = StageMarker(
            stage=stage,
            fingerprint=fingerprint,
            input_revision=input_revision,
            revision=digest(input_revision, *_kept_keys(table, spec.key)),
            rows=table.num_rows,
            rows_done=done.num_rows,
            counts={s: statuses.count(s) for s in sorted(set(statuses))},
            transient_failed=sum(bool(t) for t in table.column("transient").to_pylist()),
            seconds=seconds,
            cost=self._cost(spec, input_dir, done, seconds, meter.seconds),
            fields={**spec.measure(done), **fields},
        )
        self.store.commit(tmp, output_dir, marker)
        log.info("%s", marker.describe())
        self._stop_on_local_storage(spec, done)
        return marker

    def context(self, spec: Stage, input_dir: Path | None, output: Path) -> StageContext:
        """What the stage's work gets: its section, the sections it declared, the run's facts, the
        executor and its view of the run directory (tables beside its input)."""
        order = self.cfg.pipeline()
        passed = order[: order.index(self.store.marker(input_dir).stage) + 1] if input_dir is not None else ()
        facts = RunFacts(self.run_dir, self.cfg.inputs, self.cfg.profile, tuple(passed), frame_needs(self.cfg))
        tables = (lambda name: self.store.table(input_dir.parent / name, name)) if input_dir is not None else _no_tables
        return StageContext(
            name=spec.name,
            config=getattr(self.cfg, spec.name),
            sections={name: getattr(self.cfg, name) for name in spec.sections},
            run=facts,
            executor=self.executor,
            store=StageView(output=output, media=output.parent / "media", tables=tables),
        )

    def _stop_on_local_storage(self, spec: Stage, done: pa.Table) -> None:
        """Rows this run failed on the machine's own storage (a full disk) are kept as transient
        failures, which the next run retries; the run stops here, with one line that says where."""
        failures = [r for r in done.select(["status", "reason"]).to_pylist() if r["status"] == FAILED and failed_on_local_io(r["reason"])]
        if failures:
            raise StorageFailed.of_rows(spec.name, failures, len(done), self.run_dir, self.expected_bytes())

    def _cost(self, spec: Stage, input_dir: Path | None, done: pa.Table, seconds: float, cpu_s: float) -> dict:
        """This run's cost for the marker: the video its rows cover, CPU-seconds of the process
        tree, GPU-seconds held (GPUs per actor x actors x wall time) by a stage of model actors."""
        resources = getattr(self.cfg, spec.name).resources if spec.is_actor else None
        gpus = resources.num_gpus * (resources.concurrency or 1) if resources else 0.0
        return cost_fields(seconds, cpu_s, gpus * seconds, self._video_seconds(spec, input_dir, done), self.executor.remote)

    def _video_seconds(self, spec: Stage, input_dir: Path | None, done: pa.Table) -> float | None:
        """Seconds of video behind the rows a run computed: the listed videos' durations for a
        video's rows, the clip spans for a clip's; None where those tables are not beside the input."""
        try:
            if spec.reads == "inputs":
                return sum(d for d in done.column("duration_s").to_pylist() if d)
            wanted = set(done.column("video_id" if spec.reads == "videos" else "clip_id").to_pylist())
            if spec.reads == "videos":
                videos = self.store.table(input_dir).select(["video_id", "duration_s"]).to_pylist()
                return sum(v["duration_s"] or 0.0 for v in videos if v["video_id"] in wanted)
            spans = self.store.table(input_dir.parent / CLIP_SOURCE, CLIP_SOURCE).select(["clip_id", "start_s", "end_s"]).to_pylist()
            return sum(c["end_s"] - c["start_s"] for c in spans if c["clip_id"] in wanted)
        except (FileNotFoundError, KeyError, AttributeError):
            return None

    def markers(self) -> list[StageMarker]:
        """The markers of this config's completed stages, in pipeline order."""
        return [m for stage in self.cfg.pipeline() if (m := self.store.completed(stage))]

    def retryable(self, rows: list[dict]) -> list[dict]:
        """Rows a re-run re-attempts: failed transiently and tried fewer than `max_tries` times."""
        return [r for r in rows if retry_due(r, self.cfg.failures)]

    def _plan_redo(self, spec: Stage, input_dir: Path | None, old: list[dict], retry: list[dict]) -> tuple[tuple | None, list[dict]]:
        """What an update of a completed stage computes: (unit column, its values) or None for
        everything; and the old rows kept as they are."""
        unit, key = spec.redo_unit, spec.key
        if not old or unit is None:
            return None, []
        if input_dir is None:  # the stage reading inputs: those the first run listed
            expected = {r[key]: r[unit] for r in old}
        else:
            upstream = self.store.kept(input_dir)
            by = key if key in upstream.column_names else unit  # the clip source: its input has videos, not clips
            expected = dict(zip(upstream.column(by).to_pylist(), upstream.column(unit).to_pylist()))
            key = by
        present = {r[key]: r[unit] for r in old}
        changed = expected.keys() ^ present.keys()
        redo = {expected.get(k, present.get(k)) for k in changed} | {r[unit] for r in retry}
        keep = [r for r in old if r[unit] not in redo and r[key] in expected]
        return (unit, redo), keep

    def _merged(self, spec: Stage, ctx: StageContext, keep: list[dict], done: pa.Table, old: list[dict]) -> pa.Table:
        """The stage's table after an update: kept old rows plus this run's rows, which count
        their tries; a stage that decides over the whole run (quality's corpus percentiles, probe's
        same-bytes inputs) then decides over all of them."""
        key = spec.key
        before = {r[key]: r for r in old}
        rows = done.to_pylist()
        for row in rows:
            last = before.get(row[key])
            row["tries"] = (last["tries"] or 1) + 1 if last and last["status"] == FAILED else 1
        rows = spec.finalize(rows + keep, ctx)
        for part in ctx.store.output.glob("*.parquet"):
            part.unlink()
        write_rows(ctx.store.output, sorted(rows, key=lambda r: r[key]), spec.table)
        return self.store.table(ctx.store.output, spec.name)

    def _selected(self, rows: list[dict]) -> list[dict]:
        """The rows this run computes (all, or the units an update redoes)."""
        if self._redo is None:
            return rows
        unit, values = self._redo
        return [r for r in rows if r[unit] in values]

    def _run(self, spec: Stage, input_dir: Path | None, ctx: StageContext) -> dict:
        """Any stage, from its declaration: its input rows -> whole-run prepare -> the columns it
        reads -> the executor (its batches, or its whole-run work); Parquet into its output.
        Returns the fields its marker adds."""
        spec.check(ctx)
        rows = spec.project(spec.prepare(self._input_rows(spec, input_dir), ctx))
        if swept := sweep_parts(ctx.store.media):  # before any of this stage's writers starts
            log.info("%s: removed %d unfinished media files a killed run left", spec.name, swept)
        return self.executor.run(spec, rows, ctx)

    def _input_rows(self, spec: Stage, input_dir: Path | None) -> list[dict]:
        """What the stage reads (`Stage.reads`), narrowed to the units an update redoes."""
        if spec.reads == "inputs":
            listed = self._selected([{"uri": uri} for uri in list_inputs(self.cfg.inputs)])
            if not listed and self._redo is None:
                raise FileNotFoundError(f"no input files found for {self.cfg.inputs!r}")
            return listed
        if spec.reads == "videos":
            return self._selected(self.store.kept(input_dir).to_pylist())
        return self._selected(self.store.clip_view(input_dir, self.cfg.pipeline()))

    def finish(self) -> dict:
        """Write the ledger; with shards: stats.json and the dataset card, then publish if asked and
        let stages remember what shipped. Over the failure budget, nothing is published or
        remembered and this raises FailureBudgetExceeded once everything else is written."""
        with self._storage_errors("finishing the run (ledger, stats, card)"):
            return self._finish()

    def _finish(self) -> dict:
        tables = {s: self.store.table(self.store.path(s), s) for s in self.cfg.pipeline() if self.store.completed(s)}
        ledger = build_ledger(tables)
        write_atomically(self.run_dir / "ledger.parquet", ledger)
        write_atomically(self.run_dir / RUN_CONFIG, self.cfg.model_dump_json(indent=1))  # what made it: for `vidcurate audit`
        shipped = self.store.completed(SHIPPER)
        stats = summarize(ledger, shipped.fields.get("shards", []) if shipped else [])
        stats["failure_budget"] = over_budget(tables, stats, self.cfg.failures)
        if (self.run_dir / AUDIT).is_file():
            stats["audit"] = json.loads((self.run_dir / AUDIT).read_text())
        if shipped:
            dataset = self.dataset()
            stats["content"] = content_stats(dataset, tables, self.cfg)
            write_atomically(dataset / "stats.json", json.dumps(stats, indent=2, sort_keys=True))
            write_atomically(dataset / "README.md", dataset_card(stats, self.cfg))
        if stats["failure_budget"]:
            raise FailureBudgetExceeded.of_run(self.run_dir, stats, pending_retries(ledger, self.cfg.failures))
        if shipped:
            output = getattr(self.cfg, SHIPPER).output
            if output:
                group_of = partition_of if self.cfg.partitions.videos else None  # partitions publish apart
                stats["published"] = publish(dataset, output, group_of=group_of)
                log.info("published %d shards to %s", len(stats["shards"]), output)
            self._remember_shipped()
        return stats

    def dataset(self) -> Path:
        """The dataset folder trainers read (the shipping stage's)."""
        return self.store.path(SHIPPER) / STAGES[SHIPPER].ships

    def _remember_shipped(self) -> None:
        """Stages that remember shipped clips across runs (dedup's history) record this run's."""
        shipped_table = self.store.table(self.store.path(SHIPPER), SHIPPER)
        shipped = set(shipped_table.filter((pc.field("status") == KEPT) & (pc.field("entity") == "clip")).column("clip_id").to_pylist())
        for stage in self.cfg.pipeline():
            if (memory := STAGES[stage].memory) is not None:
                rows = [r for r in self.store.clip_view(self.store.path(stage), self.cfg.pipeline()) if r["clip_id"] in shipped]
                memory.record(getattr(self.cfg, stage), self.run_dir, rows)

    def check_stages(self) -> None:
        """What every stage of the run needs before it starts (`Stage.check`: an eval set that is
        missing, a detector not installed), checked before the first does any work."""
        order = self.cfg.pipeline()
        for stage in order:
            spec = STAGES[stage]
            facts = RunFacts(self.run_dir, self.cfg.inputs, self.cfg.profile, order[: order.index(stage)], frame_needs(self.cfg))
            spec.check(StageContext(stage, getattr(self.cfg, stage), {n: getattr(self.cfg, n) for n in spec.sections}, facts, self.executor))

    def run_all(self) -> dict:
        """Every stage, then the ledger; in partitions where the config asks (pipelines/partitions.py)."""
        self.check_stages()
        for step in steps(self.cfg):
            if step is PARTITIONS:
                PartitionedRun(self.cfg, Runner).run()
            else:
                self.run_stage(step)
        return self.finish()


RUN_CONFIG = "run_config.json"
AUDIT = "audit.json"  # `vidcurate audit`'s figures (pipelines/audit.py)
PARTITIONS = "partitions"  # the step that runs every stage after the inputs' in partitions


def steps(cfg) -> list[str]:
    """The run's steps in order: each stage, or with `partitions.videos` the stages reading the
    inputs and then the partitions (everything after them, partition by partition)."""
    order = list(cfg.pipeline())
    if not cfg.partitions.videos:
        return order
    head = [s for s in order if STAGES[s].reads == "inputs"]
    return [*head, PARTITIONS]


def _no_tables(name: str) -> pa.Table:
    raise FileNotFoundError(f"the stage reading the inputs has no earlier stage's table to read ({name})")


def _kept_keys(table: pa.Table, key: str) -> list[str]:
    return sorted(k for k, s in zip(table.column(key).to_pylist(), table.column("status").to_pylist()) if s == KEPT)

