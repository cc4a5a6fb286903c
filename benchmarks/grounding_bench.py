"""Event boundaries before and after refinement, against planted truth.

    python benchmarks/grounding_bench.py [--videos 6] [--frames 4,8,16] [--seed 0] [--background colour|real]

Synthetic videos (tests/planted.py, without the frame barcode) show a red square only while a
planted event is on, at seeded random frames, over flat-coloured 6 s shots (`colour`) or over real
footage with its own cuts and camera motion (`real`: ../shared/data/videos/psd_testvideo.mp4,
re-timed to 25 fps, the square as a needle in it). The real split cuts the
clips and keeps each frame's change score; the real caption stage samples `caption.frames` frames
and asks the one test double, a captioner that answers as a model that saw only those frames would
(tests/planted.py SampledFrameCaptioner: times on the sampled grid); ground's refinement
(`stages.spans.refine_events`) then moves each boundary. Printed: the mean absolute error of the
boundaries inside the clips, in seconds, coarse and refined, at each frame setting; the last line
is the 8-frame figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from planted import FPS, SIZE, SampledFrameCaptioner, make_planted_video  # noqa: E402
from vidcurate.stages.caption import CaptionConfig, caption_decoded, decode_clips, frame_need  # noqa: E402
from vidcurate.stages.frame_store import read_changes  # noqa: E402
from vidcurate.stages.probe import ProbeConfig, probe_video  # noqa: E402
from vidcurate.stages.spans import refine_events  # noqa: E402
from vidcurate.stages.split import SplitConfig, split_video  # noqa: E402

SHOT_S, SHOTS = 6.0, 4
COLOURS = [(40, 90, 160), (30, 140, 60), (150, 120, 40), (90, 60, 140)]


def planted_events(rng: np.random.Generator) -> list[tuple[float, float]]:
    """One event per shot, 1-4 s long, at whole frames, at least 0.5 s from the shot's edges."""
    events = []
    for shot in range(SHOTS):
        length = rng.integers(25, 100)  # frames
        start = rng.integers(13, round(SHOT_S * FPS) - 13 - length)
        events.append(((shot * SHOT_S * FPS + start) / FPS, (shot * SHOT_S * FPS + start + length) / FPS))
    return events


def boundary_errors(clip: dict, caption: dict, truth: list[tuple[float, float]], refine: bool) -> list[float]:
    """|boundary - truth| for each start and end of the planted events that lies inside the clip
    (one at the clip's own edge is right by construction), against the caption's event nearest it."""
    duration = clip["end_s"] - clip["start_s"]
    events = json.loads(caption["events"] or "[]")
    if refine:
        times, changes = read_changes(clip["frames_uri"])
        events = refine_events(events, caption["frame_times"], duration, times, changes)
    planted = [(max(a, clip["start_s"]) - clip["start_s"], min(b, clip["end_s"]) - clip["start_s"]) for a, b in truth if a < clip["end_s"] and b > clip["start_s"]]
    errors = []
    for event in events:
        a, b = min(planted, key=lambda p: abs(p[0] - event["start_s"]) + abs(p[1] - event["end_s"]))
        errors += [abs(event[key] - t) for key, t in (("start_s", a), ("end_s", b)) if 0.01 < t < duration - 0.01]
    return errors


def real_footage(path: Path):
    """Frame i of a real video, scaled to the planted videos' size."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24", width=SIZE[0], height=SIZE[1]) for f in container.decode(video=0)]
    return lambda i: frames[min(i, len(frames) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", default="4,8,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--background", choices=["colour", "real"], default="colour")
    args = parser.parse_args()
    background = real_footage(REPO.parent / "shared" / "data" / "videos" / "psd_testvideo.mp4") if args.background == "real" else None
    rng = np.random.default_rng(args.seed)
    settings = [int(f) for f in args.frames.split(",")]
    needs = tuple(frame_need(CaptionConfig(frames=f, max_frames=max(settings), frame_height=120)) for f in settings)
    scratch = tempfile.TemporaryDirectory(prefix="grounding-bench-")  # removed when main returns
    work = Path(scratch.name)
    clips, truth = [], []
    for i in range(args.videos):
        events = planted_events(rng)
        shots = [(s * SHOT_S, COLOURS[s]) for s in range(SHOTS)]
        path = make_planted_video(work / f"v{i}.mp4", barcode=False, events=events, shots=shots, duration_s=SHOTS * SHOT_S, background=background)
        video = probe_video(str(path), ProbeConfig(), None)
        rows = split_video(video, work / "media", SplitConfig(max_clip_s=SHOT_S, clip_max_height=240), needs)
        kept = [r for r in rows if r["status"] == "kept"]
        clips += kept
        truth += [events] * len(kept)
    results = {}
    for frames in settings:
        cfg = CaptionConfig(frames=frames, max_frames=max(settings), frame_height=120, max_events=4)
        captions = caption_decoded(decode_clips(clips, cfg), SampledFrameCaptioner(), cfg)
        coarse, refined = ([e for c, row, t in zip(clips, captions, truth) for e in boundary_errors(c, row, t, r)] for r in (False, True))
        results[frames] = (float(np.mean(coarse)), float(np.mean(refined)), len(coarse))
        print(f"caption.frames {frames:2d}: {len(coarse)} boundaries, mean abs error coarse {results[frames][0]:.3f} s, refined {results[frames][1]:.3f} s")
    coarse, refined, _ = results.get(8, next(iter(results.values())))
    print(f"boundary error: coarse {coarse:.3f} s, refined {refined:.3f} s")


if __name__ == "__main__":
    main()
