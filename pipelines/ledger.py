"""The ledger: exactly one final status per input video, per clip and per window, derived from the
stage tables; its vocabulary of reason codes; and the failure budget judged on it.

A clip's status is the one of the last stage that saw it; a window's (a sample over contiguous
shipped clips) is the shipping stage's. A video that passed probe is `kept` if at least one of its
clips is; otherwise it takes the status of its clips (failed if any failed, else rejected) with a
reason that counts them. `transient` marks failures a re-run retries; `tries` is the most runs any
stage took over the entry.

Every reason reads `code: detail`, and each stage declares its codes (`Stage.reasons`, or
`Stage.rule_codes` for codes made of rule names): README's "Ledger reasons" table is generated
from them (`python -m vidcurate.pipelines.ledger`; tests/test_outcomes.py keeps the two equal).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from vidcurate.schemas.tables import FAILED, KEPT, LEDGER, REJECTED, STATUSES, to_table
from vidcurate.stages.registry import CLIP_SOURCE, STAGES

CLIP_LEVEL = tuple(name for name, spec in STAGES.items() if spec.key == "clip_id")  # tables keyed by sample, in pipeline order
ENTITIES = ("video", "clip", "window")
# A video that passed probe but whose clips all ended rejected or failed (stage: its first such
# clip's), with the counts and that clip's reason.
VIDEO_CODE = ("no_clip_kept", "every clip of the video was rejected or failed; the counts and the first clip's reason")


def build_ledger(tables: dict[str, pa.Table]) -> pa.Table:
    rows: list[dict] = []
    samples: dict[str, dict] = {}
    for stage in CLIP_LEVEL:  # later stages override earlier ones; tries: the most any stage took
        for row in tables[stage].to_pylist() if stage in tables else []:
            earlier = samples.get(row["clip_id"], {}).get("tries", 1)
            entry = {"entity": row.get("entity") or "clip", "id": row["clip_id"], "video_id": row["video_id"], **_outcome(row)}
            entry["tries"] = max(earlier, entry["tries"])
            samples[row["clip_id"]] = entry
    last_stage = next((s for s in reversed(CLIP_LEVEL) if s in tables), None)
    by_video: dict[str, list[dict]] = {}
    for entry in samples.values():
        if entry["entity"] == "clip":
            by_video.setdefault(entry["video_id"], []).append(entry)
    videos = next((tables[s] for s in tables if STAGES[s].reads == "inputs"), None)
    for video in videos.to_pylist() if videos is not None else []:
        entry = {"entity": "video", "id": video["uri"], "video_id": video["video_id"]}
        entry.update(_video_outcome(video, by_video.get(video["video_id"]), last_stage))
        rows.append(entry)
    rows.extend(sorted(samples.values(), key=lambda c: (ENTITIES.index(c["entity"]), c["id"])))
    return to_table(rows, LEDGER)


def _outcome(row: dict) -> dict:
    failed = row["status"] == FAILED
    return {
        **{k: row[k] for k in ("status", "stage", "reason")},
        "transient": bool(row["transient"]) if failed else None,
        "tries": row["tries"] or 1,
    }


def _video_outcome(video: dict, clips: list[dict] | None, last_stage: str | None) -> dict:
    if video["status"] != KEPT or last_stage is None:
        return _outcome(video)
    clips = clips or []
    counts = Counter(c["status"] for c in clips)
    if counts[KEPT]:
        return {"status": KEPT, "stage": last_stage, "reason": None, "transient": None, "tries": 1}
    status = FAILED if counts[FAILED] else REJECTED
    first = next((c for c in clips if c["status"] == status), None)
    detail = f"{VIDEO_CODE[0]}: {counts[FAILED]} failed, {counts[REJECTED]} rejected"
    return {
        "status": status,
        "stage": first["stage"] if first else CLIP_SOURCE,
        "reason": f"{detail}; first: {first['reason']}" if first else detail,
        "transient": any(c["transient"] for c in clips) if status == FAILED else None,
        "tries": max((c["tries"] for c in clips if c["status"] == status), default=1),
    }


def code_of(reason: str | None) -> str:
    return (reason or "").split(":", 1)[0].strip()


def reason_code(reason: str | None) -> str:
    return code_of(reason) or "unspecified"


def known(stage: str, status: str, reason: str | None) -> bool:
    """Whether a row's (stage, status, reason) uses the vocabulary its stage declares."""
    code, spec = code_of(reason), STAGES.get(stage)
    if code == VIDEO_CODE[0]:
        return True
    if spec is None:
        return False
    if status == REJECTED and spec.rule_codes and re.match(spec.rule_codes, code):
        return True
    return spec.reasons.get(code, (None,))[0] == status


def reasons_table() -> str:
    """The Markdown table README's "Ledger reasons" holds."""
    lines = ["| stage | status | code | meaning |", "|---|---|---|---|"]
    for stage, spec in STAGES.items():
        if spec.rule_codes:
            lines.append(f"| {stage} | rejected | its failing rules' scores, joined by `+` | each failing rule with its value and bound, e.g. `motion+nsfw: motion=0.003 (min 0.01), nsfw=0.9 (max 0.5)` |")
        lines += [f"| {stage} | {status} | `{code}` | {meaning} |" for code, (status, meaning) in spec.reasons.items()]
    lines.append(f"| any (video) | rejected or failed | `{VIDEO_CODE[0]}` | {VIDEO_CODE[1]} |")
    return "\n".join(lines)


def _reason_key(row: dict) -> str:
    """`failed(caption, transient): backend`: status, stage, failure class and reason code."""
    kind = "" if row["status"] != FAILED else ", transient" if row["transient"] else ", permanent"
    return f"{row['status']}({row['stage']}{kind}): {reason_code(row['reason'])}"


def retry_due(row: dict, failures) -> bool:
    """A stage row or ledger entry that a re-run tries again: failed transiently, under the cap."""
    failed_transiently = row["status"] == FAILED and bool(row["transient"])
    return failures.retry_transient and failed_transiently and (row["tries"] or 1) < failures.max_tries


def transient_failures(ledger: pa.Table) -> list[dict]:
    """Clips, windows and probed inputs that failed transiently (a video entry whose clips failed is
    counted through its clips)."""
    rows = ledger.to_pylist()
    return [r for r in rows if r["status"] == FAILED and r["transient"] and (r["entity"] != "video" or STAGES[r["stage"]].reads == "inputs")]


def pending_retries(ledger: pa.Table, failures) -> int:
    return sum(retry_due(r, failures) for r in transient_failures(ledger))


def summarize(ledger: pa.Table, shards: list[dict]) -> dict:
    """stats.json: ledger sums by entity, status and reason code, plus the shard manifest."""
    stats: dict = {
        "shards": shards,
        "samples": sum(s["samples"] for s in shards if s.get("kind", "clip") == "clip"),
        "window_samples": sum(s["samples"] for s in shards if s.get("kind") == "window"),
    }
    for entity in ENTITIES:
        rows = [r for r in ledger.to_pylist() if r["entity"] == entity]
        stats[f"{entity}s"] = {
            "total": len(rows),
            **{status: sum(r["status"] == status for r in rows) for status in STATUSES},
            "transient": sum(bool(r["transient"]) for r in rows),
            "retried": sum((r["tries"] or 1) > 1 for r in rows),
            "reasons": dict(sorted(Counter(_reason_key(r) for r in rows if r["status"] != KEPT).items())),
        }
    return stats


class FailureBudgetExceeded(RuntimeError):
    """More failed than `failures` allows. The run wrote its tables, ledger and local dataset;
    it published nothing. The message is one line: what failed, and whether a re-run retries it."""

    @classmethod
    def of_run(cls, run_dir: Path, stats: dict, retries: int) -> FailureBudgetExceeded:
        return cls(
            f"{run_dir}: over the failure budget ({'; '.join(stats['failure_budget'])}); "
            f"{retries} transient failures a re-run retries; nothing published"
        )


def over_budget(tables: dict[str, pa.Table], stats: dict, failures) -> list[str]:
    """Each stage whose failed rows, and each ledger entity whose failed share, exceed the budget."""
    breaches = stage_breaches(tables, failures)
    for entity in ENTITIES:
        s = stats[f"{entity}s"]
        if s["total"] and s["failed"] / s["total"] > failures.max_failed_fraction:
            breaches.append(f"{entity}s: {s['failed']}/{s['total']} failed > {failures.max_failed_fraction:g}")
    return breaches


def stage_breaches(tables: dict[str, pa.Table], failures) -> list[str]:
    """Each stage whose failed rows exceed its budget."""
    breaches = []
    for stage, table in tables.items():
        failed = pc.sum(pc.equal(table.column("status"), FAILED)).as_py() or 0
        if table.num_rows and failed / table.num_rows > failures.budget(stage):
            breaches.append(f"{stage}: {failed}/{table.num_rows} rows failed > {failures.budget(stage):g}")
    return breaches


if __name__ == "__main__":
    print(reasons_table())
