"""Shot-boundary detection on downscaled frames (pure numpy, no I/O).

A cut at frame index i means frame i is the first frame of a new shot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Weights of the Y, U, V planes in the difference score: luma carries most structure.
_PLANE_WEIGHTS = np.array([0.5, 0.25, 0.25], dtype=np.float32)
# A frame is black when even its brightest 1% of pixels stay below this luma: limited-range
# black is 16, and the first frame of a fade-in already has highlights above 22.
BLACK_LUMA = 22.0
FLASH_LOOKAHEAD = 3  # a change that reverts within this many frames is a flash, not a cut


@dataclass(frozen=True)
class Cut:
    frame: int
    kind: str  # "hard" | "fade"


def frame_differences(yuv: np.ndarray) -> np.ndarray:
    """Mean absolute difference of consecutive frames (0-255 scale); element 0 is 0."""
    frames = yuv.astype(np.float32)
    diff = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2)) @ _PLANE_WEIGHTS
    return np.concatenate([[0.0], diff]).astype(np.float32)


def _neighbour_mean(scores: np.ndarray, window: int) -> np.ndarray:
    """Mean of the `window` scores on each side of every index, the index itself excluded."""
    padded = np.pad(scores, window, mode="edge")
    kernel = np.ones(2 * window + 1, dtype=np.float32)
    kernel[window] = 0
    return np.convolve(padded, kernel, mode="valid") / (2 * window)


def _reverts(frames: np.ndarray, i: int, threshold: float) -> bool:
    """True if a frame shortly after i looks like frame i-1 again (a flash or a glitch)."""
    before = frames[i - 1].astype(np.float32)
    for j in range(i + 1, min(i + 1 + FLASH_LOOKAHEAD, len(frames))):
        diff = np.abs(frames[j].astype(np.float32) - before).mean(axis=(0, 1)) @ _PLANE_WEIGHTS
        if diff < threshold / 2:
            return True
    return False


def hard_cuts(yuv: np.ndarray, threshold: float, adaptive_ratio: float, window: int) -> list[Cut]:
    scores = frame_differences(yuv)
    context = _neighbour_mean(scores, window)
    candidates = np.flatnonzero((scores >= threshold) & (scores >= adaptive_ratio * context))
    return [Cut(int(i), "hard") for i in candidates if i > 0 and not _reverts(yuv, int(i), threshold)]


def black_frames(yuv: np.ndarray) -> np.ndarray:
    luma = yuv[..., 0].reshape(len(yuv), -1)
    return np.percentile(luma, 99, axis=1) < BLACK_LUMA


def black_edges(black: np.ndarray) -> list[Cut]:
    """Boundaries where content goes to black and where it comes back (fades, black gaps)."""
    steps = np.diff(np.concatenate([[0], black.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)  # runs [start, end)
    edges = [Cut(int(s), "to_black") for s in starts if s > 0]
    return edges + [Cut(int(e), "from_black") for e in ends if e < len(black)]


def detect_cuts(yuv: np.ndarray, threshold: float, adaptive_ratio: float, window: int) -> tuple[list[Cut], np.ndarray]:
    """Hard cuts plus the edges of black runs, sorted; and the per-frame black mask.

    Black runs become their own (rejected) spans downstream, so a fade through black
    yields clean clips on both sides and a black lead-in is trimmed.
    """
    black = black_frames(yuv)
    hard = [c for c in hard_cuts(yuv, threshold, adaptive_ratio, window) if not (black[c.frame] or black[c.frame - 1])]
    return sorted(hard + black_edges(black), key=lambda c: c.frame), black
