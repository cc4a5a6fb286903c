"""`vidcurate audit RUN`: how well the run's own captioner grounds, measured on the run's own clips
(in the spirit of VideoNIAH's needle-in-a-haystack videos).

A seeded sample of the run's shipped clips gets needles at known times, each shown for 1-3 s: a
still image replacing the picture (a red disc on white, "a red circle") or a text banner over it
(the word NEEDLE). The needled clips are encoded as split encodes clips and captioned by the run's
caption settings and model, through the caption stage's own code (frame sampling, prompt, grammar,
parsing), then refined as ground refines (`ground.refine`). A needle is found when an event's text
names it and its span overlaps the needle's; the report gives, per needle kind, the recall and the
mean boundary error of the found ones (coarse and refined). Written to `RUN/audit.json` and into
the dataset's stats and card (a later run of the same directory keeps it there).
"""

from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vidcurate.pipelines.runner import AUDIT, RUN_CONFIG
from vidcurate.pipelines.store import StageStore, write_atomically
from vidcurate.schemas.tables import KEPT, stable_int
from vidcurate.stages.caption import caption_decoded, decode_clips, make_captioner
from vidcurate.stages.detect import frame_differences
from vidcurate.stages.media import read_small_frames
from vidcurate.stages.registry import CLIP_SOURCE, SHIPPER, STAGES
from vidcurate.stages.spans import refine_events
from vidcurate.stages.split import ClipEncoder

NEEDLES = {
    "image": ("red circle", ("red", "circle", "disc", "ball")),
    "text": ("the word NEEDLE", ("needle",)),
}


def image_needle(shape: tuple[int, ...]) -> np.ndarray:
    """A still image that replaces the picture: a red disc on white."""
    h, w = shape[:2]
    y, x = np.ogrid[:h, :w]
    picture = np.full((h, w, 3), 255, np.uint8)
    picture[(y - h / 2) ** 2 + (x - w / 2) ** 2 <= (min(h, w) / 3) ** 2] = (220, 20, 20)
    return picture


def text_needle(frame: np.ndarray) -> np.ndarray:
    """The frame with a white banner across its lower third reading NEEDLE."""
    image = Image.fromarray(frame)
    h, w = frame.shape[:2]
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(h * 0.62), w, int(h * 0.88)], fill=(255, 255, 255))
    font = ImageFont.load_default(size=max(10, int(h * 0.18)))
    draw.text((w / 2, h * 0.75), "NEEDLE", fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(image)


def needle_clip(source: str, out: Path, kind: str, seed: int, split_cfg) -> tuple[float, float, float]:
    """The clip at `source` with a needle of `kind` at a seeded time for 1-3 s, encoded at `out`
    as split encodes clips; returns (needle start, needle end, clip duration) in seconds."""
    with av.open(source) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    rng = np.random.default_rng(seed)
    count = len(frames)
    length = int(min(count - 2, max(1, round(rng.uniform(1.0, 3.0) * fps))))
    start = int(rng.integers(1, max(2, count - length)))
    encoder = ClipEncoder(out, (frames[0].shape[1], frames[0].shape[0]), fps, split_cfg)
    try:
        for i, rgb in enumerate(frames):
            if start <= i < start + length:
                rgb = image_needle(rgb.shape) if kind == "image" else text_needle(rgb)
            encoder.add(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
        encoder.close()
    except BaseException:
        encoder.abort()
        raise
    rate = Fraction(fps).limit_denominator(1001)
    return float(start / rate), float((start + length) / rate), float(count / rate)


def found(event: dict, kind: str, needle: tuple[float, float]) -> bool:
    """The event names the needle and its span overlaps the needle's."""
    words = event["text"].lower()
    return any(k in words for k in NEEDLES[kind][1]) and event["start_s"] < needle[1] and event["end_s"] > needle[0]


def audit(run_dir: Path, clips: int = 8, seed: int = 0) -> dict:
    """Needle the run's clips, caption them with its captioner, and write the figures."""
    from vidcurate.pipelines.config import PipelineConfig

    config_path = Path(run_dir) / RUN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no run_config.json: run the pipeline first (a finished run writes it)")
    cfg = PipelineConfig.model_validate_json(config_path.read_text())
    store = StageStore(run_dir)
    source = SHIPPER if store.completed(SHIPPER) else CLIP_SOURCE
    kept = [r for r in store.clip_view(store.path(source), cfg.pipeline()) if r["status"] == KEPT] if source == SHIPPER else store.kept(store.path(CLIP_SOURCE)).to_pylist()
    kept = sorted(kept, key=lambda r: stable_int(f"{seed}/{r['clip_id']}"))[:clips]
    if not kept:
        raise ValueError(f"{run_dir} shipped no clip to audit")
    captioner = make_captioner(cfg.caption)
    # the needled copies are scratch: removed when the figures are taken, also on an error
    with tempfile.TemporaryDirectory(prefix="vidcurate-audit-") as scratch:
        work = Path(scratch)
        rows, needles = [], []
        for i, clip in enumerate(kept):
            kind = list(NEEDLES)[i % len(NEEDLES)]
            path = work / f"{clip['clip_id']}_{kind}.mp4"
            start, end, duration = needle_clip(clip["clip_uri"], path, kind, stable_int(f"{seed}/{clip['clip_id']}"), cfg.split)
            rows.append({"clip_id": path.stem, "video_id": clip["video_id"], "clip_uri": str(path), "start_s": 0.0, "end_s": duration})
            needles.append((kind, (start, end), path))
        captions = caption_decoded(decode_clips(rows, cfg.caption), captioner, cfg.caption)
        by_kind: dict[str, dict] = {kind: {"needles": 0, "found": 0, "coarse_errors": [], "refined_errors": []} for kind in NEEDLES}
        for (kind, needle, path), row, caption in zip(needles, rows, captions):
            figures = by_kind[kind]
            figures["needles"] += 1
            events = json.loads(caption["events"] or "[]") if caption["status"] == KEPT else []
            small = read_small_frames(str(path), cfg.split.analysis_width)
            refined = refine_events(events, caption["frame_times"] or [], row["end_s"], small.times_s, frame_differences(small.yuv))
            hits = [(c, r) for c, r in zip(events, refined) if found(c, kind, needle)]
            if hits:
                figures["found"] += 1
                for errors, event in (("coarse_errors", hits[0][0]), ("refined_errors", hits[0][1])):
                    figures[errors].append((abs(event["start_s"] - needle[0]) + abs(event["end_s"] - needle[1])) / 2)
    report = {
        "clips": len(kept),
        "seed": seed,
        "model": captioner.name,
        "frames": cfg.caption.frames,
        "kinds": {
            kind: {
                "needles": f["needles"],
                "recall": round(f["found"] / f["needles"], 4) if f["needles"] else None,
                "boundary_error_s": {e.split("_")[0]: round(float(np.mean(f[e])), 3) if f[e] else None for e in ("coarse_errors", "refined_errors")},
            }
            for kind, f in by_kind.items()
        },
    }
    write_atomically(Path(run_dir) / AUDIT, json.dumps(report, indent=2, sort_keys=True))
    _into_card(store, cfg, report)
    return report


def _into_card(store: StageStore, cfg, report: dict) -> None:
    """The dataset's stats and card gain the audit (a finished run's later `finish` keeps it)."""
    from vidcurate.pipelines.card import dataset_card

    dataset = store.path(SHIPPER) / STAGES[SHIPPER].ships
    if (dataset / "stats.json").is_file():
        stats = {**json.loads((dataset / "stats.json").read_text()), "audit": report}
        write_atomically(dataset / "stats.json", json.dumps(stats, indent=2, sort_keys=True))
        write_atomically(dataset / "README.md", dataset_card(stats, cfg))
