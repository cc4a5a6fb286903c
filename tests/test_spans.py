"""Boundary refinement and span verification on known inputs: a change planted at a known frame,
and embeddings whose inside/outside frames are known."""

from __future__ import annotations

import numpy as np

from vidcurate.stages.spans import refine_events, span_verification

FPS = 25
TIMES = np.arange(250) / FPS  # a 10 s clip's frames


def _changes(*at_frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    changes = rng.uniform(0.5, 1.0, len(TIMES))  # ordinary frame-to-frame change
    for frame in at_frames:
        changes[frame] = 20.0
    return changes


def test_a_boundary_on_the_sampled_grid_moves_to_the_planted_change_and_keeps_its_coarse_time():
    sampled = [0.0, 2.5, 5.0, 7.5]  # 4 frames of a 10 s clip: the captioner's grid
    changes = _changes(57, 163)  # the event really runs from frame 57 (2.28 s) to frame 163 (6.52 s)
    (event,) = refine_events([{"start_s": 2.5, "end_s": 7.5, "text": "x"}], sampled, 10.0, TIMES, changes)
    assert (event["start_s"], event["end_s"]) == (2.28, 6.52)
    assert (event["coarse_start_s"], event["coarse_end_s"]) == (2.5, 7.5)


def test_refinement_never_leaves_the_interval_between_the_neighbouring_sampled_frames():
    sampled = [0.0, 2.5, 5.0, 7.5]
    changes = _changes(10)  # a big change at 0.4 s: outside (2.5, 7.5) around a boundary at 5.0
    (event,) = refine_events([{"start_s": 5.0, "end_s": 10.0, "text": "x"}], sampled, 10.0, TIMES, changes)
    assert event["start_s"] == 5.0  # nothing stands out between 2.5 and 7.5: kept as it was
    (event,) = refine_events([{"start_s": 2.5, "end_s": 10.0, "text": "x"}], sampled, 10.0, TIMES, changes)
    assert 0.0 < event["start_s"] < 5.0


def test_the_clip_edges_and_times_off_the_grid_stay():
    changes = _changes(5, 245)
    (event,) = refine_events([{"start_s": 0.0, "end_s": 10.0, "text": "x"}], [0.0, 5.0], 10.0, TIMES, changes)
    assert (event["start_s"], event["end_s"]) == (0.0, 10.0)
    (event,) = refine_events([{"start_s": 3.3, "end_s": 10.0, "text": "x"}], [0.0, 5.0], 10.0, TIMES, changes)
    assert event["start_s"] == 3.3


def test_verification_is_the_share_of_pairs_where_inside_matches_better():
    text = np.array([1.0, 0.0])
    times = np.arange(10.0)
    frames = np.array([[0.2, 1.0]] * 10)
    frames[3:6] = [1.0, 0.2]  # the text's frames: 3, 4, 5
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)
    assert span_verification(text, frames, times, [[3.0, 5.0]]) == 1.0
    assert span_verification(text, frames, times, [[6.0, 9.0]]) == 0.25  # never better; ties with frames 0-2 count half
    assert span_verification(text, frames, times, [[2.0, 5.0]]) == 0.875  # frame 2 inside, but like those outside
    assert span_verification(text, frames, times, [[0.0, 9.0]]) is None  # nothing outside
    assert span_verification(None, frames, times, [[3.0, 5.0]]) is None  # no embeddings: no score
