"""Shard stage: kept clips -> WebDataset tars (`<prefix>-%06d.tar`), windows over contiguous
clips -> `<prefix>-windows-%06d.tar`, each with its own mp4; a Parquet sidecar per shard and
a wids-style `index.json` over both, written whole or not at all.

Only here is it known which clips ship, so the documents that name other samples are made here
(`stages.documents`): each window's, and each clip's in-context document (its nearest shipped
clips as examples), beside the clip's own document that ground made.

The runner writes into a temporary stage directory and publishes it only when every shard
is closed, so a crash never leaves a half shard where a trainer could read it. Tar headers
carry a fixed mtime and the sample order is a seeded hash of clip ids, so the same clips
give byte-identical shards, shuffled across shards the same way every time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import Field

from vidcurate.schemas.readers import INDEX
from vidcurate.schemas.sample import SIDECAR, build_sample, build_window_sample, sidecar_row
from vidcurate.schemas.tables import FAILED, KEPT, SHARDED
from vidcurate.stages.contract import Stage, SubRun
from vidcurate.stages.decontam import eval_ngrams, eval_question_drops
from vidcurate.stages.documents import in_context_documents, window_document
from vidcurate.stages.failures import failed, local_io_error
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.ground import windows
from vidcurate.stages.settings import StrictModel
from vidcurate.stages.shard_writer import ShardWriter
from vidcurate.stages.window_media import cut_window_job


class ShardConfig(StrictModel):
    prefix: str = Field("vidcurate", pattern=r"^[A-Za-z0-9_-]+$")
    maxcount: int = Field(1000, ge=1, description="samples per shard at most")
    maxsize: int = Field(1 << 30, ge=1 << 16, description="bytes per shard at most (one sample may overshoot)")
    shuffle_seed: int | None = Field(0, description="seeded order of samples across shards; null: sorted by clip id")
    keyframes: int = Field(0, ge=0, le=64, description="JPEG keyframes per sample as f000.jpg, f001.jpg, ...")
    keyframe_height: int = Field(224, ge=16)
    output: str | None = Field(None, description="publish the dataset here too: a directory or fsspec URL (s3://...)")
    license: str | None = Field(
        None, description="the dataset's license for its card (an SPDX id such as cc-by-4.0, as the sources allow); "
        "unset: `unknown`, with a visible note"
    )


STAGE = "shard"
DATASET = "dataset"  # inside the shard stage directory: what trainers read
log = logging.getLogger("vidcurate")


def sample_order(clip_ids: Iterable[str], seed: int | None) -> list[str]:
    """Deterministic shuffle: sort by a seeded hash, so neighbours in a shard come from anywhere."""
    if seed is None:
        return sorted(clip_ids)
    return sorted(clip_ids, key=lambda c: hashlib.sha256(f"{seed}/{c}".encode()).hexdigest())


def frame_needs(cfg: ShardConfig) -> tuple[FrameNeed, ...]:
    """The frames of each clip the keyframe members are made from (split keeps them)."""
    return (FrameNeed(cfg.keyframes),) if cfg.keyframes else ()


def keyframes_jpeg(clip: dict, count: int, height: int, mp4: bytes | None = None) -> list[bytes]:
    """`count` evenly spaced frames of a clip (`clip_uri`, `frames_uri`; `mp4`: its bytes, where
    read already) as JPEG, for filtering and previews without decoding video."""
    out = []
    for rgb in read_frames(clip, count, mp4=mp4)[0]:
        image = Image.fromarray(rgb)
        width = max(2, round(image.width * height / image.height))
        buf = io.BytesIO()
        image.resize((width, height), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_shards(
    clips: list[dict], videos: dict[str, dict], out_dir: Path, cfg: ShardConfig, stages: list[str]
) -> tuple[list[dict], list[dict]]:
    """Write kept clips (merged stage rows) in the given order; `stages` are those each clip
    passed. Returns (per-clip rows, shard manifest)."""
    entries = [
        (c["clip_id"], c["video_id"], c["clip_uri"], c.get("frames_uri"), partial(build_sample, c, videos[c["video_id"]], stages))
        for c in clips
    ]
    return _write(entries, out_dir, f"{cfg.prefix}-%06d.tar", "clip", cfg)


def write_window_shards(
    windows: list[dict], media: dict[str, dict], videos: dict[str, dict], out_dir: Path, cfg: ShardConfig, stages: list[str]
) -> tuple[list[dict], list[dict]]:
    """Write windows (`stages.ground.windows`) with their own media (`media[window_id]`) in the
    given order. Returns (per-window rows, shard manifest)."""
    entries = []
    for w in windows:
        m = media[w["window_id"]]
        entries.append((w["window_id"], w["video_id"], m["media_uri"], None, partial(build_window_sample, w, m, videos[w["video_id"]], stages)))
    return _write(entries, out_dir, f"{cfg.prefix}-windows-%06d.tar", "window", cfg)


def _write(entries: list[tuple], out_dir: Path, pattern: str, kind: str, cfg: ShardConfig) -> tuple[list[dict], list[dict]]:
    """(key, video_id, media uri, stored frames uri, annotation builder) entries -> shards named by `pattern`."""
    rows: list[dict] = []
    sidecars: dict[str, list[dict]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(out_dir / pattern), maxcount=cfg.maxcount, maxsize=cfg.maxsize) as sink:
        for key, video_id, media_uri, frames_uri, build in entries:
            row = {"clip_id": key, "video_id": video_id, "entity": kind, "stage": STAGE}
            try:
                sample = build()
                with fsspec.open(media_uri, "rb") as f:
                    media = f.read()
                members = {"__key__": key, "mp4": media, "json": json.dumps(sample, sort_keys=True).encode()}
                if cfg.keyframes:
                    clip = {"clip_uri": media_uri, "frames_uri": frames_uri}
                    for i, jpeg in enumerate(keyframes_jpeg(clip, cfg.keyframes, cfg.keyframe_height, media)):
                        members[f"f{i:03d}.jpg"] = jpeg
                sink.write(members)
            except Exception as exc:  # noqa: BLE001 - one bad sample must not sink the shard set
                if local_io_error(exc):
                    raise  # a full disk: the half-written shard must not ship; the run stops and a re-run redoes it
                rows.append({**row, **failed("write", exc)})
                continue
            shard = os.path.basename(sink.fname)
            sidecars.setdefault(shard, []).append(sidecar_row(sample, shard, len(sidecars.get(shard, []))))
            rows.append({**row, "status": KEPT, "reason": None, "shard": shard})
    manifest = []
    for shard, written in sorted(sidecars.items()):
        pq.write_table(pa.Table.from_pylist(written, schema=SIDECAR), out_dir / shard.replace(".tar", ".parquet"))
        manifest.append({"name": shard, "kind": kind, "samples": len(written), "bytes": (out_dir / shard).stat().st_size})
    return rows, manifest


def wids_index(manifest: list[dict], name: str) -> dict:
    """wids-style shard index; URLs are relative to the index, so the folder can move."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": name,
        "shardlist": [{"url": s["name"], "nsamples": s["samples"], "filesize": s["bytes"]} for s in manifest],
    }


def ship(clips: list[dict], ctx) -> tuple[list[dict], dict]:
    """The stage over every clip at once: clip shards in a seeded order, then (after ground)
    window samples, each with its own media cut on the executor's parallel map, then the wids
    index over both. Every clip and window gets its row: kept, or failed with its reason."""
    cfg = ctx.config
    by_id = {c["clip_id"]: c for c in clips}
    videos = {v["video_id"]: v for v in ctx.store.table("probe").to_pylist()}
    ordered = [by_id[c] for c in sample_order(by_id, cfg.shuffle_seed)]
    dataset = ctx.store.output / DATASET
    stages = list(ctx.run.passed)  # those each clip passed
    if "ground" in stages:
        ordered = with_in_context(ordered, ctx.sections["ground"], ctx.sections["dedup"], ctx.executor.map)
    rows, manifest = write_shards(ordered, videos, dataset, cfg, stages)
    extra = {"windows": 0}
    if "ground" in stages:
        shipped = [by_id[r["clip_id"]] for r in rows if r["status"] == KEPT]
        window_rows, window_manifest = _ship_windows(shipped, videos, dataset, stages, ctx)
        rows += window_rows
        manifest += window_manifest
        extra["windows"] = sum(r["status"] == KEPT for r in window_rows)
    (dataset / INDEX).write_text(json.dumps(wids_index(manifest, cfg.prefix), indent=1))
    return rows, {"shards": manifest, **extra}


def with_in_context(clips: list[dict], ground, dedup, map_each) -> list[dict]:
    """Each clip with its in-context document after its own (`ground.in_context_k` nearest of
    these clips as examples; near duplicates by `dedup.near_cosine`; the search at scale on
    `map_each`, the executor's parallel map)."""
    found = in_context_documents(clips, ground.in_context_k, ground.min_pair_similarity, dedup.near_cosine, map_each)
    return [{**c, "interleaved": json.dumps([*json.loads(c["interleaved"]), found[c["clip_id"]]])} if c["clip_id"] in found else c for c in clips]


def _ship_windows(shipped: list[dict], videos: dict, dataset: Path, stages: list[str], ctx) -> tuple[list[dict], list[dict]]:
    """Window samples over contiguous shipped clips, each with its own media cut from its clips;
    a window that cannot be cut gets a failed row with its reason (a full disk: transient)."""
    video_windows = windows(shipped, ctx.sections["ground"])
    if "decontam" in stages:
        video_windows = decontaminated(video_windows, ctx.sections["decontam"])
    clip_uri = {c["clip_id"]: c["clip_uri"] for c in shipped}
    jobs = [
        {
            "window_id": w["window_id"],
            "clip_uris": [clip_uri[c["key"]] for c in w["clips"]],
            "frames": w["end_frame"] - w["start_frame"],
            "fps": videos[w["video_id"]]["fps"],
        }
        for w in video_windows
    ]
    cut = ctx.executor.map(cut_window_job, jobs, cfg=ctx.sections["split"], media_dir=str(ctx.store.media / "windows")) if jobs else []
    media = {m["window_id"]: m for m in cut}
    failures = []
    for w in video_windows:
        if error := media[w["window_id"]]["error"]:
            log.warning("window %s left out: %s", w["window_id"], error["reason"])
            failures.append({"clip_id": w["window_id"], "video_id": w["video_id"], "entity": "window", "stage": STAGE, **error})
    by_id, ground = {c["clip_id"]: c for c in shipped}, ctx.sections["ground"]
    ok = {
        w["window_id"]: {**w, "interleaved": [window_document(w, by_id, ground.min_pair_similarity)]}
        for w in video_windows if not media[w["window_id"]]["error"]
    }
    ordered = [ok[i] for i in sample_order(ok, ctx.config.shuffle_seed)]
    rows, manifest = write_window_shards(ordered, media, videos, dataset, ctx.config, stages)
    return rows + failures, manifest


def decontaminated(video_windows: list[dict], decontam) -> list[dict]:
    """Windows less the QA items whose question decontam drops from a clip's (an n-gram of an
    eval set's questions), counted by set: a window's items are made here, after decontam ran."""
    sets = eval_ngrams(decontam)
    out = []
    for w in video_windows:
        qa, dropped = eval_question_drops(w["qa"], sets, decontam.ngram)
        out.append({**w, "qa": qa, "qa_dropped": dropped} if dropped else w)
    return out


def sub_config(cfg: ShardConfig, sub: SubRun) -> ShardConfig:
    """A sub-run's shards are named apart (`<prefix>-<name>-000000.tar`); a partition publishes
    nothing itself (its corpus run does), an increment publishes under `<output>/<id>/`."""
    output = None if sub.kind == "partition" or not cfg.output else f"{cfg.output.rstrip('/')}/{sub.name}"
    return cfg.model_copy(update={"prefix": f"{cfg.prefix}-{sub.name}", "output": output})


SPEC = Stage(
    name=STAGE,
    config_model=ShardConfig,
    table=SHARDED,
    always=True,
    # windows and documents: ground's settings, split's encoder settings, dedup's near duplicates,
    # decontam's eval questions (a window's QA items are made here)
    sections=("ground", "split", "dedup", "decontam"),
    unhashed=("license",),  # the card only, which every run writes again
    reasons={
        "write": (FAILED, "the sample could not be written into a shard"),
        "window": (FAILED, "the window's media could not be cut from its clips (a full disk: transient)"),
    },
    marker_fields={"shards": "concat", "windows": "sum"},
    whole=ship,
    frames=frame_needs,
    redo_unit=None,
    ships=DATASET,
    sub_config=sub_config,
)
