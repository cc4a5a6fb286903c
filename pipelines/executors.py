"""The two ways a stage's work runs, behind the same calls; stages never import Ray.

- in process: everything on the calling process (`executor: in_process`, a 1-CPU cluster,
  tests, tools);
- Ray: a stage's batches on Ray Data (its decode step in CPU tasks streaming into the core:
  tasks, or actors for a class), written as Parquet parts; whole-run work's parallel map
  (`Place.map`) as Ray tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vidcurate.stages.contract import Place, Stage


def map_in_process(spec: Stage, rows: list[dict], run, place: Place | None = None) -> pa.Table:
    """The stage's rows for `rows`, computed here."""
    kwargs = spec.arguments(run, place)
    table = pa.Table.from_pylist(rows)
    if spec.decode:
        table = spec.decode(table, **spec.decode_arguments(run))
    return spec.core(**kwargs)(table) if spec.is_actor else spec.core(table, **kwargs)


def write_in_process(spec: Stage, rows: list[dict], run, place: Place) -> None:
    pq.write_table(map_in_process(spec, rows, run, place), place.output / "part-000000.parquet")


def map_on_ray(spec: Stage, rows: list[dict], run, place: Place) -> None:
    """The stage's rows for `rows` as Parquet parts in `place.output`, on the connected Ray
    cluster; the decode step runs in 1-CPU tasks so decoding overlaps the (GPU) core."""
    import ray

    resources = spec.config(run).resources
    args = resources.map_batches_args()
    if spec.is_actor:
        args["concurrency"] = args["concurrency"] or 1
        args["fn_constructor_kwargs"] = spec.arguments(run, place)
    else:
        args["fn_kwargs"] = spec.arguments(run, place)
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(max(1, -(-len(rows) // resources.batch_size)))
    if spec.decode:
        ds = ds.map_batches(spec.decode, fn_kwargs=spec.decode_arguments(run), batch_format="pyarrow", batch_size=resources.batch_size, num_cpus=1)
    ds.map_batches(spec.core, batch_format="pyarrow", **args).write_parquet(str(place.output))


def map_on_ray_tasks(fn: Callable, items: list, **shared) -> list:
    """`[fn(item, **shared) for item in items]` as 1-CPU Ray tasks; each shared value is put in
    the object store once."""
    import ray

    if not items:
        return []
    refs = {name: ray.put(value) for name, value in shared.items()}
    task = ray.remote(num_cpus=1)(fn)
    return ray.get([task.remote(item, **refs) for item in items])
