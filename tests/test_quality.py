"""Quality: real encoded clips that are black, static or blurred are rejected for exactly that
reason; percentile rules do not depend on row order."""

from __future__ import annotations

import json
import random

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from vidcurate.stages.quality import QualityConfig, QualityRule, decide, score_batch, text_scores

SIZE = (96, 128)  # height, width


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(0, 256, (SIZE[0] // 4, SIZE[1] // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((SIZE[1], SIZE[0]), Image.Resampling.NEAREST))


def _frames(kind: str, n: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    texture = np.tile(_texture(rng), (1, 2, 1))
    if kind == "black":
        return [np.full((*SIZE, 3), 4, np.uint8)] * n
    if kind == "static":
        return [texture[:, : SIZE[1]]] * n
    moving = [np.ascontiguousarray(texture[:, 4 * i : 4 * i + SIZE[1]]) for i in range(n)]
    if kind == "blurred":
        return [np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(5))) for f in moving]
    return moving


def _encode(frames: list[np.ndarray], path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    rows = []
    for kind in ("good", "black", "static", "blurred"):
        _encode(_frames(kind), folder / f"{kind}.mp4")
        rows.append({"clip_id": kind, "video_id": "v", "clip_uri": str(folder / f"{kind}.mp4"), "start_s": 0.0, "end_s": 1.0,
                     "clip_width": SIZE[1], "clip_height": SIZE[0], "caption": "a textured wall slides past", "clip_score": 0.3, "image_emb": None})
    table = score_batch(pa.Table.from_pylist(rows), frames_per_clip=8, aesthetic_path=None, with_aesthetic=False)
    return table.to_pylist()


def test_black_static_and_blurred_clips_are_rejected_for_their_reason(scored):
    cfg = QualityConfig()
    decided = {r["clip_id"]: r for r in decide(scored, cfg.rules, cfg.rank_scores)}
    assert decided["good"]["status"] == "kept"
    assert decided["black"]["status"] == "rejected"
    assert "black_fraction=1 (max 0.5)" in decided["black"]["reason"] and "brightness=" in decided["black"]["reason"]
    assert decided["static"]["status"] == "rejected"
    assert decided["static"]["reason"].startswith("motion: motion=") and "sharpness" not in decided["static"]["reason"]
    assert decided["blurred"]["status"] == "rejected"
    assert decided["blurred"]["reason"].startswith("sharpness: sharpness=") and "motion" not in decided["blurred"]["reason"]
    assert decided["good"]["quality"] > decided["blurred"]["quality"]


def test_percentile_rules_are_stable_under_shuffling():
    rng = random.Random(0)
    rows = [{"clip_id": f"c{i:03d}", "video_id": "v", "status": "kept", "stage": "quality", "reason": None,
             "scores": json.dumps({"sharpness": rng.uniform(0, 500), "aesthetic": rng.uniform(3, 7)})} for i in range(200)]
    rules = [QualityRule(score="sharpness", percentile_min=10), QualityRule(score="aesthetic", percentile_max=95)]
    reference = {r["clip_id"]: (r["status"], r.get("reason"), r["quality"]) for r in decide(rows, rules, ["sharpness", "aesthetic"])}
    assert 20 <= sum(s == "rejected" for s, _, _ in reference.values()) <= 32  # ~10% + ~5%
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        again = {r["clip_id"]: (r["status"], r.get("reason"), r["quality"]) for r in decide(shuffled, rules, ["sharpness", "aesthetic"])}
        assert again == reference


def test_text_scores_flag_repetition_and_mojibake():
    clean = text_scores("A man opens the door and the dog runs out into the garden.")
    looped = text_scores("the dog runs the dog runs the dog runs the dog runs")
    assert clean["text_repetition"] == 0 and looped["text_repetition"] > 0.5
    assert text_scores("cafÃ© by the sea")["text_fixed"] == 1.0 and clean["text_fixed"] == 0.0
    assert clean["text_latin"] == 1.0 and text_scores("Собака бежит по саду")["text_latin"] == 0.0


def _titled(n: int = 12) -> list[np.ndarray]:
    """A moving texture with a burned-in two-line title, at a size the text detector reads."""
    from PIL import ImageDraw, ImageFont

    rng = np.random.default_rng(5)
    texture = np.asarray(Image.fromarray(_texture(rng)).resize((2 * 426, 240)))
    font = ImageFont.load_default(size=40)
    frames = []
    for i in range(n):
        image = Image.fromarray(np.ascontiguousarray(texture[:, 8 * i : 8 * i + 426]))
        draw = ImageDraw.Draw(image)
        draw.rectangle((20, 60, 406, 180), fill=(20, 20, 20))
        draw.text((30, 70), "BREAKING NEWS", fill=(255, 255, 255), font=font)
        draw.text((30, 125), "LIVE AT NINE", fill=(255, 255, 255), font=font)
        frames.append(np.asarray(image))
    return frames


def test_ocr_and_nsfw_scores_from_the_bundled_detectors(tmp_path):
    rows = []
    plain = [np.asarray(Image.fromarray(f).resize((426, 240))) for f in _frames("good", 12)]
    for kind, frames in (("titled", _titled()), ("plain", plain)):
        path = tmp_path / f"{kind}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 426, 240, "yuv420p"
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(stream.encode())
        rows.append({"clip_id": kind, "video_id": "v", "clip_uri": str(path), "start_s": 0.0, "end_s": 0.5,
                     "clip_width": 426, "clip_height": 240, "caption": None, "clip_score": None, "image_emb": None})
    flags = {"ocr": True, "nsfw": True, "count": 2}
    table = pa.Table.from_pylist(rows)
    scored = score_batch(table, frames_per_clip=4, aesthetic_path=None, with_aesthetic=False, flags=flags)
    scores = {r["clip_id"]: json.loads(r["scores"]) for r in scored.to_pylist()}
    assert scores["titled"]["ocr_coverage"] > 0.08 and scores["plain"]["ocr_coverage"] < 0.02, scores
    assert scores["titled"]["nsfw"] < 0.5 and scores["plain"]["nsfw"] < 0.5
    rules = [QualityRule(score="ocr_coverage", max=0.05), QualityRule(score="nsfw", max=0.5)]
    decided = {r["clip_id"]: r for r in decide(scored.to_pylist(), rules, ["ocr_coverage"])}
    assert decided["plain"]["status"] == "kept"
    assert decided["titled"]["status"] == "rejected"
    assert decided["titled"]["reason"].startswith("ocr_coverage: ocr_coverage=")


def test_missing_flag_package_fails_before_any_work(monkeypatch):
    from vidcurate.stages import content_flags

    monkeypatch.setitem(content_flags.PACKAGES, "nsfw", ("no_such_module_here", "nudenet"))
    content_flags.require(ocr=True, nsfw=False)
    with pytest.raises(RuntimeError, match=r"quality.nsfw needs the package nudenet: pip install 'vidcurate\[flags\]'"):
        content_flags.require(ocr=False, nsfw=True)


def test_text_found_by_the_first_look_is_measured_at_full_size_on_the_frame_that_shows_it():
    from vidcurate.stages.content_flags import clip_text_coverage, text_coverage

    plain = np.stack([np.asarray(Image.fromarray(f).resize((426, 240))) for f in _frames("good", 3)])
    titled = np.stack([*plain[:2], _titled(1)[0]])  # the title appears in the last frame only
    assert clip_text_coverage(plain, 360, 160) == 0.0
    gated = clip_text_coverage(titled, 360, 160)
    assert gated == text_coverage(titled[2], 360) > 0.08
    assert gated == clip_text_coverage(titled, 360, None)  # every frame at full size agrees


def test_batched_nudity_decides_as_nudenets_own_detect():
    """Any class counts here, so faces and covered parts give real detections to compare; the
    photographs with people come from scikit-image, as in sample_data/make_moving.py. The batch is
    padded to a multiple of 32 rather than to a square, which moves scores by a few hundredths
    (benchmarks/flags_bench.py: at most 0.04)."""
    from nudenet import NudeDetector
    from nudenet import nudenet as module
    from skimage import data as photos

    from vidcurate.stages.content_flags import nudity

    every = frozenset(vars(module)["__labels"])
    frames = np.stack([np.asarray(Image.fromarray(getattr(photos, name)()).convert("RGB").resize((640, 360))) for name in ("astronaut", "coffee", "chelsea")])
    own = NudeDetector()
    expected = [round(max((d["score"] for d in own.detect(np.ascontiguousarray(f[..., ::-1]))), default=0.0), 4) for f in frames]
    assert expected[0] > 0.25  # the astronaut's face: at least one frame has a detection
    batched = nudity(frames, every)
    assert [s > 0 for s in batched] == [s > 0 for s in expected]
    assert np.abs(np.subtract(batched, expected)).max() <= 0.05, (batched, expected)
    assert nudity(frames) == [0.0, 0.0, 0.0]
