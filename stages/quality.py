"""Quality stage: technical, aesthetic and text scores per clip, then keep/reject by rules.

Scores are computed per clip (Ray tasks); rules are applied afterwards over the whole set,
because a rule may be a corpus percentile ("drop the blurriest 10%"). Percentiles come from
the sorted values, so shuffling the clips never changes a decision. A rejection names every
failing rule with its value and threshold.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
from pydantic import Field

from vidcurate.schemas.tables import FAILED, KEPT, REJECTED, SCORED, to_table
from vidcurate.stages.failures import failed
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.answer import clean_text
from vidcurate.stages.content_flags import OCR_GATE_SIDE, OCR_SIDE, flag_scores, require
from vidcurate.stages.contract import Stage
from vidcurate.stages.settings import StageResources, StrictModel


class QualityRule(StrictModel):
    """Bounds on one score; absolute (min/max) and/or corpus percentiles (0-100) of this run."""

    score: str
    min: float | None = None
    max: float | None = None
    percentile_min: float | None = Field(None, ge=0, le=100)
    percentile_max: float | None = Field(None, ge=0, le=100)


class QualityConfig(StrictModel):
    frames: int = Field(8, ge=2, description="frames per clip the technical scores look at")
    aesthetic_head: str | None = Field(None, description="LAION-style linear head (.pth); None: seeded random head (tiny)")
    rules: list[QualityRule] = Field(
        default_factory=lambda: [
            QualityRule(score="black_fraction", max=0.5),
            QualityRule(score="brightness", min=12.0),
            QualityRule(score="motion", min=0.5),
            QualityRule(score="sharpness", min=20.0),
            QualityRule(score="letterbox", max=0.4),
            QualityRule(score="ocr_coverage", max=0.25),
            QualityRule(score="nsfw", max=0.5),
        ],
        description="a clip failing any rule is rejected, with every failing rule named; "
        "a rule on a score that was not computed (e.g. nsfw with nsfw off) does nothing",
    )
    ocr: bool = Field(False, description="score `ocr_coverage`: share of the frame in detected text (flags extra)")
    nsfw: bool = Field(False, description="score `nsfw`: NudeNet confidence of exposed nudity (flags extra)")
    flag_frames: int = Field(3, ge=1, description="frames per clip the ocr / nsfw detectors look at")
    ocr_side: int = Field(
        OCR_SIDE, ge=32, description="short side the text detector scales frames to (rapidocr's own 736 upsamples 360p "
        "clips 2x; benchmarks/flags_bench.py measures cost and agreement)"
    )
    ocr_gate_side: int | None = Field(
        OCR_GATE_SIDE, ge=32, description="first look for text with frames scaled down to this short side; only a "
        "clip where it finds some is measured at ocr_side (on its frame with the most text); null: every frame at ocr_side"
    )
    languages: list[str] | None = Field(
        None, description="spoken languages a clip may have (codes: en, de, ...); a clip whose speech is in another "
        "is rejected (`language`); a clip nobody speaks in passes. Needs the speech stage"
    )
    rank_scores: list[str] = Field(
        default_factory=lambda: ["sharpness", "aesthetic", "clip_score", "resolution"],
        description="their mean percentile rank is the `quality` dedup keeps the best copy by",
    )
    resources: StageResources = StageResources(batch_size=8)


STAGE = "quality"
ANALYSIS_HEIGHT = 128  # frames are scored at this height, so thresholds do not depend on resolution
BLACK_LUMA = 22  # a frame whose 99th-percentile luma is below this is black (as in split)
_STOPWORDS = set("a an the and or of to in on at is are was were it this that with for as by from he she they".split())


def _gray(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(rgb).convert("L")
    width = max(8, round(image.width * ANALYSIS_HEIGHT / image.height))
    return np.asarray(image.resize((width, ANALYSIS_HEIGHT), Image.Resampling.BILINEAR), dtype=np.float32)


def _laplacian_var(gray: np.ndarray) -> float:
    lap = gray[1:-1, :-2] + gray[1:-1, 2:] + gray[:-2, 1:-1] + gray[2:, 1:-1] - 4 * gray[1:-1, 1:-1]
    return float(lap.var())


def _letterbox(gray: np.ndarray) -> float:
    """Share of rows and columns, at the borders, that are black bars."""
    dark_rows = np.percentile(gray, 99, axis=1) < BLACK_LUMA
    dark_cols = np.percentile(gray, 99, axis=0) < BLACK_LUMA
    edge = lambda dark: int(np.argmin(dark)) + int(np.argmin(dark[::-1])) if not dark.all() else len(dark)  # noqa: E731
    return round(max(edge(dark_rows) / len(dark_rows), edge(dark_cols) / len(dark_cols)), 4)


def technical_scores(frames: np.ndarray, duration_s: float, width: int, height: int) -> dict:
    """Sharpness, brightness, black frames, letterbox, motion and size from RGB frames."""
    grays = [_gray(f) for f in frames]
    motion = [float(np.abs(a - b).mean()) for a, b in zip(grays, grays[1:])]
    return {
        "sharpness": round(float(np.median([_laplacian_var(g) for g in grays])), 3),
        "brightness": round(float(np.mean([g.mean() for g in grays])), 3),
        "black_fraction": round(float(np.mean([np.percentile(g, 99) < BLACK_LUMA for g in grays])), 3),
        "letterbox": float(np.median([_letterbox(g) for g in grays])),
        "motion": round(float(np.mean(motion)) if motion else 0.0, 4),
        "resolution": float(min(width, height)),
        "duration_s": round(duration_s, 3),
    }


def text_scores(text: str | None) -> dict:
    """Caption quality: length, ftfy repairs, word repetition, and how English-like it reads."""
    if not text:
        return {}
    fixed = clean_text(text)
    words = re.findall(r"[^\W\d_]+", fixed.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    repeated = sum(c - 1 for c in Counter(trigrams).values()) / max(1, len(trigrams))
    letters = [ch for ch in fixed if ch.isalpha()]
    return {
        "text_words": float(len(words)),
        "text_fixed": float(fixed != " ".join(text.split())),
        "text_repetition": round(repeated, 4),
        "text_latin": round(sum(ch.isascii() for ch in letters) / max(1, len(letters)), 4),
        "text_stopwords": round(sum(w in _STOPWORDS for w in words) / max(1, len(words)), 4),
    }


class AestheticHead:
    """Linear head on CLIP image embeddings (LAION aesthetic predictor v1 layout: weight (1, d),
    bias (1,)). Loads a real head from a path; the tiny profile uses seeded random weights."""

    def __init__(self, path: str | None, dim: int):
        if path:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            weight = next(v for k, v in state.items() if k.endswith("weight"))
            bias = next(v for k, v in state.items() if k.endswith("bias"))
            self.weight, self.bias = weight.float().numpy().reshape(-1), float(bias.float().numpy().reshape(-1)[0])
        else:
            rng = np.random.default_rng(0)
            self.weight, self.bias = rng.normal(0, 1 / np.sqrt(dim), dim), 5.0
        if self.weight.shape[0] != dim:
            raise ValueError(f"aesthetic head expects {self.weight.shape[0]}-d embeddings, the embed model gives {dim}")

    def __call__(self, emb: np.ndarray) -> float:
        return round(float(emb @ self.weight + self.bias), 4)


def score_clip(clip: dict, frames_per_clip: int, aesthetic: AestheticHead | None, flags: dict | None = None) -> dict:
    """All scores of one clip (a merged stage row) as a flat dict of numbers; `flags` holds the
    optional detectors' settings (ocr, nsfw, count)."""
    frames, _ = read_frames(clip, frames_per_clip)
    scores = technical_scores(frames, clip["end_s"] - clip["start_s"], clip["clip_width"], clip["clip_height"])
    if flags:
        scores.update(flag_scores(frames, **flags))
    scores.update(text_scores(clip.get("caption")))
    if clip.get("clip_score") is not None:
        scores["clip_score"] = clip["clip_score"]
    if aesthetic is not None and clip.get("image_emb") is not None:
        scores["aesthetic"] = aesthetic(np.frombuffer(clip["image_emb"], dtype=np.float16).astype(np.float32))
    if clip.get("speech") is not None:
        scores["speech_fraction"] = speech_fraction(json.loads(clip["speech"]), clip["end_s"] - clip["start_s"])
    return scores


def speech_fraction(speech: dict, duration_s: float) -> float:
    """The share of the clip someone speaks in (the speech stage's voice activity)."""
    voiced = sum(s["end_s"] - s["start_s"] for s in speech["voice_activity"])
    return round(min(1.0, voiced / duration_s), 4) if duration_s > 0 else 0.0


def spoken_language(clip: dict) -> str | None:
    """The language spoken in the clip; None where nobody speaks (or speech did not run)."""
    return json.loads(clip["speech"])["language"] if clip.get("speech") else None


def score_batch(
    batch: pa.Table, frames_per_clip: int, aesthetic_path: str | None, with_aesthetic: bool, flags: dict | None = None
) -> pa.Table:
    """The stage core (a Ray task a batch): scores per clip; decisions come later, over the whole set."""
    rows = []
    head = None
    for clip in batch.to_pylist():
        row = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE, "speech_language": spoken_language(clip)}
        try:
            if with_aesthetic and head is None and clip.get("image_emb") is not None:
                head = AestheticHead(aesthetic_path, len(clip["image_emb"]) // 2)
            scores = score_clip(clip, frames_per_clip, head, flags)
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be scored fails alone
            rows.append({**row, **failed("score", exc)})
            continue
        rows.append({**row, "status": KEPT, "reason": None, "scores": json.dumps(scores, sort_keys=True)})
    return to_table(rows, SCORED)


def thresholds(rules: list, rows: list[dict]) -> list[tuple]:
    """Rules -> (score, op, threshold, label) with percentile rules resolved on this set."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, value in json.loads(row["scores"]).items():
            values.setdefault(name, []).append(value)
    out = []
    for rule in rules:
        for op, bound, pct in (("min", rule.min, rule.percentile_min), ("max", rule.max, rule.percentile_max)):
            if bound is not None:
                out.append((rule.score, op, bound, f"{op} {bound}"))
            if pct is not None and values.get(rule.score):
                cut = float(np.percentile(np.sort(values[rule.score]), pct, method="lower"))
                out.append((rule.score, op, cut, f"p{pct:g} = {cut:.4g}"))
    return out


def decide(rows: list[dict], rules: list, rank_scores: list[str], languages: list[str] | None = None) -> list[dict]:
    """Keep/reject each scored row; every failing rule is named in the reason, and the reason's
    code is the failing scores' names (`motion`, `ocr_coverage+nsfw`), with `language` where its
    speech is in none of `languages`. Also sets `quality`: the mean percentile rank over
    `rank_scores`, used to pick a duplicate to keep."""
    scored = [r for r in rows if r["status"] == KEPT]
    limits = thresholds(rules, scored)
    ranks = {}
    for name in rank_scores:
        vals = sorted(v for r in scored if (v := json.loads(r["scores"]).get(name)) is not None)
        if vals:
            ranks[name] = (np.asarray(vals), len(vals))
    out = []
    for row in rows:
        if row["status"] != KEPT:
            out.append(row)
            continue
        scores = json.loads(row["scores"])
        failing = []
        for name, op, bound, label in limits:
            value = scores.get(name)
            if value is not None and ((op == "min" and value < bound) or (op == "max" and value > bound)):
                failing.append((name, f"{name}={value:.4g} ({label})"))
        spoken = row.get("speech_language")
        if languages is not None and spoken is not None and spoken not in languages:
            failing.append(("language", f"language={spoken} (not {', '.join(languages)})"))
        pct = [np.searchsorted(v, scores[n], side="right") / n_ for n, (v, n_) in ranks.items() if n in scores]
        quality = round(float(np.mean(pct)), 6) if pct else 0.0
        if failing:
            code = "+".join(dict.fromkeys(name for name, _ in failing))  # the rules: motion, ocr_coverage+nsfw
            reason = code + ": " + ", ".join(detail for _, detail in failing)
            out.append({**row, "status": REJECTED, "reason": reason, "quality": quality})
        else:
            out.append({**row, "quality": quality})
    return out


def arguments(ctx) -> dict:
    cfg = ctx.config
    flags = {"ocr": cfg.ocr, "nsfw": cfg.nsfw, "count": cfg.flag_frames, "ocr_side": cfg.ocr_side, "ocr_gate_side": cfg.ocr_gate_side}
    return {"frames_per_clip": cfg.frames, "aesthetic_path": cfg.aesthetic_head, "with_aesthetic": "embed" in ctx.run.passed, "flags": flags}


def decide_all(rows: list[dict], ctx) -> list[dict]:
    """Whole-run step after the map, over old and new rows alike: the rules' percentiles are the
    corpus's, so every row is decided again."""
    undecided = [{**r, "status": KEPT, "reason": None, "quality": None} if r["status"] == REJECTED else r for r in rows]
    return decide(undecided, ctx.config.rules, ctx.config.rank_scores, ctx.config.languages)


SPEC = Stage(
    name=STAGE,
    config_model=QualityConfig,
    table=SCORED,
    columns=("clip_id", "video_id", "clip_uri", "start_s", "end_s", "clip_width", "clip_height"),
    optional=("caption", "clip_score", "image_emb", "frames_uri", "speech"),
    run_fields=("profile",),  # the aesthetic head of profile tiny is a seeded random one
    reasons={"score": (FAILED, "a score could not be computed")},
    rule_codes=r"^[a-z][a-z0-9_]*(\+[a-z][a-z0-9_]*)*$",  # a rejection's code: its failing scores, joined by +
    core=score_batch,
    arguments=arguments,
    finalize=decide_all,
    frames=lambda cfg: (FrameNeed(cfg.frames),),
    check=lambda ctx: require(ctx.config.ocr, ctx.config.nsfw),
    needs_for=lambda cfg: ("speech",) if cfg.languages is not None else (),  # a language rule reads the transcripts' language
)
