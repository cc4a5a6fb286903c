"""The two ways a stage's work runs, behind the same calls; stages never import Ray.

- in process: everything on the calling process (`executor: in_process`, a 1-CPU cluster,
  tests, tools);
- Ray: a function core's batches as Ray tasks, each writing its Parquet part; a class core's
  on Ray Data actors (a GPU core's decode step in CPU tasks streaming into it; on CPU each actor
  decodes its own batches), written as Parquet parts; whole-run work's parallel map
  (`Place.map`) as Ray tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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


class DecodeThenCore:
    """An actor stage's core with its decode step inside the actor: where the core runs on CPU,
    a decode step apart would only move frames through the object store and take a CPU from
    the actors. The decode step's arguments are worked out here too: they may need the model's
    library (embed's input size needs open_clip), which the driver then never imports."""

    def __init__(self, spec: Stage, run, core_kwargs: dict):
        self.spec, self.decode_kwargs, self.core = spec, spec.decode_arguments(run), spec.core(**core_kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.core(self.spec.decode(batch, **self.decode_kwargs))


def decode_apart(spec: Stage, resources) -> bool:
    """Whether the decode step streams ahead of the core in tasks of its own: for a core on GPUs."""
    return spec.decode is not None and resources.num_gpus > 0


def check_actor_cpus(spec: Stage, resources, cpus: float) -> None:
    """Ray Data runs its other steps (repartition, decode, write) as 1-CPU tasks: actors holding
    more than all CPUs but one would leave them waiting forever, so that is an error instead."""
    held = (resources.concurrency or 1) * resources.num_cpus
    if held > cpus - 1:
        raise ValueError(
            f"{spec.name}.resources: {resources.concurrency or 1} actors x {resources.num_cpus:g} CPUs hold {held:g} of the "
            f"cluster's {cpus:g}; Ray Data needs one CPU left for its other tasks and would wait forever. Lower "
            f"concurrency or num_cpus (fractions are allowed: 2 actors x 0.5 CPUs on 2 CPUs)"
        )


def map_on_ray(spec: Stage, rows: list[dict], run, place: Place, cpus: float) -> None:
    """The stage's rows for `rows` as Parquet parts in `place.output`, on the connected Ray
    cluster of `cpus` CPUs; a GPU core's decode step runs in 1-CPU tasks so decoding overlaps it."""
    import ray

    resources = spec.config(run).resources
    if not spec.is_actor:
        return map_batches_as_tasks(spec, rows, run, place, resources)
    args = resources.map_batches_args()
    core = spec.core
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(max(1, -(-len(rows) // resources.batch_size)))
    check_actor_cpus(spec, resources, cpus)
    args["concurrency"] = args["concurrency"] or 1
    args["fn_constructor_kwargs"] = spec.arguments(run, place)
    if decode_apart(spec, resources):
        ds = ds.map_batches(spec.decode, fn_kwargs=spec.decode_arguments(run), batch_format="pyarrow", batch_size=resources.batch_size, num_cpus=1)
    elif spec.decode:
        core = type(spec.core.__name__, (DecodeThenCore,), {})  # named as the stage's core: Ray names the actor by it
        args["fn_constructor_kwargs"] = {"spec": spec, "run": run, "core_kwargs": args["fn_constructor_kwargs"]}
    ds.map_batches(core, batch_format="pyarrow", **args).write_parquet(str(place.output))


def write_part(core: Callable, rows: list[dict], kwargs: dict, path: str) -> int:
    """One batch of a task stage: its rows through the core, written as one Parquet part."""
    table = core(pa.Table.from_pylist(rows), **kwargs)
    pq.write_table(table, path)
    return table.num_rows


def map_batches_as_tasks(spec: Stage, rows: list[dict], run, place: Place, resources) -> None:
    """A function core's batches as Ray tasks, each writing part-NNNNNN.parquet, with at most
    `concurrency` (default: twice the tasks the cluster can run at once) in flight. No Ray Data job: its
    start cost 2-4 s a stage, more than a small run's whole probe; a task stage's rows are small
    tables (the media it makes goes to files), so there is nothing for Ray Data to stream."""
    import ray

    task = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(write_part)
    kwargs = ray.put(spec.arguments(run, place))
    size = resources.batch_size
    batches = [rows[a : a + size] for a in range(0, len(rows), size)]
    in_flight = resources.concurrency or 2 * max(1, int(ray.cluster_resources().get("CPU", 1) // resources.num_cpus))
    pending, done, last_log = [], 0, time.monotonic()
    for index, batch in enumerate(batches):
        pending.append(task.remote(spec.core, batch, kwargs, str(place.output / f"part-{index:06d}.parquet")))
        while len(pending) >= in_flight or (index == len(batches) - 1 and pending):
            finished, pending = ray.wait(pending, num_returns=1)
            ray.get(finished)
            done += 1
            if time.monotonic() - last_log > 30:
                log.info("%s: %d of %d batches done", spec.name, done, len(batches))
                last_log = time.monotonic()


def map_on_ray_tasks(fn: Callable, items: list, **shared) -> list:
    """`[fn(item, **shared) for item in items]` as 1-CPU Ray tasks; each shared value is put in
    the object store once."""
    import ray

    if not items:
        return []
    refs = {name: ray.put(value) for name, value in shared.items()}
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(item, **refs) for item in items])
