"""Synthetic videos with events planted at known times, and the one test double of the
alignment test: a captioner that answers with those events.

Each frame shows a shot colour (hard cuts between shots), a red square only while an event
is on, and its own frame index as a barcode of black/white blocks along the top. The double
reads the barcode of the frames it is shown, so it knows where in the source its clip lies
without being told, and answers the planted events in the clip's time, as a perfect model
would. Everything after it is the real pipeline.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
SIZE = (320, 240)
BITS, BLOCK = 10, 16  # barcode: frame index, 16x16 blocks from the top-left corner
SQUARE = (slice(150, 190), slice(140, 180))  # rows, columns of the planted square
SHOTS = [(0.0, (40, 90, 160)), (6.0, (30, 140, 60)), (12.0, (150, 120, 40)), (18.0, (90, 60, 140))]
EVENTS = [(1.0, 3.0), (7.4, 10.0), (13.0, 16.6), (19.2, 22.0)]  # seconds, never across a cut
DURATION_S = 24.0
EVENT_TEXT = "a red square is shown"


def make_planted_video(path: Path, barcode: bool = True, events=EVENTS, shots=SHOTS, duration_s: float = DURATION_S, background=None) -> Path:
    """The planted video; without the barcode, only the shots and the square change the picture
    (what a boundary search by picture change should find). `background(i)`: frame i's picture
    (RGB at SIZE) instead of the shots' colours, e.g. real footage."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(round(duration_s * FPS)):
            t = i / FPS
            rgb = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
            rgb[:] = [colour for start, colour in shots if start <= t][-1] if background is None else background(i)
            if any(a <= t < b for a, b in events):
                rgb[SQUARE] = (230, 20, 20)
            for bit in range(BITS if barcode else 0):
                rgb[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if (i >> bit) & 1 else 0
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def frame_index(rgb: np.ndarray) -> int:
    """The barcode of a frame (any size: blocks scale with it)."""
    block = BLOCK * rgb.shape[0] / SIZE[1]
    bits = [rgb[int(block / 2), int((k + 0.5) * block)].mean() > 128 for k in range(BITS)]
    return sum(1 << k for k, on in enumerate(bits) if on)


def square_visible(rgb: np.ndarray) -> bool:
    scale = rgb.shape[0] / SIZE[1]
    rows = slice(int(SQUARE[0].start * scale) + 2, int(SQUARE[0].stop * scale) - 2)
    cols = slice(int(SQUARE[1].start * scale) + 2, int(SQUARE[1].stop * scale) - 2)
    r, g, b = (rgb[rows, cols, c].astype(float).mean() for c in range(3))
    return r > 150 and g < 90 and b < 90


def _prompt_view(prompt) -> tuple[list[float], list[np.ndarray], float]:
    """What a captioner is shown: the sampled frames' times, the frames, and the clip's duration."""
    texts = [v for kind, v in prompt.parts if kind == "text"]
    times = [float(m) for t in texts for m in re.findall(r"^Frame at ([\d.]+) s:", t)]
    duration = float(re.search(r"lasting ([\d.]+) seconds", texts[-1]).group(1))
    return times, [v for kind, v in prompt.parts if kind == "image"], duration


class PlantedEventCaptioner:
    """The test double at the captioning backend interface (`generate(prompts) -> answers`)."""

    name = "planted-events"

    def generate(self, prompts) -> list[str]:
        return [self._answer(p) for p in prompts]

    def _answer(self, prompt) -> str:
        times, images, duration = _prompt_view(prompt)
        offset = frame_index(images[0]) / FPS - times[0]  # source time of the clip's start
        events = []
        for a, b in EVENTS:
            start, end = max(a - offset, 0.0), min(b - offset, duration)
            if end - start > 0.2:
                events.append({"start_s": round(start, 3), "end_s": round(end, 3), "text": EVENT_TEXT})
        return json.dumps({"caption": "Coloured shots; a red square comes and goes.", "events": events})


class SampledFrameCaptioner(PlantedEventCaptioner):
    """A test double at the captioning backend interface that answers as a model that saw only
    the sampled frames would: an event starts at the first sampled frame showing the square and
    ends at the first one after it that does not (or the clip's end), so its times sit on the
    sampled grid (what boundary refinement has to improve on)."""

    name = "sampled-frames"
    SIGHTS = {EVENT_TEXT: square_visible}
    CAPTION = "Coloured shots; a red square comes and goes."

    def _answer(self, prompt) -> str:
        times, images, duration = _prompt_view(prompt)
        events = []
        for text, sees in self.SIGHTS.items():
            start = None
            for t, on in zip([*times, duration], [*(sees(rgb) for rgb in images), False]):
                if on and start is None:
                    start = t
                elif not on and start is not None:
                    events.append({"start_s": start, "end_s": t, "text": text})
                    start = None
        return json.dumps({"caption": self.CAPTION, "events": sorted(events, key=lambda e: e["start_s"])})


class NeedleCaptioner(SampledFrameCaptioner):
    """The needle audit's test double at the captioning backend interface: it sees the needles of
    `pipelines.audit` in the sampled frames (a white picture with a red disc; a white banner across
    the lower third) and answers each where a model that saw only those frames would."""

    name = "needle-reader"
    SIGHTS = {"a red circle is shown": lambda rgb: _white(rgb[: rgb.shape[0] // 8]) and rgb[rgb.shape[0] // 2, rgb.shape[1] // 2, 0] > 180 > rgb[rgb.shape[0] // 2, rgb.shape[1] // 2, 1] + 100,
              "the word NEEDLE appears": lambda rgb: _white(rgb[int(rgb.shape[0] * 0.64) : int(rgb.shape[0] * 0.67)]) and not _white(rgb[: rgb.shape[0] // 8])}  # fmt: skip
    CAPTION = "A clip with something put into it."


def _white(rgb: np.ndarray) -> bool:
    return float(rgb.mean()) > 235


def decoded(media: bytes | Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of a file with its presentation time in seconds."""
    import io

    source = io.BytesIO(media) if isinstance(media, bytes) else str(media)
    frames, times = [], []
    with av.open(source) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
    return frames, times


def shown_at(frames: list[np.ndarray], times: list[float], t: float) -> np.ndarray:
    """The frame on screen at time t."""
    index = max(i for i, start in enumerate(times) if start <= t + 1e-6)
    return frames[index]
