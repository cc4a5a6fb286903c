"""Dataset card (README.md beside the shards): what is inside, how it was made, how to read it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from pipelines.config import PipelineConfig
from schemas.sample import SCHEMA_VERSION

DURATION_EDGES_S = [0, 2, 5, 10, 20, 30, 60, float("inf")]


def _duration_histogram(durations: np.ndarray) -> list[str]:
    counts, _ = np.histogram(durations, bins=DURATION_EDGES_S)
    rows = ["| duration | clips |", "|---|---|"]
    for lo, hi, n in zip(DURATION_EDGES_S[:-1], DURATION_EDGES_S[1:], counts):
        label = f"{lo:g}-{hi:g} s" if hi != float("inf") else f">= {lo:g} s"
        rows.append(f"| {label} | {n} |")
    return rows


def dataset_card(stats: dict, cfg: PipelineConfig, dataset_dir: Path) -> str:
    parts = sorted(p for p in dataset_dir.glob("*.parquet") if "-windows-" not in p.name)  # clip sidecars
    side = pq.ParquetDataset(parts).read().to_pylist() if parts else []
    durations = np.array([r["duration_s"] for r in side], dtype=float)
    sizes = Counter(f"{r['width']}x{r['height']}" for r in side)
    cuts = Counter(r["cut_kind"] for r in side)
    clip_shards = [s for s in stats["shards"] if s.get("kind", "clip") == "clip"]
    window_shards = [s for s in stats["shards"] if s.get("kind") == "window"]
    first, last = (clip_shards[0]["name"], clip_shards[-1]["name"]) if clip_shards else ("", "")
    pattern = f"{cfg.shard.prefix}-{{{first[-10:-4]}..{last[-10:-4]}}}.tar" if first else "(no shards)"
    v, c = stats["videos"], stats["clips"]
    lines = [
        f"# {cfg.shard.prefix}",
        "",
        f"Video clips for grounded/interleaved multimodal training, made by vidcurate (sample schema {SCHEMA_VERSION}).",
        "",
        "## Contents",
        "",
        f"- {stats['samples']} clip samples in {len(clip_shards)} WebDataset shards (`{pattern}`), "
        f"{durations.sum():.1f} s of video in total",
        f"- {stats.get('window_samples', 0)} video-level window samples in {len(window_shards)} shards "
        f"(`{cfg.shard.prefix}-windows-*.tar`): runs of contiguous clips, each with its own mp4; their spans are "
        "seconds in that mp4",
        "- members per sample: `mp4` (H.264 clip), `json` (annotation)"
        + (f", `f000.jpg`..`f{cfg.shard.keyframes - 1:03d}.jpg` (keyframes)" if cfg.shard.keyframes else ""),
        "- annotations: clip spans with source provenance; captions, events and QA: none in this release",
        f"- inputs: {v['total']} videos, {v['kept']} kept, {v['rejected']} rejected, {v['failed']} failed; "
        f"clips: {c['total']}, {c['kept']} kept, {c['rejected']} rejected, {c['failed']} failed",
        "",
        "Why inputs and clips were left out (ledger reason codes):",
        "",
        *([f"- {reason}: {n}" for reason, n in {**v["reasons"], **c["reasons"]}.items()] or ["- none"]),
        "",
        "## Distributions",
        "",
        *_duration_histogram(durations),
        "",
        "| clip size | clips |",
        "|---|---|",
        *[f"| {size} | {n} |" for size, n in sizes.most_common()],
        "",
        "| clip starts at | clips |",
        "|---|---|",
        *[f"| {kind} | {n} |" for kind, n in cuts.most_common()],
        "",
        "## Reading",
        "",
        "`index.json` (wids format) lists the shards; each `<shard>.parquet` has one row per sample with",
        "the annotation's fields, for filtering without opening tars.",
        "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("{pattern}", shardshuffle=False)',
        "",
        "from datasets import load_dataset",
        f'hf = load_dataset("webdataset", data_files={{"train": "{cfg.shard.prefix}-0*.tar"}}, streaming=True)',
        f'windows = load_dataset("webdataset", data_files={{"train": "{cfg.shard.prefix}-windows-*.tar"}}, streaming=True)',
        "```",
        "",
        "## Configuration used",
        "",
        "Execution settings (run directory, Ray address) are left out: they do not change the data.",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(exclude={"run_dir", "ray"}), sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
