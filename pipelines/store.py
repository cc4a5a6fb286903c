"""The run directory, owned here: one folder per completed stage, written whole or not at all.

A stage writes into `<stage>.tmp` (its Parquet parts and anything else it makes), then `commit`
writes its marker (`_SUCCESS.json`: a `StageMarker`) and renames the folder into place, so a
folder without `.tmp` is always complete. Readers take a stage's table and marker from here, and
the clips a stage kept merged with every earlier clip stage's columns (`clip_view`). Files that
must never be seen half-written (ledger, stats, card) go through `write_atomically`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # noqa: F401 - makes pa.dataset available
import pyarrow.parquet as pq

from vidcurate.pipelines.cost import COST_FIELDS, describe_cost
from vidcurate.schemas.tables import KEPT, STATUS_COLUMNS, to_table
from vidcurate.stages.registry import CLIP_SOURCE, STAGES

MARKER = "_SUCCESS.json"
TMP = ".tmp"


def digest(*parts: str) -> str:
    """A short stable hash of strings: fingerprints and revisions."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageMarker:
    """What a completed stage folder says about itself: which settings and input made it
    (`fingerprint`, `input_revision`), what it kept (`revision`), its rows by status, its time and
    cost, and the fields its stage declares (`Stage.marker_fields`; a partitioned run's shard
    stage adds the partitions' timeline)."""

    stage: str
    fingerprint: str
    input_revision: str
    revision: str
    rows: int
    counts: dict
    transient_failed: int = 0
    rows_done: int | None = None  # rows its last run computed (None: all)
    seconds: float = 0.0
    cost: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """One flat JSON object: the typed entries, the cost and the stage's fields side by side."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("cost", "fields") and v is not None}
        return json.dumps({**flat, **self.cost, **self.fields}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageMarker:
        data = json.loads(text)
        typed = {f.name for f in fields(cls)} - {"cost", "fields"}
        return cls(
            **{k: v for k, v in data.items() if k in typed},
            cost={k: v for k, v in data.items() if k in COST_FIELDS},
            fields={k: v for k, v in data.items() if k not in typed and k not in COST_FIELDS},
        )

    @property
    def done(self) -> int:
        return self.rows if self.rows_done is None else self.rows_done

    def describe(self) -> str:
        """One log line: rows by status, time, and the throughput and partitions where there are some."""
        frames = self.fields.get("frames")
        rate = f", {frames} frames at {round(frames / max(self.seconds, 1e-3), 1)} frames/s" if frames is not None else ""
        transient = f" ({self.transient_failed} transient)" if self.transient_failed else ""
        redone = f"; {self.done} of them computed by its last run" if self.done != self.rows else ""
        parts = ""
        if "partitions" in self.fields:
            parts = f"; {self.fields['partitions']} partitions, first shards after {self.fields['first_shard_s']} s of {self.fields['wall_s']} s"
        return f"{self.stage}: {self.rows} rows {self.counts}{transient} in {self.seconds} s{rate}{redone}{parts}{describe_cost(self.cost)}"


class StageStore:
    """A run directory's stage folders: where each is, its marker and table, and the one way a
    stage's output becomes complete (`begin`, `commit`)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._tables: dict[tuple[Path, str], pa.Table] = {}

    def path(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def media(self) -> Path:
        return self.run_dir / "media"

    @staticmethod
    def marker(folder: Path) -> StageMarker | None:
        """The marker of a completed stage folder; None where the folder is not complete."""
        path = Path(folder) / MARKER
        return StageMarker.from_json(path.read_text()) if path.is_file() else None

    def completed(self, stage: str) -> StageMarker | None:
        return self.marker(self.path(stage))

    def table(self, folder: Path, stage: str | None = None) -> pa.Table:
        """A stage folder's rows (its Parquet parts; shards and other files may sit beside them),
        read once per revision of the folder."""
        folder = Path(folder)
        marker = self.marker(folder)
        stage = stage or marker.stage
        key = (folder, marker.revision + marker.fingerprint if marker else "")
        if key not in self._tables or marker is None:
            self._tables[key] = read_parts(folder, STAGES[stage].table)
        return self._tables[key]

    def kept(self, folder: Path) -> pa.Table:
        return self.table(folder).filter(pc.field("status") == KEPT)

    def clip_view(self, folder: Path, order: tuple[str, ...]) -> list[dict]:
        """Clips kept by the stage in `folder`, each merged with the columns of the stage that cut
        them and of every clip stage of `order` before it (sibling folders), sorted by clip id."""
        upstream = self.marker(folder).stage
        kept = set(self.kept(folder).column("clip_id").to_pylist())
        rows = {r["clip_id"]: r for r in self.table(folder.parent / CLIP_SOURCE, CLIP_SOURCE).to_pylist() if r["clip_id"] in kept}
        for stage in order[order.index(CLIP_SOURCE) + 1 : order.index(upstream) + 1]:
            for extra in self.table(folder.parent / stage, stage).to_pylist():
                if extra["clip_id"] in rows:
                    rows[extra["clip_id"]].update({k: v for k, v in extra.items() if k not in STATUS_COLUMNS})
        return [rows[c] for c in sorted(rows)]

    @staticmethod
    def begin(target: Path) -> Path:
        """A fresh temporary folder for `target`'s output."""
        tmp = Path(target).with_name(Path(target).name + TMP)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, target: Path, marker: StageMarker) -> None:
        """Mark the output complete and put it in place of the previous one."""
        (tmp / MARKER).write_text(marker.to_json())
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        self._tables = {k: v for k, v in self._tables.items() if k[0] != Path(target)}


def read_parts(folder: Path, schema: pa.Schema) -> pa.Table:
    """A stage's Parquet parts in a folder, in part order, under its schema."""
    parts = sorted(str(p) for p in Path(folder).glob("*.parquet"))
    return pa.dataset.dataset(parts, format="parquet", schema=schema).to_table()


def write_rows(folder: Path, rows: list[dict], schema: pa.Schema, name: str = "part-000000.parquet") -> None:
    pq.write_table(to_table(rows, schema), Path(folder) / name)


def part_path(folder: Path, index: int) -> Path:
    """Where batch `index` of a stage writes its rows."""
    return Path(folder) / f"part-{index:06d}.parquet"


def write_atomically(path: Path, data: bytes | str | pa.Table) -> None:
    """Write a file whole or not at all: a reader (or a later run) never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP}")
    try:
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
