"""Every registered clip stage keeps the contract the generic runner relies on: an empty batch
gives an empty table of its schema; a batch gives one row per clip in the order given, of its
schema; every row it does not keep carries a registered reason code. The stages run chained as
in a pipeline (each reads its predecessors' columns), on real clips and tiny models, through
the in-process executor, plus one clip whose file is gone."""

from __future__ import annotations

import pytest

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.executors import map_in_process
from vidcurate.schemas.outcomes import known
from vidcurate.schemas.tables import KEPT, STATUS_COLUMNS
from vidcurate.stages.registry import MAPPED

RUN = PipelineConfig(profile="tiny", stages=list(MAPPED), caption={"max_tokens": 256}, quality={"ocr": True, "nsfw": True})


@pytest.fixture(scope="module")
def chained(cut_clips) -> dict[str, tuple[list[dict], object]]:
    """Each stage's input rows (clip ids in reverse order: a stage that sorted would show) and
    its output table, the input of the next stage being the clips it kept, with its columns."""
    gone = {**cut_clips[0], "clip_id": cut_clips[0]["clip_id"] + "-gone", "clip_uri": cut_clips[0]["clip_uri"] + ".gone.mp4"}
    clips = sorted([*cut_clips[:3], gone], key=lambda c: c["clip_id"], reverse=True)
    out = {}
    for name, spec in MAPPED.items():
        rows = spec.project(spec.prepare(clips, RUN))
        table = map_in_process(spec, rows, RUN)
        out[name] = (rows, table)
        produced = {r["clip_id"]: r for r in table.to_pylist()}
        clips = [{**c, **{k: v for k, v in produced[c["clip_id"]].items() if k not in STATUS_COLUMNS}} for c in clips if produced[c["clip_id"]]["status"] == KEPT]
    return out


@pytest.mark.parametrize("name", list(MAPPED))
def test_an_empty_batch_gives_an_empty_table_of_the_stage_schema(name):
    table = map_in_process(MAPPED[name], [], RUN)
    assert table.num_rows == 0 and table.schema == MAPPED[name].table


@pytest.mark.parametrize("name", list(MAPPED))
def test_one_row_per_clip_in_order_of_the_stage_schema_and_codes_for_the_rest(chained, name):
    rows, table = chained[name]
    assert rows, f"{name} got no clips: the stages before it kept none"
    assert table.schema == MAPPED[name].table
    assert table.column("clip_id").to_pylist() == [r["clip_id"] for r in rows]
    assert table.column("stage").to_pylist() == [name] * len(rows)
    for row in table.to_pylist():
        if row["status"] != KEPT:
            assert row["reason"] and known(name, row["status"], row["reason"]), row


def test_the_missing_clip_fails_with_a_code_where_it_is_read(chained):
    """The first stage that opens the file fails the clip; no later stage sees it."""
    (failed,) = [r for r in chained["caption"][1].to_pylist() if r["clip_id"].endswith("-gone")]
    assert failed["status"] == "failed" and known("caption", "failed", failed["reason"])
    assert [r for name in list(MAPPED)[1:] for r in chained[name][0] if r["clip_id"].endswith("-gone")] == []


def test_the_registry_is_the_pipeline_order_of_the_mapped_stages():
    order = PipelineConfig(profile="tiny").pipeline()
    assert list(MAPPED) == [s for s in order if s in MAPPED]
    assert all(spec.name == name for name, spec in MAPPED.items())
