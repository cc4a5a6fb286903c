"""Runs stages on Ray (tasks and model actors), each into its own directory, published atomically with a marker.

Layout of a run directory:
    probe/   videos table        split/  clips table        media/clips/<clip_id>.mp4
                                                            media/frames/<clip_id>.npz (decode once)
    caption/ ground/ embed/ quality/ dedup/   optional clip stages (config `stages`), each a
             table keyed by clip_id holding the clips its upstream stage kept
    shard/   per-clip shard table; dataset/: <prefix>-NNNNNN.tar with a .parquet sidecar each,
             index.json (wids), stats.json, README.md (dataset card)
    ledger.parquet                 one final status per input video and per clip

A stage directory appears only when its work is complete (written as `<stage>.tmp`, then
renamed) and carries `_SUCCESS.json` with a fingerprint of its config (chained through its
upstream stages' configs) and the `revision` (the kept rows) of the input it read. A re-run
skips a stage whose fingerprint and input revision match and that holds no row to retry, and
redoes it whole (and so everything after it) when its settings changed. Otherwise it is
brought up to date row by row: rows that failed transiently (under `failures.max_tries`) and
rows its input gained are redone, in units that keep the output equal to an uninterrupted
run's (a video for split and ground, whose rows depend on their siblings; the whole table for
dedup and shard), and every other row is kept as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # noqa: F401 - makes pa.dataset available
import pyarrow.parquet as pq

from vidcurate.pipelines.card import content_stats, dataset_card
from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.cost import CpuMeter, cost_fields, describe_cost
from vidcurate.pipelines.executors import map_on_ray, map_on_ray_tasks, write_in_process
from vidcurate.pipelines.ledger import build_ledger, pending_retries, retry_due, summarize
from vidcurate.schemas.tables import FAILED, KEPT, STATUS_COLUMNS, to_table
from vidcurate.stages.contract import Place, Stage, map_here
from vidcurate.stages.media import list_inputs, sweep_parts
from vidcurate.stages.publish import publish
from vidcurate.stages.registry import STAGES, frame_needs
from vidcurate.stages.shard import DATASET, partition_of

log = logging.getLogger("vidcurate")

ALL_STAGES = tuple(STAGES)  # every stage a run directory can hold, in pipeline order
MARKER = "_SUCCESS.json"


def ensure_ray(cfg: PipelineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local": a fresh local Ray even where `ray start` left a cluster behind; join one by address.
    kwargs = {"address": cfg.ray.address} if cfg.ray.address else {"address": "local", "num_cpus": cfg.ray.num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)


def read_stage_table(stage_dir: Path, stage: str) -> pa.Table:
    """The stage's Parquet parts (other files, such as shards, may sit beside them)."""
    parts = sorted(str(p) for p in Path(stage_dir).glob("*.parquet"))
    return pa.dataset.dataset(parts, format="parquet", schema=STAGES[stage].table).to_table()


def read_marker(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def describe_marker(marker: dict) -> str:
    """One log line per stage: rows by status, time, and throughput where the stage has one."""
    rate = f", {marker['frames']} frames at {marker['frames_per_s']} frames/s" if "frames_per_s" in marker else ""
    transient = f" ({marker['transient_failed']} transient)" if marker.get("transient_failed") else ""
    done = marker.get("rows_done", marker["rows"])
    redone = f"; {done} of them computed by its last run" if done != marker["rows"] else ""
    parts = f"; {marker['partitions']} partitions, first shards after {marker['first_shard_s']} s of {marker['wall_s']} s" if "partitions" in marker else ""
    return f"{marker['stage']}: {marker['rows']} rows {marker['counts']}{transient} in {marker['seconds']} s{rate}{redone}{parts}{describe_cost(marker)}"


def digest(*parts: str) -> str:
    """A short stable hash of strings: fingerprints and revisions."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class Runner:
    """Executes stages of one run directory; every stage can also run alone on explicit dirs."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        order = cfg.pipeline()
        self.upstream = {stage: (order[i - 1] if i else None) for i, stage in enumerate(order)}
        self._redo: tuple[str, set] | None = None  # while a stage is brought up to date: (unit, values) it redoes

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def fingerprint(self, stage: str, input_dir: Path | None) -> str:
        upstream = read_marker(input_dir)["fingerprint"] if input_dir is not None else ""
        return digest(stage, self.cfg.stage_hash(stage), upstream)

    def _dirs(self, stage: str, input_dir, output_dir) -> tuple[Path | None, Path]:
        if stage not in self.upstream:
            raise ValueError(f"stage {stage!r} is not in this config's pipeline {list(self.upstream)}")
        up = self.upstream[stage]
        input_dir = Path(input_dir) if input_dir else (self.stage_dir(up) if up else None)
        return input_dir, Path(output_dir) if output_dir else self.stage_dir(stage)

    def run_stage(self, stage: str, input_dir: str | Path | None = None, output_dir: str | Path | None = None) -> dict:
        """Run one stage unless complete; returns its marker (with row counts by status)."""
        input_dir, output_dir = self._dirs(stage, input_dir, output_dir)
        if input_dir is not None and read_marker(input_dir) is None:
            raise FileNotFoundError(f"{stage} needs a completed {self.upstream[stage]} stage at {input_dir} (no {MARKER})")
        fingerprint = self.fingerprint(stage, input_dir)
        input_revision = read_marker(input_dir)["revision"] if input_dir is not None else ""
        previous = read_marker(output_dir)
        same = previous is not None and previous["fingerprint"] == fingerprint
        old = read_stage_table(output_dir, stage).to_pylist() if same else []
        retry = self.retryable(old)
        if same and previous.get("input_revision") == input_revision and not retry:
            log.info("%s: complete, skipped (%s)", stage, output_dir)
            return previous
        started = time.monotonic()
        with CpuMeter() as meter:
            self._redo, keep = self._plan_redo(stage, input_dir, old, retry)
            if old:
                log.info("%s: retrying %d transiently failed rows; %d rows kept from the last run", stage, len(retry), len(keep))
            tmp = output_dir.with_name(output_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                extra = self._run(STAGES[stage], input_dir, tmp)
            finally:
                self._redo = None
            done = read_stage_table(tmp, stage)
            table = self._merged(stage, tmp, keep, done, old) if old or STAGES[stage].decides_over_run else done
        statuses = table.column("status").to_pylist()
        seconds = round(time.monotonic() - started, 2)
        marker = {
            "stage": stage,
            "fingerprint": fingerprint,
            "input_revision": input_revision,
            "revision": digest(input_revision, *_kept_keys(table, STAGES[stage].key)),
            "rows": table.num_rows,
            "rows_done": done.num_rows,
            "counts": {s: statuses.count(s) for s in sorted(set(statuses))},
            "transient_failed": sum(bool(t) for t in table.column("transient").to_pylist()),
            "seconds": seconds,
            **self._cost(stage, input_dir, done, seconds, meter.seconds),
            **extra,
        }
        if "start_frame" in done.column_names:  # a table of frame spans: report throughput of this run's work
            spans = pc.subtract(done.column("end_frame"), done.column("start_frame"))
            marker["frames"] = pc.sum(spans).as_py() or 0
            marker["frames_per_s"] = round(marker["frames"] / max(marker["seconds"], 1e-3), 1)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(tmp, output_dir)
        log.info("%s", describe_marker(marker))
        return marker

    def _cost(self, stage: str, input_dir: Path | None, done: pa.Table, seconds: float, cpu_s: float) -> dict:
        """This run's cost for the marker: the video its rows cover, CPU-seconds of the process
        tree, GPU-seconds held (GPUs per actor x actors x wall time)."""
        resources = getattr(getattr(self.cfg, stage, None), "resources", None)
        gpus = resources.num_gpus * (resources.concurrency or 1) if resources else 0.0
        remote = self.cfg.ray.address is not None
        return cost_fields(seconds, cpu_s, gpus * seconds, self._video_seconds(stage, input_dir, done), remote)

    @staticmethod
    def _video_seconds(stage: str, input_dir: Path | None, done: pa.Table) -> float | None:
        """Seconds of video behind the rows a run computed: probe's durations for a video's rows,
        split's spans for a clip's; None where those tables are not beside the input."""
        reads = STAGES[stage].reads
        try:
            if reads == "inputs":
                return sum(d for d in done.column("duration_s").to_pylist() if d)
            wanted = set(done.column("video_id" if reads == "videos" else "clip_id").to_pylist())
            if reads == "videos":
                videos = read_stage_table(input_dir, "probe").select(["video_id", "duration_s"]).to_pylist()
                return sum(v["duration_s"] or 0.0 for v in videos if v["video_id"] in wanted)
            spans = read_stage_table(input_dir.parent / "split", "split").select(["clip_id", "start_s", "end_s"]).to_pylist()
            return sum(c["end_s"] - c["start_s"] for c in spans if c["clip_id"] in wanted)
        except (FileNotFoundError, KeyError):
            return None

    def markers(self) -> list[dict]:
        """The markers of this config's completed stages, in pipeline order."""
        return [m for stage in self.cfg.pipeline() if (m := read_marker(self.stage_dir(stage)))]

    def retryable(self, rows: list[dict]) -> list[dict]:
        """Rows a re-run re-attempts: failed transiently and tried fewer than `max_tries` times."""
        return [r for r in rows if retry_due(r, self.cfg.failures)]

    def _plan_redo(self, stage: str, input_dir: Path | None, old: list[dict], retry: list[dict]) -> tuple[tuple | None, list[dict]]:
        """What an update of a completed stage computes: (unit column, its values) or None for
        everything; and the old rows kept as they are."""
        unit, key = STAGES[stage].redo_unit, STAGES[stage].key
        if not old or unit is None:
            return None, []
        if input_dir is None:  # probe: the inputs listed by the first run
            expected = {r[key]: r[unit] for r in old}
        else:
            upstream = read_stage_table(input_dir, read_marker(input_dir)["stage"]).filter(pc.field("status") == KEPT)
            by = key if key in upstream.column_names else unit  # split: its input has videos, not clips
            expected = dict(zip(upstream.column(by).to_pylist(), upstream.column(unit).to_pylist()))
            key = by
        present = {r[key]: r[unit] for r in old}
        changed = expected.keys() ^ present.keys()
        redo = {expected.get(k, present.get(k)) for k in changed} | {r[unit] for r in retry}
        keep = [r for r in old if r[unit] not in redo and r[key] in expected]
        return (unit, redo), keep

    def _merged(self, stage: str, tmp: Path, keep: list[dict], done: pa.Table, old: list[dict]) -> pa.Table:
        """The stage's table after an update: kept old rows plus this run's rows, which count
        their tries; a stage that decides over the whole run (quality's corpus percentiles, probe's
        same-bytes inputs) then decides over all of them."""
        spec = STAGES[stage]
        key = spec.key
        before = {r[key]: r for r in old}
        rows = done.to_pylist()
        for row in rows:
            last = before.get(row[key])
            row["tries"] = (last["tries"] or 1) + 1 if last and last["status"] == FAILED else 1
        rows = spec.finalize(rows + keep, self.cfg)
        for part in tmp.glob("*.parquet"):
            part.unlink()
        _write(tmp, sorted(rows, key=lambda r: r[key]), spec.table)
        return read_stage_table(tmp, stage)

    def _selected(self, rows: list[dict]) -> list[dict]:
        """The rows this run computes (all, or the units an update redoes)."""
        if self._redo is None:
            return rows
        unit, values = self._redo
        return [r for r in rows if r[unit] in values]

    def _run(self, spec: Stage, input_dir: Path | None, tmp: Path) -> dict:
        """Any stage, from its declaration: its input rows -> whole-run prepare -> the columns it
        reads -> its map on the executor, or its whole-run work; Parquet into `tmp`. Returns
        what its marker adds."""
        spec.check(self.cfg)
        rows = spec.project(spec.prepare(self._input_rows(spec, input_dir), self.cfg))
        place = self._place(input_dir, tmp)
        if swept := sweep_parts(place.media):  # before any of this stage's writers starts
            log.info("%s: removed %d unfinished media files a killed run left", spec.name, swept)
        extra: dict = {}
        if spec.whole is not None:
            rows, extra = spec.whole(rows, self.cfg, place)
            _write(tmp, rows, spec.table)
        elif rows:
            self._map(spec, rows, place)
        if not any(tmp.glob("*.parquet")):
            _write(tmp, [], spec.table)
        return extra

    def _input_rows(self, spec: Stage, input_dir: Path | None) -> list[dict]:
        """What the stage reads (`Stage.reads`), narrowed to the units an update redoes."""
        if spec.reads == "inputs":
            listed = self._selected([{"uri": uri} for uri in list_inputs(self.cfg.inputs)])
            if not listed and self._redo is None:
                raise FileNotFoundError(f"no input files found for {self.cfg.inputs!r}")
            return listed
        if spec.reads == "videos":
            videos = read_stage_table(input_dir, read_marker(input_dir)["stage"]).filter(pc.field("status") == KEPT)
            return self._selected(videos.to_pylist())
        return self.clip_view(input_dir)

    def _place(self, input_dir: Path | None, tmp: Path) -> Place:
        order = self.cfg.pipeline()
        passed = order[: order.index(read_marker(input_dir)["stage"]) + 1] if input_dir is not None else ()
        return Place(
            run_dir=self.run_dir,
            output=tmp,
            passed=tuple(passed),
            frame_needs=frame_needs(self.cfg),
            map=self._parallel_map,
            table=lambda name: read_stage_table(input_dir.parent / name, name),
        )

    def _map(self, spec: Stage, rows: list[dict], place: Place) -> None:
        """A stage's batches on Ray (tasks, or the stage's actors); in this process with
        `executor: in_process`."""
        if self.cfg.executor == "ray":
            ensure_ray(self.cfg)
            return map_on_ray(spec, rows, self.cfg, place)
        write_in_process(spec, rows, self.cfg, place)

    def _parallel_map(self, fn: Callable, items: list, **shared) -> list:
        """Whole-run work's parallel map (`Place.map`): Ray tasks, or this process."""
        if self.cfg.executor == "in_process" or not items:
            return map_here(fn, items, **shared)
        ensure_ray(self.cfg)
        return map_on_ray_tasks(fn, items, **shared)

    def clip_view(self, input_dir: Path) -> list[dict]:
        """Clips kept by the stage in `input_dir`, each row merged with the columns of split and
        of every clip stage before it (sibling directories of `input_dir`), sorted by clip id."""
        upstream = read_marker(input_dir)["stage"]
        kept = set(read_stage_table(input_dir, upstream).filter(pc.field("status") == KEPT).column("clip_id").to_pylist())
        rows = {r["clip_id"]: r for r in read_stage_table(input_dir.parent / "split", "split").to_pylist() if r["clip_id"] in kept}
        order = self.cfg.pipeline()
        for stage in order[order.index("split") + 1 : order.index(upstream) + 1]:
            for extra in read_stage_table(input_dir.parent / stage, stage).to_pylist():
                if extra["clip_id"] in rows:
                    rows[extra["clip_id"]].update({k: v for k, v in extra.items() if k not in STATUS_COLUMNS})
        return self._selected([rows[c] for c in sorted(rows)])

    def finish(self) -> dict:
        """Write the ledger; with shards: stats.json and the dataset card, then publish if asked.
        Over the failure budget, nothing is published or recorded as shipped and this raises
        FailureBudgetExceeded once everything else is written."""
        tables = {s: read_stage_table(self.stage_dir(s), s) for s in self.cfg.pipeline() if read_marker(self.stage_dir(s))}
        ledger = build_ledger(tables)
        pq.write_table(ledger, self.run_dir / "ledger.parquet")
        shard_marker = read_marker(self.stage_dir("shard")) or {}
        stats = summarize(ledger, shard_marker.get("shards", []))
        stats["failure_budget"] = over_budget(tables, stats, self.cfg.failures)
        if shard_marker:
            dataset = self.stage_dir("shard") / DATASET
            stats["content"] = content_stats(dataset, tables, self.cfg)
            (dataset / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
            (dataset / "README.md").write_text(dataset_card(stats, self.cfg))
        if stats["failure_budget"]:
            raise FailureBudgetExceeded.of_run(self.run_dir, stats, pending_retries(ledger, self.cfg.failures))
        if shard_marker:
            if self.cfg.shard.output:
                group_of = partition_of if self.cfg.partitions.videos else None  # partitions publish apart
                stats["published"] = publish(dataset, self.cfg.shard.output, group_of=group_of)
                log.info("published %d shards to %s", len(stats["shards"]), self.cfg.shard.output)
            if "dedup" in self.cfg.stages and self.cfg.dedup.history:
                self._record_shipped()
        return stats

    def _record_shipped(self) -> None:
        """Add this run's shipped clips to the dedup history, so later runs never re-admit them."""
        from vidcurate.stages.dedup import append_history, run_id

        shipped = set(read_stage_table(self.stage_dir("shard"), "shard").filter(pc.field("status") == KEPT).column("clip_id").to_pylist())
        rows = [r for r in self.clip_view(self.stage_dir("dedup")) if r["clip_id"] in shipped]
        append_history(self.cfg.dedup.history, run_id(self.run_dir), rows)

    def run_all(self) -> dict:
        """Every stage, then the ledger; in partitions where the config asks (pipelines/partitions.py)."""
        if self.cfg.partitions.videos:
            from vidcurate.pipelines.partitions import PartitionedRun  # it builds on this module

            self.run_stage("probe")
            PartitionedRun(self.cfg).run()
        else:
            for stage in self.cfg.pipeline():
                self.run_stage(stage)
        return self.finish()


class FailureBudgetExceeded(RuntimeError):
    """More failed than `failures` allows. The run wrote its tables, ledger and local dataset;
    it published nothing. The message is one line: what failed, and whether a re-run retries it."""

    @classmethod
    def of_run(cls, run_dir: Path, stats: dict, retries: int) -> FailureBudgetExceeded:
        return cls(
            f"{run_dir}: over the failure budget ({'; '.join(stats['failure_budget'])}); "
            f"{retries} transient failures a re-run retries; nothing published"
        )


def over_budget(tables: dict[str, pa.Table], stats: dict, failures) -> list[str]:
    """Each stage whose failed rows, and each ledger entity whose failed share, exceed the budget."""
    breaches = stage_breaches(tables, failures)
    for entity in ("videos", "clips"):
        s = stats[entity]
        if s["total"] and s["failed"] / s["total"] > failures.max_failed_fraction:
            breaches.append(f"{entity}: {s['failed']}/{s['total']} failed > {failures.max_failed_fraction:g}")
    return breaches


def stage_breaches(tables: dict[str, pa.Table], failures) -> list[str]:
    """Each stage whose failed rows exceed its budget."""
    breaches = []
    for stage, table in tables.items():
        failed = pc.sum(pc.equal(table.column("status"), FAILED)).as_py() or 0
        if table.num_rows and failed / table.num_rows > failures.budget(stage):
            breaches.append(f"{stage}: {failed}/{table.num_rows} rows failed > {failures.budget(stage):g}")
    return breaches


def _kept_keys(table: pa.Table, key: str) -> list[str]:
    return sorted(k for k, s in zip(table.column(key).to_pylist(), table.column("status").to_pylist()) if s == KEPT)


def _write(directory: Path, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(to_table(rows, schema), directory / "part-000000.parquet")
