"""Runs stages on Ray Data, each into its own directory, published atomically with a marker.

Layout of a run directory:
    probe/   videos table        split/  clips table        media/clips/<clip_id>.mp4
    caption/ ground/ embed/ quality/ dedup/   optional clip stages (config `stages`), each a
             table keyed by clip_id holding the clips its upstream stage kept
    shard/   per-clip shard table; dataset/: <prefix>-NNNNNN.tar with a .parquet sidecar each,
             index.json (wids), stats.json, README.md (dataset card)
    ledger.parquet                 one final status per input video and per clip

A stage directory appears only when its work is complete (written as `<stage>.tmp`, then
renamed) and carries `_SUCCESS.json` with a fingerprint of its config and of its input's
marker. A re-run skips a stage whose fingerprint matches, and redoes it (and so everything
after it) when its settings or its input changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # noqa: F401 - makes pa.dataset available
import pyarrow.parquet as pq

from pipelines.config import PipelineConfig
from pipelines.card import dataset_card
from pipelines.ledger import build_ledger, summarize
from schemas.readers import INDEX
from schemas.tables import CLIPS, KEPT, SHARDED, STATUS_COLUMNS, TABLES, VIDEOS, to_table
from stages import probe, shard, split
from stages.media import list_inputs
from stages.publish import publish

log = logging.getLogger("vidcurate")

ALL_STAGES = tuple(TABLES)  # every stage a run directory can hold, in pipeline order
MARKER = "_SUCCESS.json"
DATASET = "dataset"  # inside the shard stage directory: what trainers read
WINDOWS = "windows.jsonl"  # in dataset/: video-level grounded samples over shipped clips (with ground)


def ensure_ray(cfg: PipelineConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # "local": a fresh local Ray even where `ray start` left a cluster behind; join one by address.
    kwargs = {"address": cfg.ray.address} if cfg.ray.address else {"address": "local", "num_cpus": cfg.ray.num_cpus}
    ray.init(**kwargs, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = True


def read_stage_table(stage_dir: Path, stage: str) -> pa.Table:
    """The stage's Parquet parts (other files, such as shards, may sit beside them)."""
    parts = sorted(str(p) for p in Path(stage_dir).glob("*.parquet"))
    return pa.dataset.dataset(parts, format="parquet", schema=TABLES[stage]).to_table()


def read_marker(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def describe_marker(marker: dict) -> str:
    """One log line per stage: rows by status, time, and throughput where the stage has one."""
    rate = f", {marker['frames']} frames at {marker['frames_per_s']} frames/s" if "frames_per_s" in marker else ""
    return f"{marker['stage']}: {marker['rows']} rows {marker['counts']} in {marker['seconds']} s{rate}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class Runner:
    """Executes stages of one run directory; every stage can also run alone on explicit dirs."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        order = cfg.pipeline()
        self.upstream = {stage: (order[i - 1] if i else None) for i, stage in enumerate(order)}

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def fingerprint(self, stage: str, input_dir: Path | None) -> str:
        upstream = read_marker(input_dir)["fingerprint"] if input_dir is not None else ""
        return _digest(stage, self.cfg.stage_hash(stage), upstream)

    def is_complete(self, stage: str, input_dir: Path | None = None, output_dir: Path | None = None) -> bool:
        input_dir, output_dir = self._dirs(stage, input_dir, output_dir)
        marker = read_marker(output_dir)
        if marker is None or (input_dir is not None and read_marker(input_dir) is None):
            return False
        return marker["fingerprint"] == self.fingerprint(stage, input_dir)

    def _dirs(self, stage: str, input_dir, output_dir) -> tuple[Path | None, Path]:
        if stage not in self.upstream:
            raise ValueError(f"stage {stage!r} is not in this config's pipeline {list(self.upstream)}")
        up = self.upstream[stage]
        input_dir = Path(input_dir) if input_dir else (self.stage_dir(up) if up else None)
        return input_dir, Path(output_dir) if output_dir else self.stage_dir(stage)

    def run_stage(self, stage: str, input_dir: str | Path | None = None, output_dir: str | Path | None = None) -> dict:
        """Run one stage unless complete; returns its marker (with row counts by status)."""
        input_dir, output_dir = self._dirs(stage, input_dir, output_dir)
        if input_dir is not None and read_marker(input_dir) is None:
            raise FileNotFoundError(f"{stage} needs a completed {self.upstream[stage]} stage at {input_dir} (no {MARKER})")
        if self.is_complete(stage, input_dir, output_dir):
            log.info("%s: complete, skipped (%s)", stage, output_dir)
            return read_marker(output_dir)
        started = time.monotonic()
        tmp = output_dir.with_name(output_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        extra = getattr(self, f"_run_{stage}")(input_dir, output_dir, tmp) or {}
        table = read_stage_table(tmp, stage)
        statuses = table.column("status").to_pylist()
        marker = {
            "stage": stage,
            "fingerprint": self.fingerprint(stage, input_dir),
            "rows": table.num_rows,
            "counts": {s: statuses.count(s) for s in sorted(set(statuses))},
            "seconds": round(time.monotonic() - started, 2),
            **extra,
        }
        if "start_frame" in table.column_names:  # a table of frame spans: report throughput
            spans = pc.subtract(table.column("end_frame"), table.column("start_frame"))
            marker["frames"] = pc.sum(spans).as_py() or 0
            marker["frames_per_s"] = round(marker["frames"] / max(marker["seconds"], 1e-3), 1)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        shutil.rmtree(output_dir, ignore_errors=True)
        os.replace(tmp, output_dir)
        log.info("%s", describe_marker(marker))
        return marker

    def _run_probe(self, _input_dir, _output_dir, tmp: Path) -> None:
        import ray

        if not self.cfg.inputs:
            raise ValueError("no inputs: set `inputs` in the config or pass --inputs")
        uris = list_inputs(self.cfg.inputs)
        if not uris:
            raise FileNotFoundError(f"no input files found for {self.cfg.inputs!r}")
        ensure_ray(self.cfg)
        ds = ray.data.from_items([{"uri": u} for u in uris], override_num_blocks=min(len(uris), 1000))
        root = self.cfg.inputs if Path(self.cfg.inputs).is_dir() else None
        ds = ds.map_batches(
            probe.probe_batch,
            fn_kwargs={"cfg": self.cfg.probe, "root": root},
            batch_format="pyarrow",
            **self.cfg.probe.resources.map_batches_args(),
        )
        rows = probe.mark_exact_duplicates(ds.take_all())
        _write(tmp, sorted(rows, key=lambda r: r["uri"]), VIDEOS)

    def _run_split(self, input_dir: Path, output_dir: Path, tmp: Path) -> None:
        import ray

        videos = read_stage_table(input_dir, "probe").filter(pc.field("status") == KEPT)
        media = output_dir.parent / "media" / "clips"
        if videos.num_rows:
            ensure_ray(self.cfg)
            ds = ray.data.from_arrow(videos).repartition(videos.num_rows)
            ds = ds.map_batches(
                split.split_batch,
                fn_kwargs={"cfg": self.cfg.split, "media_dir": str(media)},
                batch_format="pyarrow",
                **self.cfg.split.resources.map_batches_args(),
            )
            ds.write_parquet(str(tmp))
        if not any(tmp.glob("*.parquet")):
            _write(tmp, [], CLIPS)

    def clip_view(self, input_dir: Path) -> list[dict]:
        """Clips kept by the stage in `input_dir`, each row merged with the columns of split and
        of every clip stage before it (sibling directories of `input_dir`), sorted by clip id."""
        upstream = read_marker(input_dir)["stage"]
        kept = set(read_stage_table(input_dir, upstream).filter(pc.field("status") == KEPT).column("clip_id").to_pylist())
        rows = {r["clip_id"]: r for r in read_stage_table(input_dir.parent / "split", "split").to_pylist() if r["clip_id"] in kept}
        order = self.cfg.pipeline()
        for stage in order[order.index("split") + 1 : order.index(upstream) + 1]:
            for extra in read_stage_table(input_dir.parent / stage, stage).to_pylist():
                if extra["clip_id"] in rows:
                    rows[extra["clip_id"]].update({k: v for k, v in extra.items() if k not in STATUS_COLUMNS})
        return [rows[c] for c in sorted(rows)]

    def _map_clips(self, stage: str, rows: list[dict], tmp: Path, fn, resources, decode=None, **kwargs) -> None:
        """Run a stage core over clip rows on Ray Data; `fn` is a function or an actor class.
        `decode` = (function, kwargs): a CPU step (Ray tasks) streaming into `fn`, so decoding
        runs in parallel with the model instead of inside the (GPU) actors."""
        import ray

        if rows:
            ensure_ray(self.cfg)
            if ray.cluster_resources().get("CPU", 0) < 2:
                # Ray Data's budget never grants one operator every CPU, so on a 1-CPU cluster
                # an actor (or a task beside it) would wait forever: run the core here instead.
                table = pa.Table.from_pylist(rows)
                table = decode[0](table, **decode[1]) if decode else table
                out = fn(**kwargs)(table) if isinstance(fn, type) else fn(table, **kwargs)
                pq.write_table(out, tmp / "part-000000.parquet")
                return
            args = resources.map_batches_args()
            if isinstance(fn, type):
                args["concurrency"] = args["concurrency"] or 1
                kwargs = {"fn_constructor_kwargs": kwargs}
            else:
                kwargs = {"fn_kwargs": kwargs}
            ds = ray.data.from_arrow(pa.Table.from_pylist(rows)).repartition(max(1, -(-len(rows) // resources.batch_size)))
            if decode is not None:
                ds = ds.map_batches(decode[0], fn_kwargs=decode[1], batch_format="pyarrow", batch_size=resources.batch_size, num_cpus=1)
            ds.map_batches(fn, batch_format="pyarrow", **args, **kwargs).write_parquet(str(tmp))
        if not any(tmp.glob("*.parquet")):
            _write(tmp, [], TABLES[stage])

    def _run_caption(self, input_dir: Path, _output_dir, tmp: Path) -> None:
        from stages import caption

        fields = ("clip_id", "video_id", "clip_uri", "start_s", "end_s")
        rows = [{k: r[k] for k in fields} for r in self.clip_view(input_dir)]
        cfg = self.cfg.caption
        decode = (caption.decode_batch, {"cfg": cfg})
        self._map_clips("caption", rows, tmp, caption.CaptionWorker, cfg.resources, decode, cfg=cfg, profile=self.cfg.profile)

    def _run_ground(self, input_dir: Path, _output_dir, tmp: Path) -> dict:
        from stages.ground import GroundWorker, distractor_pool

        clips = self.clip_view(input_dir)
        pool = distractor_pool(clips)
        fields = ("clip_id", "video_id", "start_s", "end_s", "caption", "events")
        rows = [{**{k: c[k] for k in fields}, "distractors": pool[c["clip_id"]]} for c in clips]
        kwargs = {"cfg": self.cfg.ground, "caption_cfg": self.cfg.caption, "profile": self.cfg.profile}
        self._map_clips("ground", rows, tmp, GroundWorker, self.cfg.ground.resources, None, **kwargs)

    def _run_embed(self, input_dir: Path, _output_dir, tmp: Path) -> None:
        from stages import embed

        fields = ("clip_id", "video_id", "clip_uri")
        rows = [{**{k: c[k] for k in fields}, "caption": c.get("caption")} for c in self.clip_view(input_dir)]
        cfg = self.cfg.embed
        decode = (embed.decode_batch, {"keyframes": cfg.keyframes})
        self._map_clips("embed", rows, tmp, embed.EmbedWorker, cfg.resources, decode, cfg=cfg, profile=self.cfg.profile)

    def _run_quality(self, input_dir: Path, _output_dir, tmp: Path) -> None:
        from stages import content_flags, quality

        cfg = self.cfg.quality
        fields = ("clip_id", "video_id", "clip_uri", "start_s", "end_s", "clip_width", "clip_height")
        optional = ("caption", "clip_score", "image_emb")
        rows = [{**{k: c[k] for k in fields}, **{k: c.get(k) for k in optional}} for c in self.clip_view(input_dir)]
        content_flags.require(cfg.ocr, cfg.nsfw)
        flags = {"ocr": cfg.ocr, "nsfw": cfg.nsfw, "count": cfg.flag_frames}
        kwargs = {
            "frames_per_clip": cfg.frames,
            "aesthetic_path": cfg.aesthetic_head,
            "with_aesthetic": "embed" in self.cfg.stages,
            "flags": flags,
        }
        self._map_clips("quality", rows, tmp, quality.score_batch, cfg.resources, None, **kwargs)
        scored = read_stage_table(tmp, "quality").to_pylist()
        for part in tmp.glob("*.parquet"):
            part.unlink()
        _write(tmp, sorted(quality.decide(scored, cfg.rules, cfg.rank_scores), key=lambda r: r["clip_id"]), TABLES["quality"])

    def _run_dedup(self, input_dir: Path, _output_dir, tmp: Path) -> dict:
        from stages import dedup

        cfg = self.cfg.dedup
        rows = self.clip_view(input_dir)
        clustered = dedup.clustered_pairs
        if len(rows) > cfg.flat_max:
            ensure_ray(self.cfg)
            clustered = dedup.ray_clustered_pairs
        history = dedup.load_history(cfg.history, dedup.run_id(self.run_dir))
        decided = dedup.dedup(rows, cfg, history, clustered)
        pq.write_table(dedup.dedup_table(decided), tmp / "part-000000.parquet")
        return {"history_clips": len(history)}

    def _run_shard(self, input_dir: Path, _output_dir, tmp: Path) -> dict:
        by_id = {c["clip_id"]: c for c in self.clip_view(input_dir)}
        videos = {v["video_id"]: v for v in read_stage_table(input_dir.parent / "probe", "probe").to_pylist()}
        ordered = [by_id[c] for c in shard.sample_order(by_id, self.cfg.shard.shuffle_seed)]
        dataset = tmp / DATASET
        upstream = read_marker(input_dir)["stage"]
        stages = list(self.cfg.pipeline()[: self.cfg.pipeline().index(upstream) + 1])  # those each clip passed
        rows, manifest = shard.write_shards(ordered, videos, dataset, self.cfg.shard, stages)
        index = shard.wids_index(manifest, self.cfg.shard.prefix)
        (dataset / INDEX).write_text(json.dumps(index, indent=1))
        _write(tmp, rows, SHARDED)
        if "ground" not in stages:
            return {"shards": manifest}
        from stages.ground import windows

        shipped = [by_id[r["clip_id"]] for r in rows if r["status"] == KEPT]
        video_windows = windows(shipped, self.cfg.ground.max_window_s)
        (dataset / WINDOWS).write_text("".join(json.dumps(w, sort_keys=True) + "\n" for w in video_windows))
        return {"shards": manifest, "windows": len(video_windows)}

    def finish(self) -> dict:
        """Write the ledger; with shards: stats.json and the dataset card, then publish if asked."""
        tables = {s: read_stage_table(self.stage_dir(s), s) for s in self.cfg.pipeline() if read_marker(self.stage_dir(s))}
        ledger = build_ledger(tables)
        pq.write_table(ledger, self.run_dir / "ledger.parquet")
        shard_marker = read_marker(self.stage_dir("shard")) or {}
        stats = summarize(ledger, shard_marker.get("shards", []))
        if shard_marker:
            dataset = self.stage_dir("shard") / DATASET
            (dataset / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
            (dataset / "README.md").write_text(dataset_card(stats, self.cfg, dataset))
            if self.cfg.shard.output:
                stats["published"] = publish(dataset, self.cfg.shard.output)
                log.info("published %d shards to %s", len(stats["shards"]), self.cfg.shard.output)
            if "dedup" in self.cfg.stages and self.cfg.dedup.history:
                self._record_shipped()
        return stats

    def _record_shipped(self) -> None:
        """Add this run's shipped clips to the dedup history, so later runs never re-admit them."""
        from stages.dedup import append_history, run_id

        shipped = set(read_stage_table(self.stage_dir("shard"), "shard").filter(pc.field("status") == KEPT).column("clip_id").to_pylist())
        rows = [r for r in self.clip_view(self.stage_dir("dedup")) if r["clip_id"] in shipped]
        append_history(self.cfg.dedup.history, run_id(self.run_dir), rows)

    def run_all(self, on_stage: Callable[[str], None] | None = None) -> dict:
        for stage in self.cfg.pipeline():
            if on_stage:
                on_stage(stage)
            self.run_stage(stage)
        return self.finish()


def _write(directory: Path, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(to_table(rows, schema), directory / "part-000000.parquet")
