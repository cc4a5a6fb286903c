"""A span's times are only as good as their grid, and only as true as a second signal says.

- `refine_events`: a captioner that saw a clip's sampled frames can only put an event's boundary
  on one of their times. The content really changes somewhere between the neighbouring sampled
  frames: each boundary moves to the frame there with the largest change score (split computes
  them while it decodes, `stages.frame_store`), never outside that interval, and only where the
  change stands out from the clip's ordinary frame-to-frame change. Both times are kept.
- `span_verification`: how much better a text matches the frames inside its span than those
  outside, from the embed model's text and frame embeddings: the share of (inside, outside) frame
  pairs in which the inside frame matches better (ties count half; 0.5: no evidence either way).
  None where the span leaves no frame on one side.
"""

from __future__ import annotations

import numpy as np

ON_GRID_S = 6e-3  # a boundary this close to a sampled time was put there (the prompt states times to 0.01 s)
STANDS_OUT = 3.0  # a change counts as the boundary when it is this many times the clip's median change


def refine_events(events: list[dict], sampled_s: list[float], duration_s: float, change_times_s: np.ndarray, changes: np.ndarray) -> list[dict]:
    """`events` ({start_s, end_s, text}) with each boundary that sits on a sampled time moved to a
    frame of large change between the neighbouring sampled times, and `coarse_start_s` /
    `coarse_end_s` recording where the captioner put them. An event's two boundaries are placed
    together: the pair of standing-out changes (or coarse times) with the most change whose start
    comes before its end, so a short event whose boundaries share an interval gets both."""
    grid = sorted({0.0, *(float(t) for t in sampled_s), float(duration_s)})
    typical = float(np.median(changes)) if len(changes) else 0.0
    out = []
    for event in events:
        starts = _candidates(event["start_s"], grid, change_times_s, changes, typical)
        ends = _candidates(event["end_s"], grid, change_times_s, changes, typical)
        pairs = [(a_score + b_score, a, b) for a, a_score in starts for b, b_score in ends if a < b]
        _, start, end = max(pairs, default=(0.0, event["start_s"], event["end_s"]), key=lambda p: p[0])
        out.append({**event, "start_s": start, "end_s": end, "coarse_start_s": event["start_s"], "coarse_end_s": event["end_s"]})
    return out


def _candidates(boundary: float, grid: list[float], times: np.ndarray, changes: np.ndarray, typical: float) -> list[tuple[float, float]]:
    """(time, change) of each frame strictly between the grid points around `boundary` (itself a
    grid point) whose change stands out, and the boundary itself as it was (change 0)."""
    k = min(range(len(grid)), key=lambda i: abs(grid[i] - boundary))
    if abs(grid[k] - boundary) > ON_GRID_S or k in (0, len(grid) - 1):
        return [(boundary, 0.0)]  # not on the grid, or the clip's own start or end
    inside = (times > grid[k - 1] + ON_GRID_S) & (times < grid[k + 1] - ON_GRID_S) & (changes > STANDS_OUT * typical) & (changes > 0)
    return [(round(float(times[i]), 3), float(changes[i])) for i in np.flatnonzero(inside)] + [(boundary, 0.0)]


def span_verification(text_emb: np.ndarray | None, frame_embs: np.ndarray | None, frame_times_s: np.ndarray | None, spans: list[list[float]]) -> float | None:
    """The share of (inside, outside) frame pairs whose inside frame matches `text_emb` better
    (cosine; embeddings L2-normalised), ties half: 1.0 when every frame inside the spans matches
    better than every frame outside, 0.5 for no evidence. None without embeddings or without a
    frame on each side."""
    if text_emb is None or frame_embs is None or frame_times_s is None or not len(frame_embs):
        return None
    sims = np.asarray(frame_embs, np.float32) @ np.asarray(text_emb, np.float32)
    times = np.asarray(frame_times_s, np.float64)
    inside = np.zeros(len(times), bool)
    for a, b in spans:
        inside |= (times >= a - 1e-6) & (times <= b + 1e-6)
    if inside.all() or not inside.any():
        return None
    a, b = sims[inside][:, None], sims[~inside][None, :]
    return round(float(((a > b) + 0.5 * (a == b)).mean()), 4)
