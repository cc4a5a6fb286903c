"""A corpus in partitions of videos: each partition runs split -> shard as a run of its own and
ships its shards as soon as it is done, while the next partitions' stages run.

Probe runs once over every input (it is cheap and marks same-bytes inputs across the corpus);
its kept videos, in input order, are cut into partitions of `partitions.videos`. Layout:

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
partition 2. A partition's dedup waits for the earlier partitions to ship, and takes their
clips as history, so a clip is never shipped twice; its completion is recorded per partition
by the stage markers, and a re-run resumes there. Two decisions differ from a run in one
piece and say so in the docs: quality's percentile rules are resolved per partition, and of
two near-duplicates in different partitions the earlier partition's ships.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.cost import cost_fields
from vidcurate.pipelines.executors import cluster_capacity, stage_cpus
from vidcurate.pipelines.runner import MARKER, Runner, digest, ensure_ray, read_marker, read_stage_table, stage_breaches
from vidcurate.schemas.readers import INDEX
from vidcurate.schemas.tables import KEPT, to_table
from vidcurate.stages.dedup import run_id
from vidcurate.stages.publish import publish
from vidcurate.stages.registry import STAGES
from vidcurate.stages.shard import DATASET, partition_name, partition_of, wids_index

log = logging.getLogger("vidcurate")

PARTITIONS = "partitions"
SUMMED = ("rows_done", "transient_failed", "windows", "frames")  # marker counts that add up over partitions


def plan(cfg: PipelineConfig) -> list[list[dict]]:
    """Probe's kept videos in input order, cut into partitions of `partitions.videos`."""
    probe = read_stage_table(Path(cfg.run_dir) / "probe", "probe").filter(pc.field("status") == KEPT)
    videos = probe.to_pylist()
    size = cfg.partitions.videos
    return [videos[i : i + size] for i in range(0, len(videos), size)]


def partition_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The partition's run: its own folder and shard names; no publishing of its own (the corpus
    publishes); a failure budget it never breaks (the corpus' budget decides over all)."""
    root = Path(cfg.run_dir) / PARTITIONS
    data = cfg.model_dump()
    data.update(run_dir=str(root / name), partitions={"videos": 0})
    data["shard"] = {**data["shard"], "prefix": f"{cfg.shard.prefix}-{name}", "output": None}
    data["failures"] = {**data["failures"], "max_failed_fraction": 1.0, "stage_max_failed_fraction": {}}
    if "dedup" in cfg.stages:
        data["dedup"] = {**data["dedup"], "history": str(root / "history" / name)}
    return PipelineConfig.model_validate(data)


def write_partition_probe(top_probe: Path, run_dir: Path, videos: list[dict]) -> None:
    """The partition's probe stage: its videos' rows under the corpus probe's fingerprint, so a
    change of probe's settings redoes the partition; rewritten only when its videos changed."""
    top = read_marker(top_probe)
    revision = digest(top["fingerprint"], *(v["video_id"] for v in videos))
    target = run_dir / "probe"
    if (read_marker(target) or {}).get("revision") == revision:
        return
    tmp = target.with_name("probe.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(to_table(videos, STAGES["probe"].table), tmp / "part-000000.parquet")
    marker = {"stage": "probe", "fingerprint": top["fingerprint"], "input_revision": top["input_revision"], "revision": revision,
              "rows": len(videos), "counts": {KEPT: len(videos)}, "transient_failed": 0, "seconds": 0.0}  # fmt: skip
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _link(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows one (shards are large), else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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
    """Runs a probed corpus' partitions through split -> shard as a pipeline (see the module)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.root = Path(cfg.run_dir) / PARTITIONS
        self.stages = cfg.pipeline()[1:]  # after probe
        self.started = time.monotonic()
        self.first_shard_s: float | None = None
        self.shipped: list[str] = []  # partitions whose shards are in <run>/partitions/dataset
        self.tables: dict[str, pa.Table] = {}  # their stage tables, for the failure budget
        self._lock = threading.Lock()

    def run(self) -> dict:
        """Every partition, then the corpus' stage tables; returns the summary the shard marker adds."""
        partitions = plan(self.cfg)
        names = [partition_name(i) for i in range(len(partitions))]
        for name, videos in zip(names, partitions):
            write_partition_probe(Path(self.cfg.run_dir) / "probe", self.root / name, videos)
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
        gather(self.cfg, names)
        summary = {"partitions": len(names), "first_shard_s": self.first_shard_s, "wall_s": self._now(), "timeline": self.timeline}
        shard_dir = Path(self.cfg.run_dir) / "shard"
        marker = read_marker(shard_dir)
        (shard_dir / MARKER).write_text(json.dumps({**marker, **summary}, indent=2, sort_keys=True))
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
            runner = Runner(cfg)
            for stage in self.stages:
                if earlier:  # each stage takes the partitions in order; dedup also needs the earlier ones shipped
                    self._wait(earlier, "shipped" if stage == "dedup" else stage)
                if stage == "dedup":
                    self._assemble_history(names[:index], cfg)
                with self.cpus.hold(self._actor_cpus(stage)):
                    began = self._now()
                    runner.run_stage(stage)
                    self.timeline.append({"partition": name, "stage": stage, "start_s": began, "end_s": self._now()})
                self.done[name, stage].set()
            if earlier:
                self._wait(earlier, "shipped")
            runner.finish()  # its ledger; with dedup, the clips it shipped, for the later partitions
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
        return stage_cpus(spec, spec.config(self.cfg).resources, self.node_cpus)

    def _assemble_history(self, earlier: list[str], cfg: PipelineConfig) -> None:
        """The partition's dedup history: the shared history (less this corpus run's own entry)
        and the clips each earlier partition shipped."""
        folder = Path(cfg.dedup.history)
        folder.mkdir(parents=True, exist_ok=True)
        own = f"shipped-{run_id(cfg.run_dir)}.parquet"
        for stale in folder.glob("shipped-*.parquet"):
            if stale.name != own:
                stale.unlink()
        sources = []
        if self.cfg.dedup.history and Path(self.cfg.dedup.history).is_dir():
            this_run = f"shipped-{run_id(self.cfg.run_dir)}.parquet"
            sources += [p for p in Path(self.cfg.dedup.history).glob("shipped-*.parquet") if p.name != this_run]
        for name in earlier:
            shipped = self.root / "history" / name / f"shipped-{run_id(self.root / name)}.parquet"
            if shipped.is_file():
                sources.append(shipped)
        for source in sources:
            _link(source, folder / source.name)

    def _clear_dataset(self) -> None:
        shutil.rmtree(self.root / DATASET, ignore_errors=True)
        (self.root / DATASET).mkdir(parents=True)

    def _ship(self, name: str) -> None:
        """The partition's shards join the dataset of the partitions done so far; published
        (only its new shards travel) while the stages' failed rows so far are within their budgets
        (the ledger's shares are judged at the end)."""
        with self._lock:
            self.shipped.append(name)
            for stage in self.stages:
                table = read_stage_table(self.root / name / stage, stage)
                self.tables[stage] = pa.concat_tables([self.tables[stage], table]) if stage in self.tables else table
            dataset = self.root / DATASET
            _add_shards(self.root / name, dataset)
            samples = _write_index(self.root, self.shipped, dataset, self.cfg.shard.prefix)
            log.info("partition %s shipped: %d partitions of %d done, %d samples so far, %.1f s", name, len(self.shipped), self.count, samples, self._now())
            if self.first_shard_s is None and samples:
                self.first_shard_s = self._now()
            if self.cfg.shard.output and not stage_breaches(self.tables, self.cfg.failures):
                publish(dataset, self.cfg.shard.output, group_of=partition_of)
                log.info("partition %s published to %s", name, self.cfg.shard.output)


class _Stopped(RuntimeError):
    """A partition that stopped because an earlier one failed: the earlier error is the one raised."""


def gather(cfg: PipelineConfig, names: list[str]) -> None:
    """Each stage after probe as one table over every partition, in partition order, under the
    corpus run directory, with a marker that sums the partitions' (their fingerprints and
    revisions chained); the shard stage's dataset holds every partition's shards."""
    run_dir, root = Path(cfg.run_dir), Path(cfg.run_dir) / PARTITIONS
    for stage in cfg.pipeline()[1:]:
        markers = [read_marker(root / n / stage) for n in names]
        tables = [read_stage_table(root / n / stage, stage) for n in names]
        table = pa.concat_tables(tables) if tables else to_table([], STAGES[stage].table)
        target = run_dir / stage
        tmp = target.with_name(stage + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / "part-000000.parquet")
        statuses = table.column("status").to_pylist()
        marker = {
            "stage": stage,
            "fingerprint": digest(stage, *(m["fingerprint"] for m in markers)),
            "input_revision": digest(*(m["input_revision"] for m in markers)),
            "revision": digest(*(m["revision"] for m in markers)),
            "rows": table.num_rows,
            "counts": {s: statuses.count(s) for s in sorted(set(statuses))},
            "seconds": round(sum(m["seconds"] for m in markers), 2),
            **{k: sum(m.get(k, 0) for m in markers) for k in SUMMED if any(k in m for m in markers)},
            **_summed_cost(markers),
        }
        if "frames" in marker:
            marker["frames_per_s"] = round(marker["frames"] / max(marker["seconds"], 1e-3), 1)
        if stage == "shard":
            marker["shards"] = [s for m in markers for s in m.get("shards", [])]
            _gather_dataset(root, names, tmp / DATASET, cfg)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)


def _summed_cost(markers: list[dict]) -> dict:
    """The stage's cost over its partitions: work time, CPU- and GPU-seconds and video added up
    (partitions in flight at once overlap in wall time, and each sampled the whole process tree)."""
    if any(m.get("video_s") is None for m in markers) or not markers:
        return {}
    seconds, cpu, gpu = (sum(m.get(k, 0.0) for m in markers) for k in ("seconds", "cpu_s", "gpu_s"))
    return cost_fields(seconds, cpu, gpu, sum(m["video_s"] for m in markers), any("cpu_scope" in m for m in markers))


def shard_files(partition: Path) -> list[Path]:
    """The shards a partition's index names, with their Parquet sidecars."""
    dataset = partition / "shard" / DATASET
    names = [s["name"] for s in read_marker(partition / "shard").get("shards", [])]
    return [dataset / n for name in names for n in (name, name.removesuffix(".tar") + ".parquet") if (dataset / n).is_file()]


def _add_shards(partition: Path, dataset: Path) -> None:
    for path in shard_files(partition):
        _link(path, dataset / path.name)


def _write_index(root: Path, names: list[str], dataset: Path, prefix: str) -> int:
    """The wids index over the partitions' shards, in partition order; returns their samples."""
    manifest = [s for name in names for s in read_marker(root / name / "shard").get("shards", [])]
    (dataset / INDEX).write_text(json.dumps(wids_index(manifest, prefix), indent=1))
    return sum(s["samples"] for s in manifest)


def _gather_dataset(root: Path, names: list[str], dataset: Path, cfg: PipelineConfig) -> None:
    dataset.mkdir(parents=True)
    for name in names:
        _add_shards(root / name, dataset)
    _write_index(root, names, dataset, cfg.shard.prefix)
