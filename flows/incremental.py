"""Incremental corpus building: each scheduled run processes only inputs no earlier increment
has seen, ships them as a new increment, and dedups against everything shipped before.

Layout under the config's `run_dir` (the corpus root):
    increments/<id>/     a full run directory (its own stages, ledger and dataset) + config.json
    shipped/             dedup history shared by all increments (see stages/dedup.py)
With `shard.output` set, increment <id> is published to `<output>/<id>/`, so earlier
increments are never rewritten. The id is a hash of the increment's inputs: an increment
interrupted by a crash is found unfinished on the next run and finished first, with the
same inputs and the same shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.corpus import corpus_flow
from pipelines.config import PipelineConfig
from pipelines.runner import read_stage_table
from stages.media import list_inputs

INCREMENTS = "increments"
SHIPPED = "shipped"


def _increments(root: Path) -> list[Path]:
    return sorted(p for p in (root / INCREMENTS).glob("*") if (p / "config.json").is_file())


def _finished(increment: Path) -> bool:
    return (increment / "ledger.parquet").is_file()


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
    data = cfg.model_dump()
    stages = data["stages"]
    data.update(run_dir=str(folder), inputs=str(folder / "inputs.txt"))
    data["shard"] = {**data["shard"], "prefix": f"{cfg.shard.prefix}-{inc_id}"}
    if cfg.shard.output:
        data["shard"]["output"] = f"{cfg.shard.output.rstrip('/')}/{inc_id}"
    if "dedup" in stages:
        data["dedup"] = {**data["dedup"], "history": cfg.dedup.history or str(root / SHIPPED)}
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
    done = []
    for inc in _increments(root):
        if not _finished(inc):
            log.info("finishing interrupted increment %s", inc.name)
            corpus_flow(json.loads((inc / "config.json").read_text())["config"])
            done.append(inc.name)
    planned = plan_increment(cfg)
    if planned is None:
        log.info("no new inputs under %s", cfg.inputs)
    else:
        stats = corpus_flow(planned)
        done.append(Path(planned["run_dir"]).name)
        log.info("increment %s: %d samples", Path(planned["run_dir"]).name, stats["samples"])
    return {"increments_run": done, "increments": [p.name for p in _increments(root)], "samples": corpus_samples(root)}


def corpus_samples(root: Path) -> int:
    """Samples shipped by all finished increments together."""
    total = 0
    for inc in _increments(root):
        if _finished(inc) and (inc / "shard" / "_SUCCESS.json").is_file():
            shard = read_stage_table(inc / "shard", "shard")
            total += sum(s == "kept" for s in shard.column("status").to_pylist())
    return total
