"""Prefect flow: the pipeline's stages as tasks with retries, over Ray.

Without PREFECT_API_URL set, the flow runs against a temporary local server (`vidcurate run`
starts and stops it: flows/services.py), so this needs no setup; point PREFECT_API_URL at
`prefect server start` to see runs in the UI.
Resume comes from the stage markers: a retried or re-run flow skips completed stages.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.cost import describe_run_cost, run_cost
from vidcurate.pipelines.disk import StorageFailed
from vidcurate.pipelines.partitions import PartitionedRun
from vidcurate.pipelines.runner import PARTITIONS, Runner, steps
from vidcurate.pipelines.store import StageMarker
from vidcurate.stages.registry import VIDEO_SOURCE


def worth_retrying(_task, _task_run, state) -> bool:
    """A stage is tried again within the flow, except where the disk is full: that needs a person."""
    return not isinstance(state.data, StorageFailed)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying, task_run_name="{stage}")
def run_stage(config: dict, stage: str) -> StageMarker:
    marker = Runner(PipelineConfig.model_validate(config)).run_stage(stage)
    get_run_logger().info(marker.describe())
    return marker


@task(task_run_name="ledger")
def write_ledger(config: dict) -> dict:
    runner = Runner(PipelineConfig.model_validate(config))
    stats = runner.finish()
    get_run_logger().info(
        "ledger: videos %s, clips %s, windows %s, %d samples in %d shards",
        *({k: stats[entity][k] for k in ("kept", "rejected", "failed")} for entity in ("videos", "clips", "windows")),
        stats["samples"],
        len(stats["shards"]),
    )
    cost = run_cost(runner.markers(), VIDEO_SOURCE)
    if cost:
        get_run_logger().info(describe_run_cost(cost))
    return stats


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying, task_run_name="partitions")
def run_partitions(config: dict) -> dict:
    """The stages after the inputs' over the corpus in partitions; a retry resumes at the partitions' markers."""
    summary = PartitionedRun(PipelineConfig.model_validate(config), Runner).run()
    get_run_logger().info("%d partitions; first shards %s s, all %s s after they started", summary["partitions"], summary["first_shard_s"], summary["wall_s"])
    return summary


@flow(name="vidcurate-corpus", log_prints=True)
def corpus_flow(config: dict) -> dict:
    """Full run: every stage of the config (the ones after the inputs' in partitions where the
    config asks), then the ledger and stats.json."""
    cfg = PipelineConfig.model_validate(config)
    Runner(cfg).check_stages()  # every stage's preconditions, before the first stage works
    for step in steps(cfg):
        if step == PARTITIONS:
            run_partitions(config)
        else:
            run_stage(config, step)
    return write_ledger(config)
