"""Optional quality scores from small detectors whose weights ship inside their wheels, so they
work offline: on-screen text coverage (PP-OCRv4 text detector of rapidocr-onnxruntime) and
nudity (NudeNet's 320n detector). Both run on onnxruntime; the packages are the `flags` extra
and are imported only when a config turns the scores on.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
from PIL import Image, ImageDraw

# NudeNet classes that make a frame not safe for work (covered parts and faces do not).
EXPOSED = frozenset(
    {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"}
)
OCR_SIDE = 360  # the text detector's input short side: a 360p clip (the default clip height) as it is
OCR_GATE_SIDE = 160  # short side of the first look for text (benchmarks/flags_bench.py measures agreement)
PACKAGES = {"ocr": ("rapidocr_onnxruntime", "rapidocr-onnxruntime"), "nsfw": ("nudenet", "nudenet")}


def require(ocr: bool, nsfw: bool) -> None:
    """Fail before any work starts when a turned-on score's package is missing."""
    for flag, on in (("ocr", ocr), ("nsfw", nsfw)):
        module, package = PACKAGES[flag]
        if on and importlib.util.find_spec(module) is None:
            raise RuntimeError(f"quality.{flag} needs the package {package}: pip install 'vidcurate[flags]'")


def _tuned(session):
    """The same onnxruntime session with idle threads that sleep, and as many threads as CPUs
    given to this process where OMP_NUM_THREADS says (Ray sets it to a task's num_cpus;
    onnxruntime does not read it). Idle threads spin by default: with two detectors taking turns
    on one clip, each one's spinning slowed the other (128 ms per clip for both against 96 ms
    timed apart, on 2 cores)."""
    import onnxruntime

    options = session.get_session_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
    return onnxruntime.InferenceSession(session._model_path, sess_options=options, providers=session.get_providers())


@functools.lru_cache(maxsize=4)
def _ocr(side: int):
    from rapidocr_onnxruntime import RapidOCR

    # The detector scales each frame so its short side is `side`; rapidocr's default (736)
    # upsamples a 360p clip 2x, four times the pixels for text that is already legible.
    engine = RapidOCR(det_limit_side_len=side, det_limit_type="min")
    engine.text_det.infer.session = _tuned(engine.text_det.infer.session)
    return engine


@functools.lru_cache(maxsize=1)
def _nudenet():
    from nudenet import NudeDetector

    detector = NudeDetector()
    detector.onnx_session = _tuned(detector.onnx_session)
    return detector


def _smaller(rgb: np.ndarray, side: int) -> np.ndarray:
    """The frame with its short side scaled down to `side` (never up)."""
    import cv2

    height, width = rgb.shape[:2]
    scale = side / min(height, width)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


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


def clip_text_coverage(frames: np.ndarray, side: int = OCR_SIDE, gate_side: int | None = OCR_GATE_SIDE) -> float:
    """The most text any of the frames holds. With `gate_side`, every frame is first looked at
    scaled down to that short side (a fifth of the pixels of 360p); a clip where none shows text
    scores 0, otherwise the frame showing the most is measured again at `side`."""
    if gate_side is None or gate_side >= side:
        return max(text_coverage(f, side) for f in frames)
    looks = [text_coverage(_smaller(f, gate_side), gate_side) for f in frames]
    if max(looks) == 0:
        return 0.0
    return text_coverage(frames[int(np.argmax(looks))], side)


def nudity(frames: np.ndarray, classes: frozenset = EXPOSED) -> list[float]:
    """Per frame, the highest NudeNet confidence of one of `classes` (0 when none): NudeNet's own
    input (padded to a square, scaled to 320) and decisions (confidence 0.2, class-agnostic NMS at
    0.25 / IoU 0.45), with the frames in one batch and its output decoded in numpy instead of a
    Python loop per anchor. (Padding only to a multiple of 32 was 40% cheaper but moved scores
    of real 240p frames by up to 0.15, across the rule's 0.5.)"""
    import cv2
    from nudenet import nudenet as module

    detector = _nudenet()
    prepared = [module._read_image(np.ascontiguousarray(f[..., ::-1]), detector.input_width) for f in frames]
    (outputs,) = detector.onnx_session.run(None, {detector.input_name: np.concatenate([p[0] for p in prepared])})
    wanted = np.array([label in classes for label in vars(module)["__labels"]])
    scores = []
    for rows, (_, _, _, x_pad, y_pad, width, height) in zip(outputs, prepared):
        rows = rows.T  # anchors x (cx, cy, w, h, class scores...)
        best = rows[:, 4:].max(axis=1)
        rows, best = rows[best >= 0.2], best[best >= 0.2]
        cx, cy, w, h = (rows[:, :4] * ([width + x_pad, height + y_pad] * 2) / detector.input_width).T
        x = np.clip(cx - w / 2, 0, width)
        y = np.clip(cy - h / 2, 0, height)
        boxes = np.stack([x, y, np.minimum(w, width - x), np.minimum(h, height - y)], axis=1)
        kept = np.asarray(cv2.dnn.NMSBoxes(boxes.tolist(), best.tolist(), 0.25, 0.45)).reshape(-1)
        found_class = rows[:, 4:].argmax(axis=1)
        scores.append(round(max((float(best[i]) for i in kept if wanted[found_class[i]]), default=0.0), 4))
    return scores


def flag_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """The `count` evenly spaced frames (all, when there are fewer) the detectors look at."""
    return frames[np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))]


def flag_scores(
    frames: np.ndarray, count: int, ocr: bool, nsfw: bool, ocr_side: int = OCR_SIDE, ocr_gate_side: int | None = OCR_GATE_SIDE
) -> dict:
    """`ocr_coverage` and/or `nsfw` over `count` evenly spaced frames, the worst frame counting:
    one frame of a burned-in title or of nudity is enough to matter."""
    if not (ocr or nsfw):
        return {}
    picked = flag_frames(frames, count)
    scores = {}
    if ocr:
        scores["ocr_coverage"] = clip_text_coverage(picked, ocr_side, ocr_gate_side)
    if nsfw:
        scores["nsfw"] = max(nudity(picked))
    return scores
