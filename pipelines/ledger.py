"""The ledger: exactly one final status per input video and per clip, derived from stage tables.

A clip's status is the one of the last stage that saw it. A video that passed probe is
`kept` if at least one of its clips is; otherwise it takes the status of its clips
(failed if any failed, else rejected) with a reason that counts them. `transient` marks
failures a re-run retries; `tries` is the most runs any stage took over the entry.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from vidcurate.schemas.outcomes import code_of
from vidcurate.schemas.tables import FAILED, KEPT, LEDGER, REJECTED, STATUSES, to_table
from vidcurate.stages.registry import STAGES

CLIP_LEVEL = tuple(name for name, spec in STAGES.items() if spec.key == "clip_id")  # tables keyed by clip, in pipeline order


def build_ledger(tables: dict[str, pa.Table]) -> pa.Table:
    rows: list[dict] = []
    clips: dict[str, dict] = {}
    for stage in CLIP_LEVEL:  # later stages override earlier ones; tries: the most any stage took
        for row in tables[stage].to_pylist() if stage in tables else []:
            earlier = clips.get(row["clip_id"], {}).get("tries", 1)
            clips[row["clip_id"]] = {
                "entity": "clip",
                "id": row["clip_id"],
                "video_id": row["video_id"],
                **_outcome(row),
            }
            clips[row["clip_id"]]["tries"] = max(earlier, clips[row["clip_id"]]["tries"])
    last_stage = next((s for s in reversed(CLIP_LEVEL) if s in tables), None)
    by_video: dict[str, list[dict]] = {}
    for clip in clips.values():
        by_video.setdefault(clip["video_id"], []).append(clip)
    for video in tables["probe"].to_pylist() if "probe" in tables else []:
        entry = {"entity": "video", "id": video["uri"], "video_id": video["video_id"]}
        entry.update(_video_outcome(video, by_video.get(video["video_id"]), last_stage))
        rows.append(entry)
    rows.extend(sorted(clips.values(), key=lambda c: c["id"]))
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
    detail = f"no_clip_kept: {counts[FAILED]} failed, {counts[REJECTED]} rejected"
    return {
        "status": status,
        "stage": first["stage"] if first else "split",
        "reason": f"{detail}; first: {first['reason']}" if first else detail,
        "transient": any(c["transient"] for c in clips) if status == FAILED else None,
        "tries": max((c["tries"] for c in clips if c["status"] == status), default=1),
    }


def reason_code(reason: str | None) -> str:
    return code_of(reason) or "unspecified"


def _reason_key(row: dict) -> str:
    """`failed(caption, transient): backend`: status, stage, failure class and reason code."""
    kind = "" if row["status"] != FAILED else ", transient" if row["transient"] else ", permanent"
    return f"{row['status']}({row['stage']}{kind}): {reason_code(row['reason'])}"


def retry_due(row: dict, failures) -> bool:
    """A stage row or ledger entry that a re-run tries again: failed transiently, under the cap."""
    failed_transiently = row["status"] == FAILED and bool(row["transient"])
    return failures.retry_transient and failed_transiently and (row["tries"] or 1) < failures.max_tries


def transient_failures(ledger: pa.Table) -> list[dict]:
    """Clips and probed inputs that failed transiently (a video entry whose clips failed is
    counted through its clips)."""
    rows = ledger.to_pylist()
    return [r for r in rows if r["status"] == FAILED and r["transient"] and (r["entity"] == "clip" or r["stage"] == "probe")]


def pending_retries(ledger: pa.Table, failures) -> int:
    return sum(retry_due(r, failures) for r in transient_failures(ledger))


def summarize(ledger: pa.Table, shards: list[dict]) -> dict:
    """stats.json: ledger sums by entity, status and reason code, plus the shard manifest."""
    stats: dict = {
        "shards": shards,
        "samples": sum(s["samples"] for s in shards if s.get("kind", "clip") == "clip"),
        "window_samples": sum(s["samples"] for s in shards if s.get("kind") == "window"),
    }
    for entity in ("video", "clip"):
        rows = [r for r in ledger.to_pylist() if r["entity"] == entity]
        stats[f"{entity}s"] = {
            "total": len(rows),
            **{status: sum(r["status"] == status for r in rows) for status in STATUSES},
            "transient": sum(bool(r["transient"]) for r in rows),
            "retried": sum((r["tries"] or 1) > 1 for r in rows),
            "reasons": dict(sorted(Counter(_reason_key(r) for r in rows if r["status"] != KEPT).items())),
        }
    return stats
