"""Optional quality scores from small detectors whose weights ship inside their wheels, so they
work offline: on-screen text coverage (PP-OCRv4 text detector of rapidocr-onnxruntime) and
nudity (NudeNet's 320n detector). Both run on onnxruntime; the packages are the `flags` extra
and are imported only when a config turns the scores on.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
from PIL import Image, ImageDraw

# NudeNet classes that make a frame not safe for work (covered parts and faces do not).
EXPOSED = frozenset(
    {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"}
)
OCR_SIDE = 360  # the text detector's input short side: a 360p clip (the default clip height) as it is
PACKAGES = {"ocr": ("rapidocr_onnxruntime", "rapidocr-onnxruntime"), "nsfw": ("nudenet", "nudenet")}


def require(ocr: bool, nsfw: bool) -> None:
    """Fail before any work starts when a turned-on score's package is missing."""
    for flag, on in (("ocr", ocr), ("nsfw", nsfw)):
        module, package = PACKAGES[flag]
        if on and importlib.util.find_spec(module) is None:
            raise RuntimeError(f"quality.{flag} needs the package {package}: pip install 'vidcurate[flags]'")


@functools.lru_cache(maxsize=2)
def _ocr(side: int):
    from rapidocr_onnxruntime import RapidOCR

    # The detector scales each frame so its short side is `side`; rapidocr's default (736)
    # upsamples a 360p clip 2x, four times the pixels for text that is already legible.
    return RapidOCR(det_limit_side_len=side, det_limit_type="min")


@functools.lru_cache(maxsize=1)
def _nudenet():
    from nudenet import NudeDetector

    return NudeDetector()


def text_coverage(rgb: np.ndarray, side: int = OCR_SIDE) -> float:
    """Share of the frame inside detected text boxes (burned-in subtitles, tickers, slides)."""
    boxes, _ = _ocr(side)(np.ascontiguousarray(rgb[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
    if not boxes:
        return 0.0
    height, width = rgb.shape[:2]
    mask = Image.new("1", (width, height))
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        draw.polygon([(float(x), float(y)) for x, y in box], fill=1)
    return round(float(np.asarray(mask).mean()), 4)


def nudity(rgb: np.ndarray) -> float:
    """Highest NudeNet confidence of an exposed class in the frame (0 when none)."""
    found = _nudenet().detect(np.ascontiguousarray(rgb[..., ::-1]))
    return round(max((d["score"] for d in found if d["class"] in EXPOSED), default=0.0), 4)


def flag_scores(frames: np.ndarray, count: int, ocr: bool, nsfw: bool, ocr_side: int = OCR_SIDE) -> dict:
    """`ocr_coverage` and/or `nsfw` over `count` evenly spaced frames, the worst frame counting:
    one frame of a burned-in title or of nudity is enough to matter."""
    if not (ocr or nsfw):
        return {}
    picked = frames[np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))]
    scores = {}
    if ocr:
        scores["ocr_coverage"] = max(text_coverage(f, ocr_side) for f in picked)
    if nsfw:
        scores["nsfw"] = max(nudity(f) for f in picked)
    return scores
