"""Dataset card (README.md beside the shards), in the Hugging Face Hub's dataset-card form.

Every statement is derived from the data it describes: `content_stats` reads the shard
sidecars (each holds its samples' whole annotations) and the run's stage tables, the result
goes into stats.json, and the card renders stats.json and nothing else, so the card and
stats.json can never disagree. YAML front matter: `license` from `shard.license` (`unknown`,
with a visible note, when unset), task categories, tags, size category, and `configs` whose
`data_files` name the clip and the window shards, so `datasets.load_dataset(folder)` picks
the WebDataset builder with no arguments.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from vidcurate.pipelines.config import PipelineConfig
from vidcurate.pipelines.export import render
from vidcurate.pipelines.interleaved import WORDING, documents_of
from vidcurate.pipelines.ledger import reason_code
from vidcurate.schemas.sample import SCHEMA_VERSION

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
TASK_CATEGORIES = ["video-text-to-text"]
TAGS = ["video", "webdataset", "temporal-grounding", "dense-video-captioning", "vidcurate"]
PERCENTILES = (0, 10, 50, 90, 100)


def content_stats(dataset_dir: Path, tables: dict[str, pa.Table], cfg: PipelineConfig) -> dict:
    """What the shards hold and how they were made: the figures the card states."""
    annotations = {"clip": [], "window": []}
    for part in sorted(dataset_dir.glob("*.parquet")):
        for row in pq.read_table(part, columns=["json"]).to_pylist():
            meta = json.loads(row["json"])
            annotations[meta.get("kind", "clip")].append(meta)
    clips, windows = annotations["clip"], annotations["window"]
    return {
        "video_hours": round(sum(m["duration_s"] for m in clips) / 3600, 4),
        "qa_items": {kind: _by_task(q["task"] for m in found for q in _qa(m)) for kind, found in annotations.items()},
        "negatives": {kind: _by_task(q["task"] for m in found for q in _qa(m) if q.get("negative")) for kind, found in annotations.items()},
        "dropped_by_verification": {kind: _dropped(found) for kind, found in annotations.items()},
        "verification": _spread([q["verification"] for m in clips + windows for q in _qa(m) if q.get("verification") is not None]),
        "events_refined": _refined(clips),
        "events_per_clip": _spread([len(m["caption"]["events"]) for m in clips if "caption" in m]),
        "documents": _documents(clips + windows),
        "window_samples": len(windows),
        "models": _models(clips, tables, cfg),
        "scores": {name: _spread(v) for name, v in sorted(_scores(clips).items())},
        "rejections": _rejections(tables),
        "duplicates": _duplicates(tables.get("dedup")),
        "decontamination": _decontamination(tables.get("decontam"), cfg, windows),
        "speech": _speech(clips),
    }


def _speech(clips: list[dict]) -> dict:
    """What the shipped clips say (the speech stage's transcripts): how many speak, for how long,
    in which languages."""
    heard = [m["speech"] for m in clips if "speech" in m]
    voiced = sum(s["end_s"] - s["start_s"] for spoken in heard for s in spoken.get("voice_activity", []))
    return {
        "clips": len(heard),
        "clips_with_speech": sum(not spoken["no_speech"] for spoken in heard),
        "speech_hours": round(voiced / 3600, 4),
        "words": sum(len(spoken["words"]) for spoken in heard),
        "languages": dict(sorted(Counter(spoken["language"] for spoken in heard if spoken["language"]).items())),
    }


@lru_cache(maxsize=1)
def _text_tokenizer():
    """CLIP's BPE (its vocabulary ships inside open_clip): the tokens a document's text counts."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _documents(samples: list[dict]) -> dict[str, dict]:
    """The interleaved documents shipped, by kind: how many, their images and tokens of text
    (CLIP's BPE, times rendered as exporters render them), and the (image, text) pairs the embed
    model scored and those the alignment filter dropped."""
    found: dict[str, dict] = {}
    for meta in samples:
        for document in documents_of(meta):
            entry = found.setdefault(document["kind"], {"documents": 0, "images": [], "tokens": [], "scored": 0, "dropped": 0})
            entry["documents"] += 1
            entry["images"].append(sum(part["type"] != "text" for part in document["parts"]))
            texts = [render(p["text"], p["spans"], WORDING) for p in document["parts"] if p["type"] == "text"]
            entry["tokens"].append(sum(len(_text_tokenizer().encode(text)) for text in texts))
            entry["scored"] += document["pairs"]["scored"]
            entry["dropped"] += document["pairs"]["dropped"]
    return {kind: {**e, "images": _spread(e["images"]), "tokens": _spread(e["tokens"])} for kind, e in sorted(found.items())}


def _qa(meta: dict) -> list[dict]:
    return (meta.get("grounding") or {}).get("qa") or []


def _by_task(tasks) -> dict[str, int]:
    return dict(sorted(Counter(tasks).items()))


def _dropped(samples: list[dict]) -> dict[str, int]:
    """Items ground dropped from these samples: their events' span verification was under `ground.min_verification`."""
    total: Counter = Counter()
    for meta in samples:
        total.update((meta.get("grounding") or {}).get("dropped") or {})
    return dict(sorted(total.items()))


def _refined(clips: list[dict]) -> dict[str, int]:
    """Events of the shipped clips, and those whose boundaries refinement moved off the captioner's."""
    events = [e for m in clips for e in (m.get("caption") or {}).get("events", [])]
    moved = [e for e in events if "coarse_start_s" in e and (e["coarse_start_s"], e["coarse_end_s"]) != (e["start_s"], e["end_s"])]
    return {"events": len(events), "moved": len(moved)}


def _spread(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    pct = np.percentile(np.asarray(values, dtype=float), PERCENTILES)
    return {"count": len(values), "mean": round(float(np.mean(values)), 4), **{f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, pct)}}


def _scores(clips: list[dict]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for meta in clips:
        for name, value in (meta.get("scores") or {}).items():
            values.setdefault(name, []).append(float(value))
    return values


def _models(clips: list[dict], tables: dict[str, pa.Table], cfg: PipelineConfig) -> dict:
    """Which models made the data; `random_weights`: a tiny (random-initialised) model ran."""
    models = {}
    caption_ids = sorted({m["caption"]["model"] for m in clips if "caption" in m})
    if "caption" in tables:
        tiny = cfg.caption.model is None
        models["caption"] = {"id": caption_ids, "backend": cfg.caption.backend, "profile": cfg.profile, "random_weights": tiny}
    if "speech" in tables:
        ids = sorted(set(tables["speech"].column("speech_model").drop_null().to_pylist()))
        tiny = cfg.speech.model is None and cfg.speech.backend != "pocketsphinx"  # pocketsphinx's bundled model is real
        models["speech"] = {"id": ids, "backend": cfg.speech.backend, "profile": cfg.profile, "random_weights": tiny}
    if "embed" in tables:
        ids = sorted(set(tables["embed"].column("embed_model").drop_null().to_pylist()))
        tiny = cfg.embed.model is None
        models["embed"] = {"id": ids, "backend": "open_clip", "profile": cfg.profile, "random_weights": tiny}
    if "quality" in tables and "embed" in tables:
        tiny = cfg.quality.aesthetic_head is None
        models["aesthetic"] = {"id": [cfg.quality.aesthetic_head or "seeded random head"], "backend": "linear head", "profile": cfg.profile, "random_weights": tiny}
    if "ground" in tables and (cfg.ground.rewrite or cfg.ground.reason):
        models["rewrite"] = {**models.get("caption", {}), "id": caption_ids}
    return models


def _rejections(tables: dict[str, pa.Table]) -> dict[str, dict[str, int]]:
    """Rows each stage rejected, by rule: quality names every failing score; others their code."""
    out = {}
    for stage, table in tables.items():
        reasons = [r for s, r in zip(table.column("status").to_pylist(), table.column("reason").to_pylist()) if s == "rejected"]
        rules: Counter = Counter()
        for reason in reasons:
            code = reason_code(reason)
            rules.update(code.split("+") if stage == "quality" else [code])  # quality's code lists its failing rules
        if rules:
            out[stage] = dict(sorted(rules.items()))
    return out


def _duplicates(table: pa.Table | None) -> dict[str, dict[str, dict]]:
    """Dedup's rejections by kind, then by what decided them (same bytes, pHash Hamming bits,
    embedding cosine): the clips, the kept clips they name, and the deciding figures' spread."""
    if table is None:
        return {}
    found: dict[str, dict[str, dict]] = {}
    for row in table.select(["status", "duplicate_of", "dup_kind", "dup_measure", "dup_figure"]).to_pylist():
        if row["status"] == "rejected" and row["dup_kind"]:
            entry = found.setdefault(row["dup_kind"], {}).setdefault(row["dup_measure"] or "unrecorded", {"clips": 0, "named": set(), "figures": []})
            entry["clips"] += 1
            entry["named"].add(row["duplicate_of"])
            if row["dup_figure"] is not None:
                entry["figures"].append(row["dup_figure"])
    return {
        kind: {m: {"clips": e["clips"], "kept_named": len(e["named"]), "figure": _spread(e["figures"])} for m, e in sorted(measures.items())}
        for kind, measures in sorted(found.items())
    }


DECIDED_BY = {"bytes": "same bytes", "hamming": "pHash Hamming bits", "cosine": "embedding cosine"}


def _decontamination(table: pa.Table | None, cfg: PipelineConfig, windows: list[dict]) -> dict:
    """The eval sets decontam checked (videos, questions), the clips and QA items each took out
    (the clips' in decontam's table, the shipped windows' in their samples), what decided the
    clips, and the thresholds; empty where decontam did not run."""
    if table is None:
        return {}
    from vidcurate.stages.decontam import summary

    settings = cfg.decontam
    sets = {s["name"]: {**s, "clips_removed": 0, "items_removed": 0} for s in summary(settings)}
    decided_by: Counter = Counter()
    for row in table.select(["status", "eval_set", "match_measure", "qa_dropped"]).to_pylist():
        if row["status"] == "rejected" and row["eval_set"]:
            sets[row["eval_set"]]["clips_removed"] += 1
            decided_by[row["match_measure"]] += 1
        for name, items in json.loads(row["qa_dropped"] or "{}").items():
            sets[name]["items_removed"] += items
    for window in windows:
        for name, items in window.get("grounding", {}).get("decontaminated", {}).items():
            sets[name]["items_removed"] += items
    thresholds = settings.model_dump(include={"frames", "min_frames", "max_hamming", "near_cosine", "phash_fps", "crops", "window_s", "ngram"})
    return {"sets": list(sets.values()), "decided_by": dict(sorted(decided_by.items())), "thresholds": thresholds}


def _decontamination_lines(found: dict) -> list[str]:
    """The card's decontamination section (none where decontam did not run)."""
    if not found:
        return []
    lines = ["## Decontamination", ""]
    if not found["sets"]:
        return [*lines, "No evaluation sets were given (`decontam.eval_sets`): nothing was checked against benchmarks.", ""]
    t = found["thresholds"]
    phash = (
        f"pHash within {t['max_hamming']} bits on at least {t['min_frames']} of a clip's {t['frames']} frames (eval frames "
        f"{t['phash_fps']:g} a second, each also at {len(t['crops']) - 1} centre crops)" if t["max_hamming"] is not None else "pHash: off"
    )  # fmt: skip
    cosine = f"embedding cosine >= {t['near_cosine']:g} to a {t['window_s']:g} s eval window" if t["near_cosine"] is not None else "embedding cosine: off"
    decided = ", ".join(f"{DECIDED_BY[m]} {n}" for m, n in found["decided_by"].items()) or "none"
    return [
        *lines,
        "Clips whose frames match frames of an evaluation set's videos were left out, and QA items whose question "
        f"shares {t['ngram']} words in a row with one of the set's questions were dropped:",
        "",
        "| eval set | videos | questions | clips removed | QA items removed |",
        "|---|---|---|---|---|",
        *[f"| {s['name']} | {s['videos']} | {s['questions']} | {s['clips_removed']} | {s['items_removed']} |" for s in found["sets"]],
        "",
        f"A clip matches by {phash}; else by {cosine}. Clips removed, by what decided: {decided}.",
        "",
    ]


def _duplicate_lines(duplicates: dict[str, dict[str, dict]]) -> list[str]:
    """The card's duplicate section: rejections by kind, then the deciding figures' spread."""
    if not duplicates:
        return ["- none"]
    lines = [f"- {kind}: {sum(e['clips'] for e in measures.values())} clips rejected" for kind, measures in duplicates.items()]
    lines += [
        "",
        "Each names a kept clip it directly duplicates; the figure that decided it (cosine: higher is closer; Hamming bits: lower is closer):",
        "",
        "| kind | decided by | clips rejected | kept clips named | min | p10 | median | p90 | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, measures in duplicates.items():
        for measure, e in measures.items():
            f = e["figure"]
            spread = [f"{f[f'p{p}']:g}" for p in PERCENTILES] if f["count"] else ["-"] * len(PERCENTILES)
            lines.append(f"| {kind} | {DECIDED_BY.get(measure, measure)} | {e['clips']} | {e['kept_named']} | {' | '.join(spread)} |")
    return lines


def front_matter(stats: dict, cfg: PipelineConfig) -> dict:
    total = stats["samples"] + stats["content"]["window_samples"]
    size = next((label for bound, label in SIZE_CATEGORIES if total < bound), "n>1M")
    prefix = cfg.shard.prefix + ("-p?????" if cfg.partitions.videos else "")  # a partition's shards: <prefix>-p00000-...
    configs = [{"config_name": "clips", "data_files": [{"split": "train", "path": f"{prefix}-0*.tar"}], "default": True}]
    if stats["content"]["window_samples"]:
        configs.append({"config_name": "windows", "data_files": [{"split": "train", "path": f"{prefix}-windows-*.tar"}]})
    return {
        "license": cfg.shard.license or "unknown",
        "task_categories": TASK_CATEGORIES,
        "tags": TAGS,
        "size_categories": [size],
        "configs": configs,
    }


def dataset_card(stats: dict, cfg: PipelineConfig) -> str:
    content, v, c = stats["content"], stats["videos"], stats["clips"]
    prefix = cfg.shard.prefix
    clip_shards = [s for s in stats["shards"] if s.get("kind", "clip") == "clip"]
    window_shards = [s for s in stats["shards"] if s.get("kind") == "window"]
    lines = ["---", yaml.safe_dump(front_matter(stats, cfg), sort_keys=False).rstrip(), "---", "", f"# {prefix}", ""]
    random_models = sorted(stage for stage, m in content["models"].items() if m["random_weights"])
    if random_models:
        lines += [
            f"> **Warning: not for training.** The {', '.join(random_models)} model(s) had random weights (profile "
            "`tiny`): captions, events, QA and model scores in this dataset are noise. Rebuild with `profile: default` "
            "or real models.",
            "",
        ]
    if not cfg.shard.license:
        lines += ["> **License unknown:** set `shard.license` (an SPDX id, as the source videos allow) before sharing.", ""]
    lines += [
        f"Videos for grounded and interleaved multimodal training, made by vidcurate (sample schema {SCHEMA_VERSION}).",
        "",
        "## Contents",
        "",
        f"- {stats['samples']} clip samples in {len(clip_shards)} WebDataset shards (`{prefix}-NNNNNN.tar`), "
        f"{content['video_hours']} hours of video",
        f"- {content['window_samples']} window samples in {len(window_shards)} shards (`{prefix}-windows-NNNNNN.tar`): "
        "runs of contiguous clips of one video, each with its own mp4",
        "- members: `mp4` (the sample's own media), `json` (annotation; every time is seconds in that mp4)"
        + (f", `f000.jpg`..`f{cfg.shard.keyframes - 1:03d}.jpg` (keyframes)" if cfg.shard.keyframes else ""),
        f"- inputs: {v['total']} videos, {v['kept']} kept, {v['rejected']} rejected, {v['failed']} failed; "
        f"clips: {c['total']}, {c['kept']} kept, {c['rejected']} rejected, {c['failed']} failed",
        f"- events per clip: {_spread_text(content['events_per_clip'])}",
        "",
        *_qa_lines(content, cfg),
        *_document_lines(content["documents"], cfg),
        "## Models",
        "",
        "| stage | model | backend | profile | random weights |",
        "|---|---|---|---|---|",
        *[f"| {s} | {', '.join(m['id']) or '-'} | {m['backend']} | {m['profile']} | {'yes' if m['random_weights'] else 'no'} |" for s, m in content["models"].items()],
        "",
        "## Scores of the shipped clips",
        "",
        "| score | count | mean | min | p10 | median | p90 | max |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {d['count']} | {d['mean']} | {d['p0']} | {d['p10']} | {d['p50']} | {d['p90']} | {d['p100']} |" for name, d in content["scores"].items()],
        "",
        *_speech_lines(content["speech"]),
        "## What was left out",
        "",
        "Ledger reason codes (entity status(stage, failure class): code):",
        "",
        *([f"- {reason}: {n}" for reason, n in {**v["reasons"], **c["reasons"], **stats["windows"]["reasons"]}.items()] or ["- none"]),
        "",
        "Rejections by stage and rule (a clip failing several quality rules counts under each):",
        "",
        *([f"- {stage} / {rule}: {n}" for stage, rules in content["rejections"].items() for rule, n in rules.items()] or ["- none"]),
        "",
        "Duplicates rejected by dedup, by kind:",
        "",
        *_duplicate_lines(content["duplicates"]),
        "",
        *_decontamination_lines(content.get("decontamination", {})),
        *_audit_lines(stats.get("audit")),
        "## Reading",
        "",
        "`index.json` (wids format) lists every shard; each `<shard>.parquet` has one row per sample with the",
        "annotation's fields, for filtering without opening tars.",
        "",
        "```python",
        "from datasets import load_dataset",
        "clips = load_dataset(FOLDER)               # the `clips` config (the default)",
        'windows = load_dataset(FOLDER, "windows")  # video-level window samples',
        "```",
        "",
        "## Configuration used",
        "",
        "Execution settings (run directory, executor, Ray address, stage resources, failure handling) are left out: "
        "they do not change the data.",
        "",
        "```yaml",
        yaml.safe_dump(_data_settings(cfg), sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


DOCUMENT_KINDS = {
    "events": "a clip's frames, each with its event's text and times",
    "window": "a window's clips in order, each with its events' text and times",
    "in_context": "a clip's nearest shipped clips as examples, then its own question",
}


def _document_lines(documents: dict[str, dict], cfg: PipelineConfig) -> list[str]:
    """The interleaved documents section: documents, images and tokens of text per document by
    kind, and what the alignment filter dropped."""
    if not documents:
        return []
    spread = lambda d: f"{d['mean']} (median {d['p50']}, max {d['p100']})" if d["count"] else "-"  # noqa: E731
    return [
        "## Interleaved documents",
        "",
        "Documents in the samples' `grounding.interleaved` (`vidcurate export --format obelics | mmc4 | llava-interleave`); "
        "tokens are CLIP's BPE tokens of the text with its times written out. Pairs: (image, text) pairs the embed model scored, and "
        f"those dropped because their similarity was under `ground.min_pair_similarity` ({cfg.ground.min_pair_similarity}):",
        "",
        "| document | what it holds | documents | images per document | tokens of text per document | pairs scored | pairs dropped |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {kind} | {DOCUMENT_KINDS.get(kind, kind)} | {d['documents']} | {spread(d['images'])} | {spread(d['tokens'])} | {d['scored']} | {d['dropped']} |"
            for kind, d in documents.items()
        ],
        "",
    ]


def _speech_lines(speech: dict) -> list[str]:
    """The speech stage's figures over the shipped clips (nothing where it did not run)."""
    if not speech["clips"]:
        return []
    return [
        "## Speech",
        "",
        f"{speech['clips_with_speech']} of {speech['clips']} clip samples have speech: {speech['speech_hours']} hours of voice, "
        f"{speech['words']} words with their times (`speech` in each sample's json; the `mp4` carries the audio track).",
        "",
        "| language | clip samples |",
        "|---|---|",
        *([f"| {language} | {n} |" for language, n in speech["languages"].items()] or ["| - | 0 |"]),
        "",
    ]


def _audit_lines(audit: dict | None) -> list[str]:
    """`vidcurate audit`'s needle figures: how well the captioner that made this data grounds."""
    if not audit:
        return []
    rows = [
        f"| {kind} | {k['needles']} | {k['recall']} | {k['boundary_error_s']['coarse']} | {k['boundary_error_s']['refined']} |"
        for kind, k in sorted(audit["kinds"].items())
    ]
    return [
        "## Needle audit of the captioner",
        "",
        f"`vidcurate audit` put needles (a still image, a text banner; 1-3 s) into {audit['clips']} of these clips and asked "
        f"the run's captioner ({audit['model']}, {audit['frames']} frames a clip) where they are:",
        "",
        "| needle | needles | recall | boundary error, coarse (s) | boundary error, refined (s) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _qa_lines(content: dict, cfg: PipelineConfig) -> list[str]:
    """The task mix shipped (items by task, clip and window samples, with the share of each),
    the negatives among them, and what span verification dropped."""
    items, negatives, dropped = content["qa_items"], content["negatives"], content["dropped_by_verification"]
    tasks = sorted({*items["clip"], *items["window"], *dropped["clip"], *dropped["window"]})
    total = sum(n for kind in items.values() for n in kind.values()) or 1
    count = lambda table, task: table["clip"].get(task, 0) + table["window"].get(task, 0)  # noqa: E731
    verification = content["verification"]
    refined = content["events_refined"]
    return [
        "## Grounded QA",
        "",
        "The task mix shipped: QA items by task in clip and window samples, the share of all items, the negatives among "
        "them (a query from another video, answered as not in the video) and the items dropped because their events' "
        f"span verification was under `ground.min_verification` ({cfg.ground.min_verification}):",
        "",
        "| task | in clip samples | in window samples | share | negatives | dropped by verification |",
        "|---|---|---|---|---|---|",
        *[
            f"| {task} | {items['clip'].get(task, 0)} | {items['window'].get(task, 0)} | {count(items, task) / total:.1%} | "
            f"{count(negatives, task)} | {count(dropped, task)} |"
            for task in tasks
        ],
        "",
        f"- negatives: {sum(count(negatives, t) for t in tasks)} items ({sum(negatives['clip'].values())} in clip samples, "
        f"{sum(negatives['window'].values())} in window samples)",
        "- span verification of the items (the embed model: how much better their events' text matches the frames inside "
        f"the span than outside; 0.5 is chance): {_spread_text(verification, 'items') if verification['count'] else 'none (embed did not run)'}",
        f"- event boundaries refined on split's change scores: {refined['moved']} of {refined['events']} events moved off the captioner's sampled times",
        "",
    ]


def _spread_text(spread: dict, of: str = "clips") -> str:
    if not spread["count"]:
        return "none captioned"
    return f"mean {spread['mean']}, median {spread['p50']}, max {spread['p100']} over {spread['count']} {of}"


def _data_settings(cfg) -> dict:
    """The config without what only decides how the run executes."""
    settings = cfg.model_dump(exclude={"run_dir", "executor", "ray", "failures"})
    return {k: {n: v for n, v in section.items() if n != "resources"} if isinstance(section, dict) else section for k, section in settings.items()}
