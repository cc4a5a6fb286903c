"""Quality flags: cost per clip and agreement with PP-OCR's own input size, same run, same frames.

    python benchmarks/flags_bench.py [--clips 24] [--frames 3] [--sides 736,480,360,288] [--gates 192,160,128] [--run RUN_DIR]

Clips are 360p frames of moving shots over photographs (sample_data/make_moving.py; two of the
photographs are pages of printed text) and of synthetic textures; half get burned-in text
(subtitles, titles, tickers; some only in part of the clip). For each text-detector input size
(`quality.ocr_side`; 736 is rapidocr's default, which upsamples 360p frames 2x) it prints
ms per clip for `ocr_coverage` on `--frames` frames, the mean |difference| from the 736 score,
and how often the two agree on the default rule (ocr_coverage <= 0.25) and on "has text"
(> 0.01); the same for the gated path (`quality.ocr_gate_side`: a first look at a smaller size,
then `ocr_side` only on the frame with the most text), with the cost on clips with and without
text apart. NSFW: NudeNet's own detect() frame by frame against `content_flags.nudity` (one batch,
NudeNet's decisions decoded in numpy): ms per clip and the largest score difference, for the
exposed classes and for any class (faces and covered parts give real detections to compare).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sample_data"))

import make_moving  # noqa: E402
import make_synthetic  # noqa: E402

from vidcurate.stages import content_flags  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while breaking news tonight live at eleven".split()


def burn(frame: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    size = {"subtitle": int(rng.integers(16, 26)), "title": int(rng.integers(30, 44)), "ticker": int(rng.integers(11, 15))}[kind]
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
    font = ImageFont.load_default(size=size)
    width = draw.textlength(text, font=font)
    x = max(4, int((frame.shape[1] - width) / 2)) if kind != "ticker" else 4
    y = {"subtitle": frame.shape[0] - size * 2, "title": frame.shape[0] // 2 - size, "ticker": frame.shape[0] - size - 4}[kind]
    if kind != "title":
        draw.rectangle([x - 4, y - 2, x + width + 4, y + size + 6], fill=(0, 0, 0))
    draw.text((x, y), text, font=font, fill=(255, 255, 255) if kind != "title" else tuple(int(v) for v in rng.integers(180, 256, 3)))
    return np.asarray(image)


def clips(count: int, frames: int) -> list[tuple[str, np.ndarray]]:
    """(label, frames) pairs: every other clip has text, in all its frames or from the middle on."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        if i % 3 == 2:
            video, _ = make_synthetic.render(500 + i, height=360, width=640, shots=1)
        else:
            video, _ = make_moving.render(500 + i, height=360, width=640, shots=1)
        picked = [video[j] for j in np.linspace(0, len(video) - 1, frames).round().astype(int)]
        label = "plain"
        if i % 2:
            kind = ("subtitle", "title", "ticker")[(i // 2) % 3]
            partial = i % 4 == 3
            picked = [burn(f, np.random.default_rng(i), kind) if not partial or k >= len(picked) // 2 else f for k, f in enumerate(picked)]
            label = f"{kind}{' (part)' if partial else ''}"
        out.append((label, np.stack(picked)))
    return out


def timed(fn, data) -> tuple[list[float], np.ndarray]:
    """fn over every clip's frames after one warm-up call: (scores, ms per clip)."""
    fn(data[0][1])
    out, ms = [], []
    for _, frames in data:
        started = time.perf_counter()
        out.append(fn(frames))
        ms.append((time.perf_counter() - started) * 1000)
    return out, np.asarray(ms)


def nudenet_own(frames: np.ndarray, classes: frozenset) -> float:
    """NudeNet's own detect(), frame by frame: the reference for `nudity`."""
    detector = content_flags._nudenet()
    found = [d["score"] for f in frames for d in detector.detect(np.ascontiguousarray(f[..., ::-1])) if d["class"] in classes]
    return round(max(found, default=0.0), 4)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def run_clips(run_dir: Path, frames: int) -> list[tuple[str, np.ndarray]]:
    """The kept clips of a run's split stage, framed as the quality stage frames them (8 decoded
    frames, `frames` of them evenly spaced); their text is unknown, so each is labelled `run`."""
    from vidcurate.pipelines.store import read_parts
    from vidcurate.stages.registry import STAGES
    from vidcurate.schemas.readers import clip_frames

    split = read_parts(run_dir / "split", STAGES["split"].table).to_pylist()
    out = []
    for clip in sorted((c for c in split if c["status"] == "kept"), key=lambda c: c["clip_id"]):
        decoded, _ = clip_frames(Path(clip["clip_uri"]).read_bytes(), 8)
        out.append(("run", content_flags.flag_frames(decoded, frames)))
    return out


def _flag_worker(job: tuple[int, int, int, list[int]]) -> float:
    """One of the stage's tasks: a process with one CPU (as Ray gives it), scoring its clips."""
    count, frames, _, picked = job
    os.environ["OMP_NUM_THREADS"] = "1"
    data = clips(count, frames)
    content_flags.flag_scores(np.stack(data[0][1]), frames, True, True)  # load the detectors
    started = time.perf_counter()
    for i in picked:
        content_flags.flag_scores(np.stack(data[i][1]), frames, True, True)
    return time.perf_counter() - started


def on_two_cores(count: int, frames: int) -> float:
    """ms per clip with both flags on 2 cores as the quality stage runs them: two processes, one
    CPU each, every clip once (text and plain clips shared evenly between them)."""
    order = list(range(count))
    jobs = [(count, frames, k, [i for i in order if (i // 2) % 2 == k]) for k in (0, 1)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return max(pool.map(_flag_worker, jobs)) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--sides", default="736,480,360,288")
    parser.add_argument("--gates", default="192,160,128", help="first-look short sides, before --ocr-side")
    parser.add_argument("--ocr-side", type=int, default=content_flags.OCR_SIDE)
    parser.add_argument("--run", help="a run directory: its split's kept clips instead of the made ones (text unknown)")
    args = parser.parse_args()
    if args.run:
        data = run_clips(Path(args.run), args.frames)
    else:
        data = [(label, np.stack(frames)) for label, frames in clips(args.clips, args.frames)]
    has_text = np.asarray([label not in ("plain", "run") for label, _ in data])
    variants = {f"every frame at {s}": (s, None) for s in (int(v) for v in args.sides.split(","))}
    variants |= {f"look at {g}, then {args.ocr_side}": (args.ocr_side, g) for g in (int(v) for v in args.gates.split(","))}
    scores, ms = {}, {}
    for name, (side, gate) in variants.items():
        scores[name], ms[name] = timed(lambda frames: content_flags.clip_text_coverage(frames, side, gate), data)
    ref, current = np.asarray(scores[next(iter(variants))]), np.asarray(scores[f"every frame at {args.ocr_side}"])
    size = "x".join(str(v) for v in data[0][1].shape[1:3])
    print(f"{len(data)} clips ({has_text.sum()} with burned-in text), {args.frames} frames each, {size}")
    print("| text detection | ms/clip | ms/clip, no text | ms/clip, text | mean abs diff vs 736 | agree on <= 0.25 vs 736 | "
          f"agree on > 0.01 vs 736 | agree on <= 0.25 vs {args.ocr_side} | agree on > 0.01 vs {args.ocr_side} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in variants:
        s = np.asarray(scores[name])
        print(
            f"| {name} | {ms[name].mean():.1f} | {_mean(ms[name][~has_text]):.1f} | {_mean(ms[name][has_text]):.1f} | "
            f"{np.abs(s - ref).mean():.4f} | {((s <= 0.25) == (ref <= 0.25)).mean():.3f} | {((s > 0.01) == (ref > 0.01)).mean():.3f} | "
            f"{((s <= 0.25) == (current <= 0.25)).mean():.3f} | {((s > 0.01) == (current > 0.01)).mean():.3f} |"
        )
    every = frozenset(vars(__import__("nudenet.nudenet", fromlist=["x"]))["__labels"])
    own, own_ms = timed(lambda frames: nudenet_own(frames, content_flags.EXPOSED), data)
    ours, ours_ms = timed(lambda frames: max(content_flags.nudity(frames)), data)
    own_any, _ = timed(lambda frames: nudenet_own(frames, every), data)
    ours_any, _ = timed(lambda frames: max(content_flags.nudity(frames, every)), data)
    print(f"nsfw: NudeNet's detect() {own_ms.mean():.1f} ms/clip, batched {ours_ms.mean():.1f} ms/clip over {args.frames} frames; "
          f"max |diff| {np.abs(np.subtract(own, ours)).max():.4f} (exposed classes), {np.abs(np.subtract(own_any, ours_any)).max():.4f} "
          f"(any class; {sum(v > 0 for v in own_any)} clips with a detection)")
    _, both = timed(lambda frames: content_flags.flag_scores(frames, len(frames), True, True), data)
    print(f"both flags per clip as the quality stage runs them (defaults: first look at {content_flags.OCR_GATE_SIDE}, "
          f"nsfw batched): {both.mean():.1f} ms; no text {_mean(both[~has_text]):.1f}, text {_mean(both[has_text]):.1f}; "
          f"the old paths apart (every frame at {args.ocr_side}, NudeNet's detect()): {(ms[f'every frame at {args.ocr_side}'] + own_ms).mean():.1f} ms")
    if not args.run:
        print(f"both flags on 2 cores as the stage runs them (2 tasks, 1 CPU each): {on_two_cores(args.clips, args.frames):.1f} ms per clip")
    for (label, _), *row in zip(data, *(scores[n] for n in variants)):
        print(f"  {label:16s} " + " ".join(f"{v:.3f}" for v in row))


if __name__ == "__main__":
    main()
