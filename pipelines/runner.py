"""Runs stages on Ray Data, each into its own directory, published atomically with a marker.

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
from vidcurate.pipelines.executors import map_in_process, map_on_ray
from vidcurate.pipelines.ledger import build_ledger, pending_retries, retry_due, summarize
from vidcurate.schemas.readers import INDEX
from vidcurate.schemas.tables import CLIPS, FAILED, KEPT, SHARDED, STATUS_COLUMNS, TABLES, VIDEOS, to_table
from vidcurate.stages import probe, shard, split
from vidcurate.stages.contract import ClipStage
from vidcurate.stages.media import list_inputs
from vidcurate.stages.publish import publish
from vidcurate.stages.registry import MAPPED, frame_needs

log = logging.getLogger("vidcurate")

ALL_STAGES = tuple(TABLES)  # every stage a run directory can hold, in pipeline order
ROW_KEY = {stage: "uri" if stage == "probe" else "clip_id" for stage in ALL_STAGES}
# The rows a stage redoes together: split and ground rows depend on their video's other rows.
# Stages absent here (dedup, shard) decide over the whole run and are redone whole.
REDO_UNIT = {"probe": "uri", "split": "video_id", **{name: spec.redo_unit for name, spec in MAPPED.items()}}
MARKER = "_SUCCESS.json"
DATASET = "dataset"  # inside the shard stage directory: what trainers read


def ensure_ray(cfg: PipelineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local": a fresh local Ray even where `ray start` left a cluster behind; join one by address.
    kwargs = {"address": cfg.ray.address} if cfg.ray.address else {"address": "local", "num_cpus": cfg.ray.num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = True


def read_stage_table(stage_dir: Path, stage: str) -> pa.Table:
    """The stage's Parquet parts (other files, such as shards, may sit beside them)."""
    parts = sorted(str(p) for p in Path(stage_dir).glob("*.parquet"))
    return pa.dataset.dataset(parts, format="parquet", schema=TABLES[stage]).to_table()


def read_marker(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def describe_marker(marker: dict) -> str:
    """One log line per stage: rows by status, time, and throughput where the stage has one."""
    rate = f", {marker['frames']} frames at {marker['frames_per_s']} frames/s" if "frames_per_s" in marker else ""
    transient = f" ({marker['transient_failed']} transient)" if marker.get("transient_failed") else ""
    done = marker.get("rows_done", marker["rows"])
    redone = f"; {done} of them computed by its last run" if done != marker["rows"] else ""
    return f"{marker['stage']}: {marker['rows']} rows {marker['counts']}{transient} in {marker['seconds']} s{rate}{redone}{describe_cost(marker)}"


def _digest(*parts: str) -> str:
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
        return _digest(stage, self.cfg.stage_hash(stage), upstream)

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
                if stage in MAPPED:
                    extra = self._run_mapped(MAPPED[stage], input_dir, tmp)
                else:
                    extra = getattr(self, f"_run_{stage}")(input_dir, output_dir, tmp) or {}
            finally:
                self._redo = None
            done = read_stage_table(tmp, stage)
            whole_run = stage in MAPPED and MAPPED[stage].decides_over_run
            table = self._merged(stage, tmp, keep, done, old) if old or whole_run else done
        statuses = table.column("status").to_pylist()
        seconds = round(time.monotonic() - started, 2)
        marker = {
            "stage": stage,
            "fingerprint": fingerprint,
            "input_revision": input_revision,
            "revision": _digest(input_revision, *_kept_keys(table, ROW_KEY[stage])),
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
        try:
            if stage == "probe":
                return sum(d for d in done.column("duration_s").to_pylist() if d)
            wanted = set(done.column("video_id" if stage == "split" else "clip_id").to_pylist())
            if stage == "split":
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
        unit, key = REDO_UNIT.get(stage), ROW_KEY[stage]
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
        their tries; quality then decides over all of them (its rules use corpus percentiles)."""
        key = ROW_KEY[stage]
        before = {r[key]: r for r in old}
        rows = done.to_pylist()
        for row in rows:
            last = before.get(row[key])
            row["tries"] = (last["tries"] or 1) + 1 if last and last["status"] == FAILED else 1
        rows += keep
        if stage == "probe":  # a retried input may hold the same bytes as a kept one
            from vidcurate.stages.probe import mark_exact_duplicates

            rows = mark_exact_duplicates(rows)
        if stage in MAPPED:
            rows = MAPPED[stage].finalize(rows, self.cfg)
        for part in tmp.glob("*.parquet"):
            part.unlink()
        _write(tmp, sorted(rows, key=lambda r: r[key]), TABLES[stage])
        return read_stage_table(tmp, stage)

    def _selected(self, rows: list[dict]) -> list[dict]:
        """The rows this run computes (all, or the units an update redoes)."""
        if self._redo is None:
            return rows
        unit, values = self._redo
        return [r for r in rows if r[unit] in values]

    def _run_probe(self, _input_dir, _output_dir, tmp: Path) -> None:
        import ray

        if not self.cfg.inputs:
            raise ValueError("no inputs: set `inputs` in the config or pass --inputs")
        uris = [r["uri"] for r in self._selected([{"uri": u} for u in list_inputs(self.cfg.inputs)])]
        if not uris and self._redo is None:
            raise FileNotFoundError(f"no input files found for {self.cfg.inputs!r}")
        if not uris:
            return _write(tmp, [], VIDEOS)
        ensure_ray(self.cfg)
        ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=min(len(uris), 1000))
        root = self.cfg.inputs if Path(self.cfg.inputs).is_dir() else None
        ds = ds.map_batches(
            probe.probe_batch,
            fn_kwargs={"cfg": self.cfg.probe, "root": root},
            batch_format="pyarrow",
            **self.cfg.probe.resources.map_batches_args(),
        )
        rows = probe.mark_exact_duplicates(ds.take_all())
        _write(tmp, sorted(rows, key=lambda r: r["uri"]), VIDEOS)

    def _run_split(self, input_dir: Path, output_dir: Path, tmp: Path) -> None:
        import ray

        videos = read_stage_table(input_dir, "probe").filter(pc.field("status") == KEPT)
        if self._redo is not None:
            videos = videos.filter(pc.field("video_id").isin(sorted(self._redo[1])))
        media = output_dir.parent / "media"
        if videos.num_rows:
            ensure_ray(self.cfg)
            ds = ray.data.from_arrow(videos).repartition(videos.num_rows)
            ds = ds.map_batches(
                split.split_batch,
                fn_kwargs={"cfg": self.cfg.split, "media_dir": str(media), "needs": frame_needs(self.cfg)},
                batch_format="pyarrow",
                **self.cfg.split.resources.map_batches_args(),
            )
            ds.write_parquet(str(tmp))
        if not any(tmp.glob("*.parquet")):
            _write(tmp, [], CLIPS)

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

    def _run_mapped(self, spec: ClipStage, input_dir: Path, tmp: Path) -> dict:
        """Any clip stage, from its declaration: the clips its input kept -> whole-run prepare ->
        the columns it reads -> its map, on Ray Data, or in this process on a 1-CPU cluster (Ray
        Data's budget never grants one operator every CPU, so an actor would wait forever)."""
        import ray

        spec.check(self.cfg)
        rows = spec.project(spec.prepare(self.clip_view(input_dir), self.cfg))
        if rows:
            ensure_ray(self.cfg)
            if ray.cluster_resources().get("CPU", 0) < 2:
                pq.write_table(map_in_process(spec, rows, self.cfg), tmp / "part-000000.parquet")
            else:
                map_on_ray(spec, rows, self.cfg, tmp)
        if not any(tmp.glob("*.parquet")):
            _write(tmp, [], spec.table)
        return {}

    def _run_dedup(self, input_dir: Path, _output_dir, tmp: Path) -> dict:
        from vidcurate.stages import dedup

        cfg = self.cfg.dedup
        rows = self.clip_view(input_dir)
        clustered = dedup.clustered_pairs
        if len(rows) > cfg.flat_max:
            ensure_ray(self.cfg)
            clustered = dedup.ray_clustered_pairs
        history = dedup.load_history(cfg.history, dedup.run_id(self.run_dir))
        decided = dedup.dedup(rows, cfg, history, clustered)
        pq.write_table(dedup.dedup_table(decided), tmp / "part-000000.parquet")
        return {"history_clips": len(history)}

    def _run_shard(self, input_dir: Path, _output_dir, tmp: Path) -> dict:
        by_id = {c["clip_id"]: c for c in self.clip_view(input_dir)}
        videos = {v["video_id"]: v for v in read_stage_table(input_dir.parent / "probe", "probe").to_pylist()}
        ordered = [by_id[c] for c in shard.sample_order(by_id, self.cfg.shard.shuffle_seed)]
        dataset = tmp / DATASET
        upstream = read_marker(input_dir)["stage"]
        stages = list(self.cfg.pipeline()[: self.cfg.pipeline().index(upstream) + 1])  # those each clip passed
        rows, manifest = shard.write_shards(ordered, videos, dataset, self.cfg.shard, stages)
        _write(tmp, rows, SHARDED)
        extra = {}
        if "ground" in stages:
            shipped = [by_id[r["clip_id"]] for r in rows if r["status"] == KEPT]
            window_manifest, extra = self._write_windows(shipped, videos, dataset, stages, tmp.parent / "media" / "windows")
            manifest += window_manifest
        (dataset / INDEX).write_text(json.dumps(shard.wids_index(manifest, self.cfg.shard.prefix), indent=1))
        return {"shards": manifest, **extra}

    def _write_windows(self, shipped: list[dict], videos: dict, dataset: Path, stages: list[str], media_dir: Path) -> tuple[list, dict]:
        """Window samples over contiguous shipped clips, each with its own media cut (on Ray)
        from its clips; a window that cannot be cut is left out and counted with its reason."""
        import ray

        from vidcurate.stages.ground import windows
        from vidcurate.stages.window_media import cut_windows_batch

        video_windows = windows(shipped, self.cfg.ground.max_window_s)
        if not video_windows:
            return [], {"windows": 0}
        clip_uri = {c["clip_id"]: c["clip_uri"] for c in shipped}
        jobs = [
            {
                "window_id": w["window_id"],
                "clip_uris": [clip_uri[c["key"]] for c in w["clips"]],
                "frames": w["end_frame"] - w["start_frame"],
                "fps": videos[w["video_id"]]["fps"],
            }
            for w in video_windows
        ]
        ensure_ray(self.cfg)
        ds = ray.data.from_arrow(pa.Table.from_pylist(jobs)).repartition(len(jobs))
        kwargs = {"cfg": self.cfg.split, "media_dir": str(media_dir)}
        cut = ds.map_batches(cut_windows_batch, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=1, num_cpus=1)
        media = {m["window_id"]: m for m in cut.take_all()}
        failed = {k: m["error"] for k, m in sorted(media.items()) if m["error"]}
        for window_id, error in failed.items():
            log.warning("window %s left out: %s", window_id, error)
        ok = {w["window_id"]: w for w in video_windows if w["window_id"] not in failed}
        ordered = [ok[i] for i in shard.sample_order(ok, self.cfg.shard.shuffle_seed)]
        rows, manifest = shard.write_window_shards(ordered, media, videos, dataset, self.cfg.shard, stages)
        failed.update({r["clip_id"]: r["reason"] for r in rows if r["status"] != KEPT})
        return manifest, {"windows": sum(r["status"] == KEPT for r in rows), "windows_failed": failed}

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
                stats["published"] = publish(dataset, self.cfg.shard.output)
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

    def run_all(self, on_stage: Callable[[str], None] | None = None) -> dict:
        for stage in self.cfg.pipeline():
            if on_stage:
                on_stage(stage)
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
    breaches = []
    for stage, table in tables.items():
        failed = pc.sum(pc.equal(table.column("status"), FAILED)).as_py() or 0
        if table.num_rows and failed / table.num_rows > failures.budget(stage):
            breaches.append(f"{stage}: {failed}/{table.num_rows} rows failed > {failures.budget(stage):g}")
    for entity in ("videos", "clips"):
        s = stats[entity]
        if s["total"] and s["failed"] / s["total"] > failures.max_failed_fraction:
            breaches.append(f"{entity}: {s['failed']}/{s['total']} failed > {failures.max_failed_fraction:g}")
    return breaches


def _kept_keys(table: pa.Table, key: str) -> list[str]:
    return sorted(k for k, s in zip(table.column(key).to_pylist(), table.column("status").to_pylist()) if s == KEPT)


def _write(directory: Path, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(to_table(rows, schema), directory / "part-000000.parquet")
