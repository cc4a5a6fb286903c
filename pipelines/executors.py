"""The two ways a clip stage's map runs, behind one call each; stages never import Ray.

- in process: decode, then the core, on the calling process (a 1-CPU cluster, tests, tools);
- Ray Data: decode in CPU tasks streaming into the core (tasks, or actors for a class), written
  as Parquet parts.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from vidcurate.stages.contract import ClipStage


def map_in_process(spec: ClipStage, rows: list[dict], run) -> pa.Table:
    """The stage's rows for `rows`, computed here."""
    kwargs = spec.arguments(run)
    table = pa.Table.from_pylist(rows)
    if spec.decode:
        table = spec.decode(table, **spec.decode_arguments(run))
    return spec.core(**kwargs)(table) if spec.is_actor else spec.core(table, **kwargs)


def map_on_ray(spec: ClipStage, rows: list[dict], run, out_dir: Path) -> None:
    """The stage's rows for `rows` as Parquet parts in `out_dir`, on the connected Ray cluster;
    the decode step runs in 1-CPU tasks so decoding overlaps the (GPU) core."""
    import ray

    resources = spec.config(run).resources
    args = resources.map_batches_args()
    if spec.is_actor:
        args["concurrency"] = args["concurrency"] or 1
        args["fn_constructor_kwargs"] = spec.arguments(run)
    else:
        args["fn_kwargs"] = spec.arguments(run)
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(max(1, -(-len(rows) // resources.batch_size)))
    if spec.decode:
        ds = ds.map_batches(spec.decode, fn_kwargs=spec.decode_arguments(run), batch_format="pyarrow", batch_size=resources.batch_size, num_cpus=1)
    ds.map_batches(spec.core, batch_format="pyarrow", **args).write_parquet(str(out_dir))
