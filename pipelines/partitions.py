"""A corpus in partitions of videos: each partition runs every stage after the one reading the
inputs (split -> shard) as a run of its own and ships its shards as soon as it is done, while the
next partitions' stages run.

The stage reading the inputs (probe) runs once over every input (it is cheap and marks
same-bytes inputs across the corpus); its kept videos, in input order, are cut into partitions of
`partitions.videos`. Layout:

    <run>/probe/                     the corpus' probe, as in any run
    <run>/partitions/p00000/         a run directory: probe/ (its videos), split/ ... shard/,
                                     media/, ledger.parquet; its shards are <prefix>-p00000-*.tar
    <run>/partitions/history/p00000/ what its dedup checks against: the shared history
                                     (`dedup.history`) and the clips earlier partitions shipped
    <run>/partitions/dataset/        the shards of the partitions done so far, with their index
                                     (published after each partition when `shard.output` is set)
    <run>/<stage>/                   once all are done: each stage's rows of every partition,
                                     so the ledger, report, inspect and export read one run

Each stage takes the partitions in order, one at a time, and a partition's stage starts when
its previous stage is done: with `in_flight` 2, caption works on partition 1 while split cuts
partition 2. A stage that remembers shipped clips (`Stage.memory`: dedup) waits for the earlier
partitions to ship and gathers what they shipped, so a clip is never shipped twice; completion is
recorded per partition by the stage markers, and a re-run resumes there. This module names no
stage: it knows them by their declarations. Two decisions differ from a run in one
piece and say so in the docs: quality's percentile rules are resolved per partition, and of
two near-duplicates in different partitions the earlier partition's ships.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vidcurate.pipelines.cost import cost_fields
from vidcurate.pipelines.executors import cluster_capacity, ensure_ray, stage_cpus
from vidcurate.pipelines.ledger import stage_breaches
from vidcurate.pipelines.publish import partition_name, partition_of, publish
from vidcurate.pipelines.store import StageMarker, StageStore, digest, part_path, write_rows
from vidcurate.schemas.readers import INDEX
from vidcurate.schemas.tables import KEPT, to_table
from vidcurate.stages.contract import SubRun
from vidcurate.stages.media import link_or_copy
from vidcurate.stages.registry import SHIPPER, STAGES, VIDEO_SOURCE
from vidcurate.stages.shard import wids_index

log = logging.getLogger("vidcurate")

PARTITIONS = "partitions"


def plan(cfg) -> list[list[dict]]:
    """The kept videos in input order, cut into partitions of `partitions.videos`."""
    store = StageStore(cfg.run_dir)
    videos = store.kept(store.path(VIDEO_SOURCE)).to_pylist()
    size = cfg.partitions.videos
    return [videos[i : i + size] for i in range(0, len(videos), size)]


def sub_run(cfg, name: str) -> SubRun:
    root = Path(cfg.run_dir) / PARTITIONS
    return SubRun("partition", name, root / name, root)


def partition_config(cfg, name: str):
    """The partition's run: its own folder, each stage's section for a partition (shard names,
    no publishing of its own: the corpus publishes), and a failure budget it never breaks (the
    corpus' budget decides over all)."""
    failures = cfg.failures.model_copy(update={"max_failed_fraction": 1.0, "stage_max_failed_fraction": {}})
    return cfg.sub_run(sub_run(cfg, name), partitions=cfg.partitions.model_copy(update={"videos": 0}), failures=failures)


def write_partition_videos(top: Path, run_dir: Path, videos: list[dict]) -> None:
    """The partition's copy of the stage that read the inputs: its videos' rows under the corpus
    stage's fingerprint, so a change of that stage's settings redoes the partition; rewritten only
    when its videos changed."""
    store = StageStore(run_dir)
    corpus = store.marker(top)
    revision = digest(corpus.fingerprint, *(v["video_id"] for v in videos))
    target = store.path(VIDEO_SOURCE)
    if (store.marker(target) or StageMarker("", "", "", "", 0, {})).revision == revision:
        return
    tmp = store.begin(target)
    write_rows(tmp, videos, STAGES[VIDEO_SOURCE].table)
    marker = StageMarker(VIDEO_SOURCE, corpus.fingerprint, corpus.input_revision, revision, len(videos), {KEPT: len(videos)})
    store.commit(tmp, target, marker)


class ActorCpus:
    """Model stages running at once hold at most every CPU (their actors', and one for decode
    tasks apart): an actor that cannot start keeps its batches, and with stages of two partitions
    each waiting on CPUs the other holds, both would wait forever (see executors.check_stage_fits)."""

    def __init__(self, cpus: float):
        self.free = cpus
        self.held = 0.0
        self.cond = threading.Condition()

    @contextmanager
    def hold(self, need: float):
        with self.cond:  # actors larger than the budget run alone (their stage then says why they cannot)
            self.cond.wait_for(lambda: need <= self.free or self.held == 0)
            self.free -= need
            self.held += need
        try:
            yield
        finally:
            with self.cond:
                self.free += need
                self.held -= need
                self.cond.notify_all()


class PartitionedRun:
    """Runs a corpus' partitions through the stages after the inputs' as a pipeline (see the
    module); `make_runner(cfg)` gives the runner of a partition's run."""

    def __init__(self, cfg, make_runner):
        self.cfg = cfg
        self.make_runner = make_runner
        self.root = Path(cfg.run_dir) / PARTITIONS
        self.stages = tuple(s for s in cfg.pipeline() if STAGES[s].reads != "inputs")
        self.store = StageStore(cfg.run_dir)
        self.started = time.monotonic()
        self.first_shard_s: float | None = None
        self.shipped: list[str] = []  # partitions whose shards are in <run>/partitions/dataset
        self.tables: dict[str, pa.Table] = {}  # their stage tables, for the failure budget
        self._lock = threading.Lock()

    def run(self) -> dict:
        """Every partition, then the corpus' stage tables; returns the summary the shipping
        stage's marker adds."""
        partitions = plan(self.cfg)
        names = [partition_name(i) for i in range(len(partitions))]
        for name, videos in zip(names, partitions):
            write_partition_videos(self.store.path(VIDEO_SOURCE), self.root / name, videos)
        for stale in [*self.root.glob("p?????"), *self.root.glob("history/p?????")]:  # the corpus shrank
            if stale.name not in names:
                shutil.rmtree(stale)
        self._clear_dataset()
        self.count = len(names)
        self.done = {(n, s): threading.Event() for n in names for s in (*self.stages, "shipped")}
        self.failed: list[str] = []
        self.timeline: list[dict] = []  # when each partition's stages ran, from the partitions' start
        cpus, self.node_cpus = self._cluster_cpus()
        self.cpus = ActorCpus(cpus)
        log.info("%d partitions of up to %d videos, %d at once", len(names), self.cfg.partitions.videos, self.cfg.partitions.in_flight)
        with ThreadPoolExecutor(self.cfg.partitions.in_flight, thread_name_prefix="partition") as pool:
            futures = [pool.submit(self._partition, names, i) for i in range(len(names))]
            errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None and not isinstance(e, _Stopped)), None)
        if first is not None:
            raise first
        summary = {"partitions": len(names), "first_shard_s": self.first_shard_s, "wall_s": self._now(), "timeline": self.timeline}
        gather(self.cfg, names, self.stages, summary)
        return summary

    def _now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def _cluster_cpus(self) -> tuple[float, float]:
        """The cluster's CPUs and its largest node's (unbounded in process)."""
        if self.cfg.executor != "ray":
            return float("inf"), float("inf")
        ensure_ray(self.cfg)  # once, here: the partitions' threads share this driver's Ray
        capacity = cluster_capacity()
        return capacity.cpus, capacity.node_cpus

    def _partition(self, names: list[str], index: int) -> None:
        name = names[index]
        earlier = names[index - 1] if index else None
        try:
            cfg = partition_config(self.cfg, name)
            runner = self.make_runner(cfg)
            for stage in self.stages:
                memory = STAGES[stage].memory
                if earlier:  # each stage takes the partitions in order; one that remembers shipped clips waits for them
                    self._wait(earlier, "shipped" if memory else stage)
                if memory:
                    earlier_runs = [sub_run(self.cfg, n) for n in names[:index]]
                    memory.gather(getattr(cfg, stage), getattr(self.cfg, stage), sub_run(self.cfg, name), earlier_runs)
                with self.cpus.hold(self._actor_cpus(stage)):
                    began = self._now()
                    runner.run_stage(stage)
                    self.timeline.append({"partition": name, "stage": stage, "start_s": began, "end_s": self._now()})
                self.done[name, stage].set()
            if earlier:
                self._wait(earlier, "shipped")
            runner.finish()  # its ledger; the clips it shipped, for the later partitions
            self._ship(name)
        except BaseException:
            with self._lock:
                self.failed.append(name)
            raise
        finally:
            for key, event in self.done.items():  # release the later partitions, which stop
                if key[0] == name:
                    event.set()

    def _wait(self, name: str, step: str) -> None:
        self.done[name, step].wait()
        if name in self.failed:
            raise _Stopped(f"partition {name} failed")

    def _actor_cpus(self, stage: str) -> float:
        spec = STAGES[stage]
        if self.cfg.executor != "ray" or not spec.is_actor:
            return 0.0
        return stage_cpus(spec, getattr(self.cfg, stage).resources, self.node_cpus)

    def _clear_dataset(self) -> None:
        shutil.rmtree(self.root / DATASET, ignore_errors=True)
        (self.root / DATASET).mkdir(parents=True)

    def _ship(self, name: str) -> None:
        """The partition's shards join the dataset of the partitions done so far; published
        (only its new shards travel) while the stages' failed rows so far are within their budgets
        (the ledger's shares are judged at the end)."""
        with self._lock:
            self.shipped.append(name)
            part = StageStore(self.root / name)
            for stage in self.stages:
                table = part.table(part.path(stage), stage)
                self.tables[stage] = pa.concat_tables([self.tables[stage], table]) if stage in self.tables else table
            dataset = self.root / DATASET
            _add_shards(self.root / name, dataset)
            samples = _write_index(self.root, self.shipped, dataset, getattr(self.cfg, SHIPPER).prefix)
            log.info("partition %s shipped: %d partitions of %d done, %d samples so far, %.1f s", name, len(self.shipped), self.count, samples, self._now())
            if self.first_shard_s is None and samples:
                self.first_shard_s = self._now()
            output = getattr(self.cfg, SHIPPER).output
            if output and not stage_breaches(self.tables, self.cfg.failures):
                publish(dataset, output, group_of=partition_of)
                log.info("partition %s published to %s", name, output)


class _Stopped(RuntimeError):
    """A partition that stopped because an earlier one failed: the earlier error is the one raised."""


DATASET = STAGES[SHIPPER].ships  # the shipping stage's dataset folder; the partitions' joint one is named alike


def gather(cfg, names: list[str], stages: tuple[str, ...], summary: dict) -> None:
    """Each stage after the inputs' as one table over every partition, in partition order, under
    the corpus run directory, with a marker that combines the partitions' (fingerprints and
    revisions chained, counts and the stage's own fields as it declares); the shipping stage's
    dataset holds every partition's shards, and its marker the partitions' `summary`."""
    store, root = StageStore(cfg.run_dir), Path(cfg.run_dir) / PARTITIONS
    for stage in stages:
        parts = [StageStore(root / n) for n in names]
        markers = [p.completed(stage) for p in parts]
        tables = [p.table(p.path(stage), stage) for p in parts]
        table = pa.concat_tables(tables) if tables else to_table([], STAGES[stage].table)
        target = store.path(stage)
        tmp = store.begin(target)
        pq.write_table(table, part_path(tmp, 0))
        statuses = table.column("status").to_pylist()
        fields = _combined_fields(STAGES[stage].marker_fields, markers)
        if stage == SHIPPER:
            _gather_dataset(root, names, tmp / DATASET, cfg)
            fields.update(summary)
        marker = StageMarker(
            stage=stage,
            fingerprint=digest(stage, *(m.fingerprint for m in markers)),
            input_revision=digest(*(m.input_revision for m in markers)),
            revision=digest(*(m.revision for m in markers)),
            rows=table.num_rows,
            rows_done=sum(m.done for m in markers),
            counts={s: statuses.count(s) for s in sorted(set(statuses))},
            transient_failed=sum(m.transient_failed for m in markers),
            seconds=round(sum(m.seconds for m in markers), 2),
            cost=_summed_cost(markers),
            fields=fields,
        )
        store.commit(tmp, target, marker)


def _combined_fields(rules: dict, markers: list[StageMarker]) -> dict:
    """The stage's own marker fields over its partitions: added up, or lists joined in order."""
    out = {}
    for name, rule in rules.items():
        values = [m.fields[name] for m in markers if name in m.fields]
        if values:
            out[name] = sum(values) if rule == "sum" else [v for value in values for v in value]
    return out


def _summed_cost(markers: list[StageMarker]) -> dict:
    """The stage's cost over its partitions: work time, CPU- and GPU-seconds and video added up
    (partitions in flight at once overlap in wall time, and each sampled the whole process tree)."""
    if not markers or any(m.cost.get("video_s") is None for m in markers):
        return {}
    seconds = sum(m.seconds for m in markers)
    cpu, gpu = (sum(m.cost.get(k, 0.0) for m in markers) for k in ("cpu_s", "gpu_s"))
    return cost_fields(seconds, cpu, gpu, sum(m.cost["video_s"] for m in markers), any("cpu_scope" in m.cost for m in markers))


def shard_files(partition: Path) -> list[Path]:
    """The shards a partition's index names, with their Parquet sidecars."""
    store = StageStore(partition)
    dataset = store.path(SHIPPER) / DATASET
    names = [s["name"] for s in store.completed(SHIPPER).fields.get("shards", [])]
    return [dataset / n for name in names for n in (name, name.removesuffix(".tar") + ".parquet") if (dataset / n).is_file()]


def _add_shards(partition: Path, dataset: Path) -> None:
    for path in shard_files(partition):
        link_or_copy(path, dataset / path.name)


def _write_index(root: Path, names: list[str], dataset: Path, prefix: str) -> int:
    """The wids index over the partitions' shards, in partition order; returns their samples."""
    manifest = [s for name in names for s in StageStore(root / name).completed(SHIPPER).fields.get("shards", [])]
    (dataset / INDEX).write_text(json.dumps(wids_index(manifest, prefix), indent=1))
    return sum(s["samples"] for s in manifest)


def _gather_dataset(root: Path, names: list[str], dataset: Path, cfg) -> None:
    dataset.mkdir(parents=True)
    for name in names:
        _add_shards(root / name, dataset)
    _write_index(root, names, dataset, getattr(cfg, SHIPPER).prefix)
