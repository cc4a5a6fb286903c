"""The two executors of stage work, behind one interface; stages never import Ray.

- `InProcessExecutor`: everything in the calling process (`executor: in_process`, tests, tools);
- `RayExecutor`: a function core's batches as Ray tasks, a class core's through its stage's
  actors (a GPU core's decode step in CPU tasks ahead of it; on CPU each actor decodes its own
  batches); whole-run work's parallel map as Ray tasks.
Both cut a stage's rows into batches of `resources.batch_size` alike and write each batch as its
Parquet part, so their outputs are the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from vidcurate.pipelines.store import part_path, write_rows
from vidcurate.stages.contract import Stage, StageContext, map_here

log = logging.getLogger("vidcurate")


def batches(rows: list, size: int) -> list[list]:
    return [rows[a : a + size] for a in range(0, len(rows), size)]


class StageExecutor:
    """How a stage's work runs: `run` any stage from its declaration into `ctx.store.output` (its
    whole-run work here, its batches as the executor runs them); `map` for whole-run work."""

    remote = False

    def run(self, spec: Stage, rows: list[dict], ctx: StageContext) -> dict:
        """The stage's table for `rows` as Parquet in its output folder; returns the fields its
        marker adds (a whole-run stage's)."""
        fields: dict = {}
        if spec.whole is not None:
            rows, fields = spec.whole(rows, ctx)
            write_rows(ctx.store.output, rows, spec.table)
        elif rows:
            self.run_batches(spec, rows, ctx)
        if not any(ctx.store.output.glob("*.parquet")):
            write_rows(ctx.store.output, [], spec.table)
        return fields

    def run_batches(self, spec: Stage, rows: list[dict], ctx: StageContext) -> None:
        raise NotImplementedError

    def map(self, fn: Callable, items: list, **shared) -> list:
        raise NotImplementedError


class InProcessExecutor(StageExecutor):
    """Stage work in this process: batch after batch through the stage's work (models loaded once)."""

    map = staticmethod(map_here)

    def run_batches(self, spec: Stage, rows: list[dict], ctx: StageContext) -> None:
        decode_kwargs = spec.decode_arguments(ctx) if spec.decode else None
        work = spec.batch_work(spec.arguments(ctx), decode_kwargs)
        for index, batch in enumerate(batches(rows, ctx.config.resources.batch_size)):
            pq.write_table(work(pa.Table.from_pylist(batch)), part_path(ctx.store.output, index))


class RayExecutor(StageExecutor):
    """Stage work on the connected Ray cluster (started locally first where no address is given)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.remote = cfg.ray.address is not None

    def start(self) -> None:
        ensure_ray(self.cfg)

    def map(self, fn: Callable, items: list, **shared) -> list:
        if not items:
            return []
        self.start()
        return map_on_ray_tasks(fn, items, **shared)

    def run_batches(self, spec: Stage, rows: list[dict], ctx: StageContext) -> None:
        self.start()
        map_on_ray(spec, rows, ctx)


def executor_for(cfg) -> InProcessExecutor | RayExecutor:
    """The executor a config asks for."""
    return RayExecutor(cfg) if cfg.executor == "ray" else InProcessExecutor()


def ensure_ray(cfg) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local": a fresh local Ray even where `ray start` left a cluster behind; join one by address.
    kwargs = {"address": cfg.ray.address} if cfg.ray.address else {"address": "local", "num_cpus": cfg.ray.num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)


def decode_apart(spec: Stage, resources) -> bool:
    """Whether the decode step runs ahead of the core in tasks of its own: for a core on GPUs, so
    it never waits on decoding. On CPU the actors decode their own batches: tasks apart would only
    move frames through the object store and take CPUs from the actors."""
    return spec.decode is not None and resources.num_gpus > 0


def actor_cpus(resources, node_cpus: float) -> float:
    """CPUs each model actor holds: as configured; else 1 beside a GPU, or on CPU a node's CPUs
    shared by the actors (a model on CPU uses every core, as torch does in one process; Ray
    gives an actor as many threads as CPUs)."""
    if resources.num_cpus is not None:
        return resources.num_cpus
    return 1.0 if resources.num_gpus else max(1.0, node_cpus // (resources.concurrency or 1))


def stage_cpus(spec: Stage, resources, node_cpus: float) -> float:
    """CPUs a model stage holds while it runs: its actors', and one for decode tasks apart."""
    return (resources.concurrency or 1) * actor_cpus(resources, node_cpus) + (1 if decode_apart(spec, resources) else 0)


def check_stage_fits(spec: Stage, resources, cpus: float, node_cpus: float, gpus: float) -> None:
    """Actors that cannot all start would keep their batches forever, and decode tasks need a
    CPU the actors leave: a stage asking for more than the cluster has is an error, not a hang."""
    actors, need = resources.concurrency or 1, stage_cpus(spec, resources, node_cpus)
    if need > cpus:
        each = actor_cpus(resources, node_cpus)
        decoding = " and 1 for decode tasks" if decode_apart(spec, resources) else ""
        raise ValueError(
            f"{spec.name}.resources: {actors} actors x {each:g} CPUs{decoding} need {need:g} of the cluster's "
            f"{cpus:g} CPUs; the rest would wait forever. Lower concurrency or num_cpus (fractions are allowed)"
        )
    if actors * resources.num_gpus > gpus:
        raise ValueError(
            f"{spec.name}.resources: {actors} actors x {resources.num_gpus:g} GPUs need {actors * resources.num_gpus:g} "
            f"of the cluster's {gpus:g} GPUs; the rest would wait forever. Lower concurrency or num_gpus (0: on CPU)"
        )


class PartWriter:
    """A model actor of a stage: its work (models loaded once), each batch through it (decoded
    here unless it comes decoded) and written as its Parquet part."""

    def __init__(self, spec: Stage, ctx: StageContext, core_kwargs: dict, decodes: bool):
        # the decode step's arguments may need the model's library: worked out here, never in the driver
        decode_kwargs = spec.decode_arguments(ctx) if decodes and spec.decode else None
        self.work = spec.batch_work(core_kwargs, decode_kwargs)

    def write(self, batch: list[dict] | pa.Table, path: str) -> None:
        pq.write_table(self.work(batch if isinstance(batch, pa.Table) else pa.Table.from_pylist(batch)), path)


def write_part(core: Callable, rows: list[dict], kwargs: dict, path: str) -> None:
    """One batch of a task stage: its rows through the core, written as one Parquet part."""
    pq.write_table(core(pa.Table.from_pylist(rows), **kwargs), path)


def decode_rows(decode: Callable, rows: list[dict], kwargs: dict) -> pa.Table:
    return decode(pa.Table.from_pylist(rows), **kwargs)


class Capacity(NamedTuple):
    cpus: float
    node_cpus: float  # the largest node's
    gpus: float


def cluster_capacity() -> Capacity:
    """The connected Ray cluster's alive resources, from one query."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus = [r.get("CPU", 0.0) for r in nodes]
    return Capacity(sum(cpus), max(cpus, default=0.0), sum(r.get("GPU", 0.0) for r in nodes))


def map_on_ray(spec: Stage, rows: list[dict], ctx: StageContext) -> None:
    """The stage's rows for `rows` as Parquet parts in `ctx.store.output`, on the connected Ray
    cluster, a batch at a time: a function core's batches as Ray tasks; a class core's through
    `concurrency` actors, a GPU core's batches decoded ahead in 1-CPU tasks. No Ray Data job: its
    start cost 2-4 s a stage, and its budget kept a CPU from the actors."""
    import ray

    resources = ctx.config.resources
    capacity = cluster_capacity()
    parts = batches(rows, resources.batch_size)
    paths = [str(part_path(ctx.store.output, index)) for index in range(len(parts))]
    if not spec.is_actor:
        task_cpus = resources.num_cpus or 1
        task = ray.remote(num_cpus=task_cpus, num_gpus=resources.num_gpus)(write_part)
        kwargs = ray.put(spec.arguments(ctx))
        slots = [None] * (resources.concurrency or 2 * max(1, int(capacity.cpus // task_cpus)))
        return run_in_slots(spec.name, parts, lambda i, batch, _: task.remote(spec.core, batch, kwargs, paths[i]), slots)
    check_stage_fits(spec, resources, capacity.cpus, capacity.node_cpus, capacity.gpus)
    feed = _decode_ahead(spec, ctx) if decode_apart(spec, resources) else None
    actor = type(spec.core.__name__, (PartWriter,), {})  # named as the stage's core: Ray lists actors by class
    each = actor_cpus(resources, capacity.node_cpus)
    remote = ray.remote(num_cpus=each, num_gpus=resources.num_gpus, max_restarts=3, max_task_retries=3)(actor)
    kwargs, portable = spec.arguments(ctx), spec.portable(ctx)
    actors = [remote.remote(spec, portable, kwargs, decodes=feed is None) for _ in range(resources.concurrency or 1)]
    try:
        # two batches an actor: the next one decodes, or waits in its queue, while it runs one
        submit = lambda i, batch, worker: worker.write.remote(feed(batch) if feed else batch, paths[i])  # noqa: E731
        run_in_slots(spec.name, parts, submit, actors * 2)
    finally:
        for worker in actors:
            ray.kill(worker)  # its CPUs and GPUs, free for the next stage now


def _decode_ahead(spec: Stage, ctx: StageContext) -> Callable:
    """`batch -> ObjectRef` of its decoded table, from a 1-CPU task."""
    import ray

    task, kwargs = ray.remote(num_cpus=1)(decode_rows), ray.put(spec.decode_arguments(ctx))
    return lambda batch: task.remote(spec.decode, batch, kwargs)


def run_in_slots(name: str, batches: list, submit: Callable, slots: list) -> None:
    """`submit(index, batch, slot) -> ObjectRef` for every batch, each call holding one of `slots`
    until it finishes: tasks in flight are bounded by the slots (each None), and an actor (one
    slot per batch it may hold) gets the next batch when it is done with one. Raises the first
    failure once the batches still running are stopped; logs progress every 30 s."""
    import ray

    free, running = slots[::-1], {}
    done, last_log = 0, time.monotonic()
    try:
        while done < len(batches):
            if free and done + len(running) < len(batches):
                index = done + len(running)
                slot = free.pop()
                running[submit(index, batches[index], slot)] = slot
                continue
            (finished,), _ = ray.wait(list(running), num_returns=1)
            free.append(running.pop(finished))
            ray.get(finished)
            done += 1
            if time.monotonic() - last_log > 30:
                log.info("%s: %d of %d batches done", name, done, len(batches))
                last_log = time.monotonic()
    except BaseException:
        # A failed stage's other batches must not write on into the folder its retry starts
        # afresh: a task's worker is killed here; an actor's calls stop with the actor, which
        # its stage kills. Only batches not yet done are cancelled: Ray 2.60 aborts the driver
        # ("Tried to complete task that was not pending") when a force-cancel meets the reply
        # of a task whose result is already out (a red CI run, the failing batch cancelled).
        ready = ray.wait(list(running), num_returns=len(running), timeout=0)[0] if running else []
        unfinished = {ref: slot for ref, slot in running.items() if ref not in ready}
        tasks = [ref for ref, slot in unfinished.items() if slot is None]
        for ref in unfinished:
            ray.cancel(ref, force=ref in tasks)
        ray.wait(tasks, num_returns=len(tasks), timeout=30)
        raise


def map_on_ray_tasks(fn: Callable, items: list, **shared) -> list:
    """`[fn(item, **shared) for item in items]` as 1-CPU Ray tasks; each shared value is put in
    the object store once."""
    import ray

    if not items:
        return []
    refs = {name: ray.put(value) for name, value in shared.items()}
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(item, **refs) for item in items])
