"""Quality flags: cost per clip and agreement with PP-OCR's own input size, same run, same frames.

    python benchmarks/flags_bench.py [--clips 24] [--frames 3] [--sides 736,480,360,288]

Clips are 360p frames of moving shots over photographs (sample_data/make_moving.py; two of the
photographs are pages of printed text) and of synthetic textures; half get burned-in text
(subtitles, titles, tickers; some only in part of the clip). For each text-detector input size
(`quality.ocr_side`; 736 is rapidocr's default, which upsamples 360p frames 2x) it prints
ms per clip for `ocr_coverage` on `--frames` frames, the mean |difference| from the 736 score,
and how often the two agree on the default rule (ocr_coverage <= 0.25) and on "has text"
(> 0.01). NudeNet's cost per clip is printed too (its input is fixed at 320x320).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sample_data"))

import make_moving  # noqa: E402
import make_synthetic  # noqa: E402

from stages.content_flags import nudity, text_coverage  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--sides", default="736,480,360,288")
    args = parser.parse_args()
    data = clips(args.clips, args.frames)
    sides = [int(s) for s in args.sides.split(",")]
    scores, seconds = {}, {}
    for side in sides:
        text_coverage(data[0][1][0], side)  # load and warm the detector
        started = time.perf_counter()
        scores[side] = [max(text_coverage(f, side) for f in frames) for _, frames in data]
        seconds[side] = time.perf_counter() - started
    nudity(data[0][1][0])
    started = time.perf_counter()
    for _, frames in data:
        max(nudity(f) for f in frames)
    nsfw_ms = (time.perf_counter() - started) / len(data) * 1000
    ref = np.asarray(scores[sides[0]])
    has_text = np.asarray([label != "plain" for label, _ in data])
    print(f"{len(data)} clips ({has_text.sum()} with burned-in text), {args.frames} frames each, 360p")
    print(f"{'ocr_side':>8s} {'ms/clip':>8s} {'mean|d|':>8s} {'rule agree':>10s} {'text agree':>10s} {'text found':>10s} {'plain clean':>11s}")
    for side in sides:
        s = np.asarray(scores[side])
        found = (s > 0.01)[has_text].mean()
        clean = (s <= 0.01)[~has_text].mean()
        print(
            f"{side:8d} {seconds[side] / len(data) * 1000:8.1f} {np.abs(s - ref).mean():8.4f} "
            f"{((s <= 0.25) == (ref <= 0.25)).mean():10.3f} {((s > 0.01) == (ref > 0.01)).mean():10.3f} {found:10.3f} {clean:11.3f}"
        )
    print(f"nsfw (NudeNet 320n): {nsfw_ms:.1f} ms/clip over {args.frames} frames")
    for (label, _), *row in zip(data, *(scores[s] for s in sides)):
        print(f"  {label:16s} " + " ".join(f"{v:.3f}" for v in row))


if __name__ == "__main__":
    main()
