"""Every registered stage keeps the contract the generic runner relies on: an empty input gives
an empty table of its schema; a per-batch stage gives its rows in the order of its input (split:
a video's clips where the video was); a whole-run stage one row per input row; every row it does
not keep carries a code its stage declares. The stages run chained as in a pipeline (each reads
its predecessors' columns), on real videos and tiny models, each run by the in-process executor
from its declaration alone, plus an input file that does not exist and a clip whose file is gone."""

from __future__ import annotations

import pytest

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.executors import InProcessExecutor
from vidcurate.pipelines.ledger import known
from vidcurate.pipelines.store import read_parts
from vidcurate.schemas.tables import KEPT, STATUS_COLUMNS, to_table
from vidcurate.stages.contract import RunFacts, StageContext, StageView
from vidcurate.stages.registry import ALWAYS, OPTIONAL, STAGES, frame_needs

RUN = PipelineConfig(profile="tiny", stages=list(OPTIONAL), caption={"max_tokens": 256}, quality={"ocr": True, "nsfw": True})
NAMES = list(STAGES)


def _context(root, name: str, tables: dict) -> StageContext:
    output = root / name
    output.mkdir(parents=True, exist_ok=True)
    spec = STAGES[name]
    facts = RunFacts(root, profile=RUN.profile, passed=tuple(NAMES[: NAMES.index(name)]), frame_needs=frame_needs(RUN))
    sections = {s: getattr(RUN, s) for s in spec.sections}
    return StageContext(name, getattr(RUN, name), sections, facts, InProcessExecutor(), StageView(output, root / "media", tables.__getitem__))


def _apply(spec, rows: list[dict], ctx: StageContext):
    InProcessExecutor().run(spec, rows, ctx)
    return read_parts(ctx.store.output, spec.table)


def _next_input(spec, given: list[dict], table) -> list[dict]:
    """What the stage after this one reads: the rows it kept (reversed: a stage that sorted
    would show), each with its predecessors' columns."""
    produced = table.to_pylist()
    if spec.reads != "clips":  # probe's videos, split's clips: the rows themselves
        return [r for r in reversed(produced) if r["status"] == KEPT]
    by_key = {r["clip_id"]: r for r in produced}
    return [{**c, **{k: v for k, v in by_key[c["clip_id"]].items() if k not in STATUS_COLUMNS}} for c in given if by_key[c["clip_id"]]["status"] == KEPT]


@pytest.fixture(scope="module")
def chained(tmp_path_factory, synthetic_videos) -> dict[str, tuple[list[dict], object]]:
    """Each stage's input rows and its output table."""
    root = tmp_path_factory.mktemp("contract")
    videos, _ = synthetic_videos
    rows = [{"uri": str(p)} for p in sorted(videos.glob("*.mp4"))[:2]] + [{"uri": str(root / "missing.mp4")}]
    rows.reverse()
    out, tables = {}, {}
    for name, spec in STAGES.items():
        ctx = _context(root, name, tables)
        given = spec.project(spec.prepare(rows, ctx))
        table = _apply(spec, given, ctx)
        out[name], tables[name] = (given, table), table
        rows = _next_input(spec, rows, table)
        if name == "split":
            gone = {**rows[0], "clip_id": rows[0]["clip_id"] + "-gone", "clip_uri": rows[0]["clip_uri"] + ".gone.mp4", "frames_uri": None}
            rows = [gone, *rows]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_input_gives_an_empty_table_of_the_stage_schema(name, tmp_path):
    spec = STAGES[name]
    tables = {"probe": to_table([], STAGES["probe"].table)}
    table = _apply(spec, [], _context(tmp_path, name, tables))
    assert table.num_rows == 0 and table.schema == spec.table


@pytest.mark.parametrize("name", NAMES)
def test_rows_in_input_order_of_the_stage_schema_and_codes_for_the_rest(chained, name):
    spec = STAGES[name]
    given, table = chained[name]
    assert given, f"{name} got no rows: the stages before it kept none"
    assert table.schema == spec.table
    keys = table.column(spec.key).to_pylist()
    if spec.reads == "videos":  # one video's clips where the video was
        order = [r["video_id"] for r in given]
        assert table.column("video_id").to_pylist() == sorted(table.column("video_id").to_pylist(), key=order.index)
    elif spec.whole is not None:  # decided over all rows at once: one row each (and a row per window it made)
        entities = table.column("entity").to_pylist() if "entity" in table.column_names else ["clip"] * len(keys)
        assert sorted(k for k, e in zip(keys, entities) if e == "clip") == sorted(r[spec.key] for r in given)
    else:
        assert keys == [r[spec.key] for r in given]
    assert set(table.column("stage").to_pylist()) == {name}
    for row in table.to_pylist():
        if row["status"] != KEPT:
            assert row["reason"] and known(name, row["status"], row["reason"]), row


def test_the_missing_input_and_the_missing_clip_fail_with_a_code_where_read(chained):
    """Probe ends the missing input; the first stage that opens the gone clip fails it, and no
    later stage sees it."""
    (missing,) = [r for r in chained["probe"][1].to_pylist() if r["uri"].endswith("missing.mp4")]
    assert missing["status"] != KEPT and known("probe", missing["status"], missing["reason"])
    (failed,) = [r for r in chained["caption"][1].to_pylist() if r["clip_id"].endswith("-gone")]
    assert failed["status"] == "failed" and known("caption", "failed", failed["reason"])
    later = NAMES[NAMES.index("caption") + 1 :]
    assert [r for name in later for r in chained[name][0] if r["clip_id"].endswith("-gone")] == []


def test_every_list_of_stages_derives_from_the_registry():
    assert RUN.pipeline() == tuple(NAMES)
    assert PipelineConfig(profile="tiny", stages=[]).pipeline() == ("probe", "split", "shard")
    assert all(spec.name == name for name, spec in STAGES.items())
    assert list(OPTIONAL) == [n for n in NAMES if n not in ("probe", "split", "shard")] and ALWAYS == ("probe", "split", "shard")
