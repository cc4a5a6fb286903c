"""Shot-boundary detection on downscaled frames (pure numpy, no I/O).

A cut at frame index i means frame i is the first frame of a new shot. Four tests share one
pass over the frames: hard cuts (adaptive frame difference, flashes excluded), dissolves
between calm shots (steady structural change), dissolves between moving shots (frames that
are the average of their neighbours) and black runs (fades through black, black lead-ins),
whose edges become cuts so the black itself can be cut out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Weights of the Y, U, V planes in the difference score: luma carries most structure.
PLANE_WEIGHTS = np.array([0.5, 0.25, 0.25], dtype=np.float32)
# A frame is black when even its brightest 1% of pixels stay below this luma: limited-range
# black is 16, and the first frame of a fade-in already has highlights above 22.
BLACK_LUMA = 22.0
FLASH_LOOKAHEAD = 5  # a change undone within this many frames is a flash, not a cut
DISSOLVE_HALF_WIDTHS = (4, 8)  # frames on each side of a dissolve's middle that are compared
DISSOLVE_MIN_CHANGE = 0.6  # structure change across a dissolve, in per-frame standard deviations
DISSOLVE_MIN_STEADINESS = 0.6  # how much of the frame-to-frame change adds up in one direction
DISSOLVE_CONTRAST = 2.0  # the change across a dissolve vs the change within the shots beside it
# A dissolve between moving shots: over 2k frames (k below) the structure changes by at least
# BLEND_MIN_CHANGE while the middle frame stays within BLEND_MAX_RESIDUAL of the average of the
# two ends (relative to half their difference). Tuned on make_moving.py seeds 200-211 (pans, zooms,
# whip pans, flashes, zoom bursts), checked on held-out seeds (benchmarks/RESULTS.md).
BLEND_HALF_WIDTHS = (8,)
BLEND_MIN_CHANGE = 0.6
BLEND_MAX_RESIDUAL = 0.7
# ...unless one shift of the picture explains the change (a whip pan over smooth content also
# looks like a blend): after the best shift the ends differ by at most this share of before.
SHIFT_EXPLAINS = 0.6
CHUNK = 2048  # frames per block of float work
# A frozen frame (a paused recording, a slate) changes by encoder noise alone: ~0.5 at most on the
# test videos, while a calm real shot drifts past this within a few seconds.
STATIC_DISTANCE = 1.0


@dataclass(frozen=True)
class Cut:
    frame: int
    kind: str  # "hard" | "dissolve" | "to_black" | "from_black"


def _chunked(n: int, fn, chunk: int = CHUNK) -> np.ndarray:
    """fn(start, stop) for consecutive index ranges, concatenated: bounds the float temporaries
    of long videos (a 4-hour video has ~430k analysis frames) to one chunk at a time."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([fn(i, min(i + chunk, n)) for i in range(0, n, chunk)]).astype(np.float32)


def pair_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0-255 scale, planes weighted) of each frame pair of two stacks."""
    pixels = first.shape[1] * first.shape[2]
    diff = np.maximum(first, second) - np.minimum(first, second)  # |a - b| without leaving uint8
    return diff.reshape(len(first), -1).astype(np.float32) @ (np.tile(PLANE_WEIGHTS, pixels) / pixels)


def frame_differences(yuv: np.ndarray) -> np.ndarray:
    """Mean absolute difference of consecutive frames (0-255 scale); element 0 is 0."""
    diffs = _chunked(len(yuv) - 1, lambda a, b: pair_distances(yuv[a:b], yuv[a + 1 : b + 1]))
    return np.concatenate([[0.0], diffs]).astype(np.float32)


def frame_distance(a: np.ndarray, b: np.ndarray) -> float:
    """frame_differences' score for one pair of frames."""
    return float(pair_distances(a[None], b[None])[0])


def _neighbour_mean(scores: np.ndarray, window: int) -> np.ndarray:
    """Mean of the `window` scores on each side of every index, the index itself excluded."""
    padded = np.pad(scores, window, mode="edge")
    kernel = np.ones(2 * window + 1, dtype=np.float32)
    kernel[window] = 0
    return np.convolve(padded, kernel, mode="valid") / (2 * window)


def _is_flash(frames: np.ndarray, i: int, score: float, threshold: float) -> bool:
    """True if the change at i is undone within FLASH_LOOKAHEAD frames (start of a flash) or
    undoes one from just before (its end): a camera flash or glitch, not a new shot."""
    bar = max(threshold / 2, 0.35 * score)  # the scene keeps moving meanwhile

    def close(a: int, b: int) -> bool:
        return frame_distance(frames[a], frames[b]) < bar

    after = range(i + 1, min(i + 1 + FLASH_LOOKAHEAD, len(frames)))
    before = range(max(i - 1 - FLASH_LOOKAHEAD, 0), i - 1)
    return any(close(j, i - 1) for j in after) or any(close(i, j) for j in before)


def _strongest_apart(candidates: np.ndarray, scores: np.ndarray, gap: int, accept=None) -> list[int]:
    """Non-maximum suppression: of candidates closer than `gap` frames, keep the highest score
    (that `accept`s, when given: checked only on candidates still in the running)."""
    kept: list[int] = []
    for i in sorted(candidates, key=lambda c: -scores[c]):
        if all(abs(i - k) >= gap for k in kept) and (accept is None or accept(int(i))):
            kept.append(int(i))
    return sorted(kept)


def hard_cuts(yuv: np.ndarray, threshold: float, adaptive_ratio: float, window: int) -> list[Cut]:
    scores = frame_differences(yuv)
    context = _neighbour_mean(scores, window)
    candidates = np.flatnonzero((scores >= threshold) & (scores >= adaptive_ratio * context))
    candidates = [i for i in candidates if i > 0 and not _is_flash(yuv, int(i), float(scores[i]), threshold)]
    return [Cut(i, "hard") for i in _strongest_apart(np.asarray(candidates, dtype=int), scores, window)]


def structure_changes(yuv: np.ndarray, lags: tuple[int, ...]) -> dict[int, np.ndarray]:
    """For each lag L: out[i] = mean |z(i) - z(i+L)| (0 where i+L is past the end), z being luma
    with each frame's brightness and contrast removed, so fades and exposure changes do not count.

    Every comparison a dissolve test needs is one of these lagged series, so z is computed
    once per chunk of frames rather than once per comparison.
    """
    n, reach = len(yuv), max(lags)
    luma = yuv[..., 0]
    out = {lag: np.zeros(n, dtype=np.float32) for lag in lags}
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        block = luma[a : min(b + reach, n)].astype(np.float32)
        block = block.reshape(len(block), -1)
        block -= block.mean(axis=1, keepdims=True)
        block /= np.maximum(np.sqrt((block * block).mean(axis=1, keepdims=True)), 8.0)
        for lag in lags:
            stop = min(b, n - lag)
            if stop > a:
                out[lag][a:stop] = np.abs(block[lag : lag + stop - a] - block[: stop - a]).mean(axis=1)
    return out


def dissolves(yuv: np.ndarray, avoid: np.ndarray) -> list[Cut]:
    """Gradual transitions: over 2k frames the picture's structure changes a lot, steadily,
    while the shots on either side are calm; or (blends) between moving shots.

    In a dissolve every frame moves the same way from shot A to shot B, so the change from
    frame i-k to i+k about equals the sum of the frame-to-frame changes (steadiness ~1);
    motion changes frames back and forth, so its sum is far larger. A steady pan passes that
    test, but then the shots beside it change as much: the contrast test rejects it. A fast pan
    between calm stretches is rejected because one shift of the picture explains its change.
    Frames flagged in `avoid` (black, or next to a hard cut) are never a dissolve's middle.
    """
    n = len(yuv)
    changes = structure_changes(yuv, tuple(sorted({1, *(2 * k for k in DISSOLVE_HALF_WIDTHS + BLEND_HALF_WIDTHS)})))
    running = np.concatenate([[0.0], np.cumsum(changes[1][:-1])])  # summed frame-to-frame change up to i
    strength = np.zeros(n, dtype=np.float32)
    for k in DISSOLVE_HALF_WIDTHS:
        if n <= 6 * k:
            continue
        mid = np.arange(3 * k, n - 3 * k)
        lagged = changes[2 * k]  # lagged[i]: change from frame i to frame i + 2k
        across = lagged[mid - k]
        steady = across / np.maximum(running[mid + k] - running[mid - k], 1e-6)
        calm = across >= DISSOLVE_CONTRAST * np.maximum(lagged[mid - 3 * k], lagged[mid + k])
        ok = (across >= DISSOLVE_MIN_CHANGE) & (steady >= DISSOLVE_MIN_STEADINESS) & calm & ~avoid[mid]
        strength[mid] = np.maximum(strength[mid], np.where(ok, across * steady, 0))
    strength = np.maximum(strength, blends(yuv, avoid, changes))
    k = max(DISSOLVE_HALF_WIDTHS + BLEND_HALF_WIDTHS)

    def not_a_pan(i: int) -> bool:  # a pan (a whip pan too) moved the picture; nothing replaced it
        return k <= i < n - k and shift_residual(yuv[i - k], yuv[i + k]) > SHIFT_EXPLAINS

    picked = _strongest_apart(np.flatnonzero(strength > 0), strength, 2 * k, accept=not_a_pan)
    return [Cut(i, "dissolve") for i in picked]


def blend_residuals(yuv: np.ndarray, k: int, frames: np.ndarray) -> np.ndarray:
    """For each i in `frames`: mean |f(i) - (f(i-k) + f(i+k)) / 2| over all planes, divided by
    half of mean |f(i-k) - f(i+k)|. A cross-fade is linear in pixel values, so its frames are the
    average of their neighbours (~0) whatever the two shots do; under camera motion the average
    is a double image that the middle frame does not match (~1)."""
    out = np.ones(len(frames), dtype=np.float32)
    for a in range(0, len(frames), CHUNK):
        idx = frames[a : a + CHUNK]
        before, mid, after = (yuv[idx + d].reshape(len(idx), -1).astype(np.int16) for d in (-k, 0, k))
        off_average = np.abs(2 * mid - before - after).sum(axis=1)  # = 2 |mid - average| (int16 holds +-510)
        spread = np.abs(before - after).sum(axis=1)
        out[a : a + len(idx)] = off_average / np.maximum(spread, 1)
    return out


def _normalized_luma(frame: np.ndarray) -> np.ndarray:
    luma = frame[..., 0].astype(np.float32)
    luma -= luma.mean()
    return luma / max(float(luma.std()), 8.0)


def shift_residual(a: np.ndarray, b: np.ndarray) -> float:
    """How much of the difference between frames a and b is left once b is moved by the
    translation (phase correlation) that best matches a: ~0 for a pan, ~1 for new content."""
    za, zb = _normalized_luma(a), _normalized_luma(b)
    h, w = za.shape
    cross = np.fft.fft2(za) * np.conj(np.fft.fft2(zb))
    peak = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-6)).real
    dy, dx = np.unravel_index(int(np.argmax(peak)), peak.shape)
    dy, dx = (dy - h if dy > h // 2 else dy), (dx - w if dx > w // 2 else dx)  # za(y, x) ~ zb(y - dy, x - dx)
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    if ys.stop - ys.start < h // 3 or xs.stop - xs.start < w // 3:
        return 1.0  # too little overlap to tell
    moved = zb[ys.start - dy : ys.stop - dy, xs.start - dx : xs.stop - dx]
    return float(np.abs(za[ys, xs] - moved).mean() / max(np.abs(za - zb).mean(), 1e-6))


def blends(yuv: np.ndarray, avoid: np.ndarray, lagged: dict[int, np.ndarray]) -> np.ndarray:
    """Per-frame strength of a dissolve between moving shots (0 where none): the structure
    changes a lot across 2k frames and the middle frame is a blend of the two ends.

    The calm-shots test cannot see these: the shots beside the dissolve change as fast as it
    does. `lagged[2k]` are structure_changes' series.
    """
    n = len(yuv)
    strength = np.zeros(n, dtype=np.float32)
    for k in BLEND_HALF_WIDTHS:
        mid = np.arange(k, n - k)
        across = lagged[2 * k][mid - k]
        mid = mid[(across >= BLEND_MIN_CHANGE) & ~avoid[mid]]  # only here is the residual needed
        residual = blend_residuals(yuv, k, mid)
        ok = residual <= BLEND_MAX_RESIDUAL
        strength[mid[ok]] = np.maximum(strength[mid[ok]], lagged[2 * k][mid[ok] - k] * (1 - residual[ok]))
    return strength


def frozen_run_end(yuv: np.ndarray, start: int) -> int:
    """End (exclusive) of the run of frames from `start` that all stay within STATIC_DISTANCE of
    frame `start` (compared with that frame, so a slow drift ends the run too)."""
    for a in range(start, len(yuv), CHUNK):
        block = yuv[a : a + CHUNK]
        moved = np.flatnonzero(pair_distances(block, np.broadcast_to(yuv[start], block.shape)) >= STATIC_DISTANCE)
        if len(moved):
            return a + int(moved[0])
    return len(yuv)


def black_frames(yuv: np.ndarray) -> np.ndarray:
    """Frames whose brightest 1% of pixels stay below BLACK_LUMA (counted, not sorted)."""
    luma = yuv[..., 0].reshape(len(yuv), -1)
    allowed = luma.shape[1] // 100  # pixels that may be brighter in a black frame
    bright = _chunked(len(yuv), lambda a, b: (luma[a:b] >= BLACK_LUMA).sum(axis=1))
    return bright <= allowed


def black_edges(black: np.ndarray) -> list[Cut]:
    """Boundaries where content goes to black and where it comes back (fades, black gaps)."""
    steps = np.diff(np.concatenate([[0], black.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)  # runs [start, end)
    edges = [Cut(int(s), "to_black") for s in starts if s > 0]
    return edges + [Cut(int(e), "from_black") for e in ends if e < len(black)]


def detect_cuts(yuv: np.ndarray, threshold: float, adaptive_ratio: float, window: int) -> tuple[list[Cut], np.ndarray]:
    """Hard cuts, dissolves and the edges of black runs, sorted; and the per-frame black mask.

    Black runs become their own (rejected) spans downstream, so a fade through black
    yields clean clips on both sides and a black lead-in is trimmed.
    """
    black = black_frames(yuv)
    hard = [c for c in hard_cuts(yuv, threshold, adaptive_ratio, window) if not (black[c.frame] or black[c.frame - 1])]
    avoid = np.convolve(black, np.ones(2 * max(DISSOLVE_HALF_WIDTHS) + 1), mode="same") > 0
    for c in hard:
        avoid[max(c.frame - window, 0) : c.frame + window] = True
    cuts = hard + dissolves(yuv, avoid) + black_edges(black)
    return sorted(cuts, key=lambda c: c.frame), black
