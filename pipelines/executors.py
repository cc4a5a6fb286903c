"""The two ways a stage's work runs, behind the same calls; stages never import Ray.

- in process: everything on the calling process (`executor: in_process`, tests, tools);
- Ray: a function core's batches as Ray tasks, a class core's through its stage's actors (a GPU
  core's decode step in CPU tasks ahead of it; on CPU each actor decodes its own batches), each
  batch written as its Parquet part; whole-run work's parallel map (`Place.map`) as Ray tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from vidcurate.stages.contract import Place, Stage

log = logging.getLogger("vidcurate")


def map_in_process(spec: Stage, rows: list[dict], run, place: Place | None = None) -> pa.Table:
    """The stage's rows for `rows`, computed here."""
    kwargs = spec.arguments(run, place)
    table = pa.Table.from_pylist(rows)
    if spec.decode:
        table = spec.decode(table, **spec.decode_arguments(run))
    return spec.core(**kwargs)(table) if spec.is_actor else spec.core(table, **kwargs)


def write_in_process(spec: Stage, rows: list[dict], run, place: Place) -> None:
    pq.write_table(map_in_process(spec, rows, run, place), place.output / "part-000000.parquet")


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
    """A model actor of a stage: its core (models loaded once), each batch through it (decoded
    here unless it comes decoded) and written as its Parquet part."""

    def __init__(self, spec: Stage, run, core_kwargs: dict, decodes: bool):
        self.spec, self.core = spec, spec.core(**core_kwargs)
        # the decode step's arguments may need the model's library: worked out here, never in the driver
        self.decode_kwargs = spec.decode_arguments(run) if decodes and spec.decode else None

    def write(self, batch: list[dict] | pa.Table, path: str) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_pylist(batch)
        if self.decode_kwargs is not None:
            table = self.spec.decode(table, **self.decode_kwargs)
        pq.write_table(self.core(table), path)


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


def map_on_ray(spec: Stage, rows: list[dict], run, place: Place) -> None:
    """The stage's rows for `rows` as Parquet parts part-NNNNNN.parquet in `place.output`, on the
    connected Ray cluster, a batch at a time: a function core's batches as Ray tasks; a class
    core's through `concurrency` actors, a GPU core's batches decoded ahead in 1-CPU tasks. No
    Ray Data job: its start cost 2-4 s a stage, and its budget kept a CPU from the actors."""
    import ray

    resources = spec.config(run).resources
    capacity = cluster_capacity()
    size = resources.batch_size
    batches = [rows[a : a + size] for a in range(0, len(rows), size)]
    paths = [str(place.output / f"part-{index:06d}.parquet") for index in range(len(batches))]
    if not spec.is_actor:
        task_cpus = resources.num_cpus or 1
        task = ray.remote(num_cpus=task_cpus, num_gpus=resources.num_gpus)(write_part)
        kwargs = ray.put(spec.arguments(run, place))
        slots = [None] * (resources.concurrency or 2 * max(1, int(capacity.cpus // task_cpus)))
        return run_in_slots(spec.name, batches, lambda i, batch, _: task.remote(spec.core, batch, kwargs, paths[i]), slots)
    check_stage_fits(spec, resources, capacity.cpus, capacity.node_cpus, capacity.gpus)
    feed = _decode_ahead(spec, run) if decode_apart(spec, resources) else None
    actor = type(spec.core.__name__, (PartWriter,), {})  # named as the stage's core: Ray lists actors by class
    each = actor_cpus(resources, capacity.node_cpus)
    remote = ray.remote(num_cpus=each, num_gpus=resources.num_gpus, max_restarts=3, max_task_retries=3)(actor)
    kwargs = spec.arguments(run, place)
    actors = [remote.remote(spec, run, kwargs, decodes=feed is None) for _ in range(resources.concurrency or 1)]
    try:
        # two batches an actor: the next one decodes, or waits in its queue, while it runs one
        submit = lambda i, batch, worker: worker.write.remote(feed(batch) if feed else batch, paths[i])  # noqa: E731
        run_in_slots(spec.name, batches, submit, actors * 2)
    finally:
        for worker in actors:
            ray.kill(worker)  # its CPUs and GPUs, free for the next stage now


def _decode_ahead(spec: Stage, run) -> Callable:
    """`batch -> ObjectRef` of its decoded table, from a 1-CPU task."""
    import ray

    task, kwargs = ray.remote(num_cpus=1)(decode_rows), ray.put(spec.decode_arguments(run))
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
