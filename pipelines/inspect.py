"""`vidcurate inspect`: what a run produced (ledger summary) or what shards contain (samples)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from vidcurate.pipelines.cost import describe_run_cost, run_cost
from vidcurate.pipelines.ledger import summarize, transient_failures
from vidcurate.pipelines.store import StageStore
from vidcurate.stages.registry import SHIPPER, STAGES, VIDEO_SOURCE
from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.untrusted import Limits, Skipped, printable


def describe(location: str, n: int, out: TextIO, limits: Limits = Limits()) -> None:
    """A run directory gets its ledger summary; a shard folder, .tar or URL gets samples."""
    if (Path(location) / "ledger.parquet").is_file():
        _describe_run(Path(location), out)
    else:
        _describe_shards(location, n, out, limits)


def _describe_run(run_dir: Path, out: TextIO) -> None:
    store, markers = StageStore(run_dir), []
    for stage in STAGES:
        marker = store.completed(stage)
        print(marker.describe() if marker else f"{stage}: not run", file=out)
        markers += [marker] if marker else []
    if cost := run_cost(markers, VIDEO_SOURCE):
        print(describe_run_cost(cost), file=out)
    ledger = pq.read_table(run_dir / "ledger.parquet")
    shipped = store.completed(SHIPPER)
    stats = summarize(ledger, shipped.fields.get("shards", []) if shipped else [])
    for entity in ("videos", "clips", "windows"):
        s = stats[entity]
        failed = f"{s['failed']} failed ({s['transient']} transient, {s['failed'] - s['transient']} permanent)"
        print(f"{entity}: {s['total']} total, {s['kept']} kept, {s['rejected']} rejected, {failed}; "
              f"{s['retried']} took more than one try", file=out)
        for reason, count in s["reasons"].items():
            print(f"    {count:5d}  {reason}", file=out)
    print(f"samples: {stats['samples']} in {len(stats['shards'])} shards", file=out)
    tries = Counter(r["tries"] or 1 for r in transient_failures(ledger))
    if tries:
        print("transient failures by tries so far: " + ", ".join(f"{n} after {t}" for t, n in sorted(tries.items())), file=out)


def _describe_shards(location: str, n: int, out: TextIO, limits: Limits) -> None:
    """The first `n` samples that pass the readers' checks, and a line for each one left out on
    the way. Everything from a shard is printed escaped (`printable`): its text never reaches
    the terminal raw."""
    skipped: Counter[str] = Counter()

    def skip(sample: Skipped) -> None:
        skipped[sample.code] += 1
        print(f"skipped {sample}", file=out)

    for sample in islice(open_shards(location, limits=limits, on_skip=skip, empty_check=False), n):
        meta = json.loads(sample["json"])
        sizes = {k: len(v) for k, v in sample.items() if not k.startswith("__")}
        print(printable(f"== {sample['__key__']}  members: {sizes}"), file=out)
        print(printable(json.dumps(meta, indent=2, sort_keys=True), keep="\n"), file=out)
    if skipped:
        print(f"skipped {sum(skipped.values())} sample(s): " + ", ".join(f"{code} {count}" for code, count in sorted(skipped.items())), file=out)
