"""Incremental corpus building: each scheduled run processes only inputs no earlier increment
has seen, ships them as a new increment, and dedups against everything shipped before.

Layout under the config's `run_dir` (the corpus root):
    increments/<id>/     a full run directory (its own stages, ledger and dataset) + config.json
    shipped/             dedup's history of shipped clips, shared by all increments (unless the
                         config names another; stages/dedup.py)
Each stage derives its section for an increment (`Stage.sub_config`): with `shard.output` set,
increment <id> is published to `<output>/<id>/`, so earlier increments are never rewritten. The id is a hash of the increment's inputs: an increment
that did not ship (interrupted by a crash, or over its failure budget because a backend was
down), or that shipped with transient failures still to retry, is run again first by every
later run, with the same inputs: its transient failures are retried (up to
`failures.max_tries` runs) and it is (re)published once within its budget. Its inputs are
never lost, nor taken again by a new increment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from vidcurate.flows.corpus import corpus_flow
from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.ledger import FailureBudgetExceeded, pending_retries
from vidcurate.pipelines.store import StageStore
from vidcurate.schemas.tables import KEPT
from vidcurate.stages.contract import SubRun
from vidcurate.stages.media import list_inputs
from vidcurate.stages.registry import SHIPPER

INCREMENTS = "increments"
SHIPPED_MARKER = "shipped.json"  # in an increment: it finished within its failure budget (and published)


def _increments(root: Path) -> list[Path]:
    return sorted(p for p in (root / INCREMENTS).glob("*") if (p / "config.json").is_file())


def _shipped(increment: Path) -> bool:
    return (increment / SHIPPED_MARKER).is_file()


def _needs_run(increment: Path, failures) -> bool:
    """Not shipped yet, or shipped with transient failures a re-run would still retry."""
    if not _shipped(increment):
        return True
    ledger = increment / "ledger.parquet"
    return ledger.is_file() and pending_retries(pq.read_table(ledger), failures) > 0


def seen_inputs(root: Path) -> set[str]:
    """Every input URI any increment has taken on (finished or not)."""
    seen: set[str] = set()
    for inc in _increments(root):
        seen.update(json.loads((inc / "config.json").read_text())["inputs_list"])
    return seen


def plan_increment(cfg: PipelineConfig) -> dict | None:
    """The config of the next increment over the inputs not seen yet, or None if there are none."""
    root = Path(cfg.run_dir)
    new = sorted(set(list_inputs(cfg.inputs)) - seen_inputs(root))
    if not new:
        return None
    inc_id = hashlib.sha256("\n".join(new).encode()).hexdigest()[:12]
    folder = root / INCREMENTS / inc_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inputs.txt").write_text("".join(u + "\n" for u in new))
    data = cfg.sub_run(SubRun("increment", inc_id, folder, root), inputs=str(folder / "inputs.txt")).model_dump()
    (folder / "config.json").write_text(json.dumps({"config": data, "inputs_list": new}, indent=1, sort_keys=True))
    return data


@flow(name="vidcurate-incremental", log_prints=True)
def incremental_flow(config: dict) -> dict:
    """Finish any interrupted increment, then process the inputs no increment has seen."""
    cfg = PipelineConfig.model_validate(config)
    if not cfg.inputs:
        raise ValueError("the incremental flow needs `inputs`")
    log = get_run_logger()
    root = Path(cfg.run_dir)
    done, failed = [], []
    for inc in _increments(root):
        if _needs_run(inc, cfg.failures):
            log.info("increment %s: running it again (it did not ship, or has transient failures to retry)", inc.name)
            # today's failure settings apply to old increments too (they change no stage's output)
            config = {**json.loads((inc / "config.json").read_text())["config"], "failures": cfg.failures.model_dump()}
            _run_increment(config, done, failed)
    planned = plan_increment(cfg)
    if planned is None:
        log.info("no new inputs under %s", cfg.inputs)
    else:
        _run_increment(planned, done, failed)
    if failed:  # the flow run ends Failed, so a scheduled deployment alerts
        raise FailureBudgetExceeded(f"{len(failed)} increment(s) did not ship: " + " | ".join(failed))
    return {"increments_run": done, "increments": [p.name for p in _increments(root)], "samples": corpus_samples(root)}


def _run_increment(config: dict, done: list[str], failed: list[str]) -> None:
    """Run one increment's corpus flow; over its failure budget it is noted in `failed` and
    stays unshipped for the next run."""
    folder = Path(config["run_dir"])
    done.append(folder.name)
    try:
        stats = corpus_flow(config)
    except FailureBudgetExceeded as exc:
        get_run_logger().error("increment %s: %s", folder.name, exc)
        failed.append(str(exc))
        return
    (folder / SHIPPED_MARKER).write_text(json.dumps({"samples": stats["samples"]}))
    get_run_logger().info("increment %s: %d samples", folder.name, stats["samples"])


def corpus_samples(root: Path) -> int:
    """Clip samples shipped by all finished increments together."""
    total = 0
    for inc in _increments(root):
        store = StageStore(inc)
        if _shipped(inc) and store.completed(SHIPPER):
            rows = store.table(store.path(SHIPPER)).select(["status", "entity"]).to_pylist()
            total += sum(r["status"] == KEPT and r["entity"] == "clip" for r in rows)
    return total
