"""Decontam stage: nothing that overlaps the benchmarks a model will be scored on is shipped.

Each eval set (`decontam.eval_sets`: a name, its videos, optionally the benchmark's questions) is
fingerprinted once, into a cache keyed by each video's content (probe's sha256 id) and by the
settings that shape a fingerprint, so later runs only read it:
- a pHash of the video's frames, `phash_fps` a second, each also hashed at the centre crops of
  `crops` (a frame's pHash survives re-encoding and scaling, not a crop: the index holds the crops);
- with `near_cosine`, the embed model's embedding of a `window_s` window starting every
  `window_s / embed.keyframes` s, made as embed makes a clip's (the mean of `embed.keyframes` frames).
Then every clip is matched with dedup's FAISS searches (`stages.dedup.phash_links`, `flat_links`),
in blocks of clips on the executor's parallel map:
- pHash: at least `min_frames` of the clip's `frames` sampled frames (all of those with a picture,
  where fewer have one) lie within `max_hamming` bits of frames of one eval video. Flat frames
  (black, fades, title colours) carry no hash on either side: they would match each other;
- else embedding cosine: the clip's embedding (embed's) at `near_cosine` or above to an eval window.
A clip that matches is `rejected` as `contaminated: <set>/<video>@<time>s (<figure>)`.
QA items (ground's) whose question shares a run of `ngram` words with a question of an eval set
are dropped: this stage's `qa` column holds the items left, and replaces ground's in the clips
every later stage reads (the store merges later stages' columns over earlier ones'); `qa_dropped`
counts them per set. Window samples, whose QA the shipping stage makes, are not checked here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from pydantic import Field, field_validator, model_validator

from vidcurate.schemas.readers import scaled_size
from vidcurate.schemas.tables import DECONTAMINATED, FAILED, KEPT, REJECTED
from vidcurate.stages.contract import Stage
from vidcurate.stages.dedup import embeddings, flat_links, phash_links
from vidcurate.stages.embed import EmbedConfig, make_encoder, phash
from vidcurate.stages.failures import failed
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.media import is_remote, list_inputs, local_copy, rotation_of
from vidcurate.stages.models import TINY_CLIP_MODEL, cache_dir
from vidcurate.stages.probe import fingerprint
from vidcurate.stages.settings import StrictModel

STAGE = "decontam"
log = logging.getLogger("vidcurate")

# (share cut from the top and the bottom, share cut from the left and the right): the frame, centre
# crops of 4-12% a side, and the crops between 16:9 and 4:3 (benchmarks/decontam_bench.py)
CROPS = ((0.0, 0.0), (0.04, 0.04), (0.08, 0.08), (0.12, 0.12), (0.0, 0.125), (0.125, 0.0))
SIDE = 256  # frames are hashed at this short side at most (eval and clip frames alike)
MIN_CONTRAST = 4.0  # grey-level spread below which a frame is flat: its pHash is noise, shared by every flat frame
FINGERPRINT_VERSION = 1  # raise when what a fingerprint holds changes: the cache is then made afresh
BLOCK = 1024  # clips per task of the matching
EMBED_BATCH = 64  # eval frames per call of the image encoder


class EvalSetError(ValueError):
    """An eval set that cannot be checked against: missing, empty, unreadable."""


class EvalSet(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the set's name in rejections and the dataset card")
    videos: str = Field(description="its videos: a folder, a glob, a list file (.txt, .lst) or an s3:// prefix")
    questions: str | None = Field(None, description="the benchmark's questions: JSON lines with a `question` field (a path or s3:// URL)")


class DecontamConfig(StrictModel):
    eval_sets: list[EvalSet] = Field(default_factory=list, description="the benchmarks to keep out of the shards; none: nothing is checked")
    frames: int = Field(4, ge=1, le=64, description="evenly spaced frames of each clip hashed (4: embed's keyframes, which split keeps)")
    min_frames: int = Field(2, ge=1, description="of them, how many must match frames of one eval video (all with a picture, where fewer have one)")
    max_hamming: int | None = Field(6, ge=0, le=32, description="pHash bits a clip frame and an eval frame may differ by (dedup's near-duplicate default); null: off")
    near_cosine: float | None = Field(
        0.97, gt=0, le=1, description="embedding cosine to an eval window at or above which a clip the pHash missed matches "
        "(dedup's near-duplicate default); null: off"
    )
    phash_fps: float = Field(10.0, gt=0, description="eval frames hashed a second (every frame of slower videos)")
    crops: list[tuple[float, float]] = Field(
        default_factory=lambda: list(CROPS), description="centre crops each eval frame is hashed at too: (share cut from the top "
        "and the bottom, from the left and the right); (0, 0) is the whole frame"
    )
    window_s: float = Field(4.0, gt=0, description="eval videos are embedded as windows this long (with near_cosine)")
    ngram: int = Field(13, ge=1, description="words in a row a QA question must share with an eval question to be dropped")
    cache: str | None = Field(None, description="folder of the eval fingerprints; null: decontam/ in the model cache ($VIDCURATE_CACHE)")

    @field_validator("crops")
    @classmethod
    def _crops_inside(cls, crops: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(not (0 <= share < 0.4) for crop in crops for share in crop):
            raise ValueError("each crop cuts a share in [0, 0.4) from each side")
        return crops

    @model_validator(mode="after")
    def _distinct_names(self) -> DecontamConfig:
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be distinct; got {names}")
        return self


# ---- eval sets: listing, questions, checks ------------------------------------------------------


def list_videos(eval_set: EvalSet) -> list[str]:
    """The set's video URIs; an EvalSetError where there are none."""
    try:
        uris = list_inputs(eval_set.videos)
    except FileNotFoundError as exc:
        raise EvalSetError(f"decontam: eval set {eval_set.name!r}: {exc}") from exc
    if not uris:
        raise EvalSetError(f"decontam: eval set {eval_set.name!r}: no videos at {eval_set.videos!r}")
    return uris


def eval_files_digest(cfg: DecontamConfig) -> str:
    """What the eval sets hold now (each video's and question file's name, size and time), so a
    re-run checks the clips again when a set changed under the same config."""
    parts = []
    for eval_set in cfg.eval_sets:
        for uri in [*list_videos(eval_set), *([eval_set.questions] if eval_set.questions else [])]:
            try:
                info = fsspec.core.url_to_fs(uri)[0].info(uri)
            except FileNotFoundError:  # the stage's check says so, before any work
                info = {"size": "missing"}
            parts.append(f"{eval_set.name}|{uri}|{info.get('size')}|{info.get('mtime') or info.get('LastModified') or info.get('ETag')}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] if parts else ""


def video_name(eval_set: EvalSet, uri: str) -> str:
    """How a rejection names an eval video: its path inside the set's folder or prefix, else its file name."""
    root = eval_set.videos.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else Path(uri).name


def read_questions(eval_set: EvalSet) -> list[str]:
    """The set's questions (none without a QA file); an EvalSetError, with the line, where the
    file is missing or a line is not a JSON object with a string `question`."""
    if eval_set.questions is None:
        return []
    where = f"decontam: eval set {eval_set.name!r}: questions {eval_set.questions!r}"
    try:
        with fsspec.open(eval_set.questions, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalSetError(f"{where}: {type(exc).__name__}: {exc}") from exc
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalSetError(f"{where}, line {number}: not JSON ({exc})") from exc
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise EvalSetError(f"{where}, line {number}: no string `question` field")
        questions.append(item["question"])
    return questions


def _check_opens(eval_set: EvalSet, uri: str) -> None:
    """A local eval video must open as a video (remote ones are read when fingerprinted)."""
    import av

    if is_remote(uri):
        return
    try:
        with av.open(uri) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
    except Exception as exc:  # noqa: BLE001 - any reason it does not open is the error
        raise EvalSetError(
            f"decontam: eval set {eval_set.name!r}: {uri} is not a readable video ({type(exc).__name__}: {exc}); "
            "remove it or narrow `videos` with a glob such as 'DIR/*.mp4'"
        ) from exc


def summary(cfg: DecontamConfig) -> list[dict]:
    """Each set's name with its number of videos and questions (what the dataset card states)."""
    return [{"name": s.name, "videos": len(list_videos(s)), "questions": len(read_questions(s))} for s in cfg.eval_sets]


def check_eval_sets(cfg: DecontamConfig) -> list[dict]:
    """What must hold before any work: every set lists videos that open and a readable QA file.
    Returns `summary`; raises EvalSetError, naming the set and the file, where one does not hold."""
    for eval_set in cfg.eval_sets:
        for uri in list_videos(eval_set):
            _check_opens(eval_set, uri)
    return summary(cfg)


# ---- fingerprints --------------------------------------------------------------------------------


def frame_hashes(rgb: np.ndarray, crops) -> list[int | None]:
    """pHash of a frame at each centre crop; None for a flat crop (no picture to match)."""
    gray = rgb.mean(axis=2)
    out = []
    for top, side in crops:
        dy, dx = round(gray.shape[0] * top), round(gray.shape[1] * side)
        part = gray[dy : gray.shape[0] - dy, dx : gray.shape[1] - dx]
        out.append(None if part[::4, ::4].std() < MIN_CONTRAST else phash(part.astype(np.uint8)))
    return out


@dataclass
class Fingerprint:
    """One eval video's: hashed frames (`codes`, each at `code_times` s) and embedded windows."""

    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    code_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    windows: np.ndarray | None = None  # (n, d) float16, unit
    window_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def sampled_frames(uri: str, steps: dict[str, float]):
    """(time, upright RGB at short side SIDE at most, the names of the grids it is on) of the
    frames on each grid of `steps` (name -> seconds): sampling by time, whatever the frame rate."""
    import av

    due = dict.fromkeys(steps, 0.0)
    with local_copy(uri) as path, av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            start = frame.time if start is None else start
            t = frame.time - start
            on = [name for name, at in due.items() if t + 1e-6 >= at]
            if not on:
                continue
            for name in on:
                due[name] = (np.floor(t / steps[name] + 1e-6) + 1) * steps[name]
            rgb = frame.to_ndarray(format="rgb24", **scaled_size(frame.width, frame.height, SIDE))
            yield t, np.ascontiguousarray(np.rot90(rgb, k=rotation_of(frame) // 90)), on


def fingerprint_video(uri: str, parts: dict, embed_json: str | None = None) -> Fingerprint:
    """The video's fingerprint parts asked for (`fingerprint_parts`; `embed_json`: the embed
    section, for windows), in one decoding pass."""
    steps = {}
    if "phash" in parts:
        steps["phash"] = 1 / parts["phash"]["fps"]
    if "windows" in parts:
        steps["windows"] = parts["windows"]["window_s"] / parts["windows"]["keyframes"]
    codes, code_times, frames, frame_times, frame_embs = [], [], [], [], []
    for t, rgb, on in sampled_frames(uri, steps):
        if "phash" in on:
            for code in frame_hashes(rgb, parts["phash"]["crops"]):
                if code is not None:
                    codes.append(code)
                    code_times.append(t)
        if "windows" in on:
            frames.append(rgb)
            frame_times.append(t)
        if len(frames) == EMBED_BATCH:
            frame_embs.append(_embedded(frames, embed_json))
            frames = []
    out = Fingerprint(np.asarray(codes, np.int64), np.asarray(code_times, np.float32))
    if "windows" in parts:
        if frames:
            frame_embs.append(_embedded(frames, embed_json))
        out.windows, out.window_times = _windows(np.concatenate(frame_embs) if frame_embs else None, frame_times, parts["windows"]["keyframes"])
    return out


def _windows(frame_embs: np.ndarray | None, times: list[float], keyframes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each run of `keyframes` consecutive frames (all of a shorter video) as one window: the unit
    mean of their embeddings, as embed makes a clip's, at its first frame's time."""
    if frame_embs is None:
        return np.zeros((0, 0), np.float16), np.zeros(0, np.float32)
    span = min(keyframes, len(frame_embs))
    sums = np.cumsum(np.concatenate([np.zeros((1, frame_embs.shape[1])), frame_embs]), axis=0)
    means = sums[span:] - sums[:-span]
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means.astype(np.float16), np.asarray(times[: len(means)], np.float32)


def _embedded(frames: list[np.ndarray], embed_json: str) -> np.ndarray:
    """Each frame's unit image embedding, by the embed stage's encoder (frames of any sizes)."""
    return _encoder(embed_json).encode([frame[None] for frame in frames], [])[0]


@functools.lru_cache(maxsize=1)
def _encoder(embed_json: str):
    """The embed stage's encoder, loaded once per worker process."""
    return make_encoder(EmbedConfig.model_validate_json(embed_json))


def fingerprint_parts(cfg: DecontamConfig, embed: EmbedConfig) -> dict:
    """The settings that shape each fingerprint part the config uses (their digest names its cache)."""
    parts = {}
    if cfg.max_hamming is not None:
        parts["phash"] = {"fps": cfg.phash_fps, "crops": [list(c) for c in cfg.crops]}
    if cfg.near_cosine is not None:
        model = [embed.model, embed.pretrained] if embed.model else [TINY_CLIP_MODEL, None]
        parts["windows"] = {"window_s": cfg.window_s, "keyframes": embed.keyframes, "model": model}
    return parts


def _part_folder(name: str, settings: dict) -> str:
    payload = json.dumps({"v": FINGERPRINT_VERSION, "side": SIDE, "contrast": MIN_CONTRAST, **settings}, sort_keys=True)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


class FingerprintCache:
    """Fingerprint parts by video content: `<cache>/<part>-<settings digest>/<content id>.npz`."""

    def __init__(self, root: Path, parts: dict):
        self.folders = {name: root / _part_folder(name, settings) for name, settings in parts.items()}

    def load(self, content: str) -> Fingerprint | None:
        """The cached fingerprint, or None unless every part is cached."""
        paths = {name: folder / f"{content}.npz" for name, folder in self.folders.items()}
        if not all(p.is_file() for p in paths.values()):
            return None
        out = Fingerprint()
        if "phash" in paths:
            with np.load(paths["phash"]) as data:
                out.codes, out.code_times = data["codes"], data["times"]
        if "windows" in paths:
            with np.load(paths["windows"]) as data:
                out.windows, out.window_times = data["windows"], data["times"]
        return out

    def save(self, content: str, found: Fingerprint) -> None:
        arrays = {"phash": {"codes": found.codes, "times": found.code_times}, "windows": {"windows": found.windows, "times": found.window_times}}
        for name, folder in self.folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{content}.{os.getpid()}.npz"
            with open(tmp, "wb") as f:
                np.savez(f, **arrays[name])
            os.replace(tmp, folder / f"{content}.npz")


def content_id(uri: str) -> str:
    """probe's content id of a video: its bytes, under any name or location."""
    with local_copy(uri) as path:
        return fingerprint(path)


def fingerprinted(uri: str, parts: dict, embed_json: str | None) -> Fingerprint:
    """`fingerprint_video`, where a failure names the eval video (it stops the stage)."""
    try:
        return fingerprint_video(uri, parts, embed_json)
    except Exception as exc:
        raise EvalSetError(f"decontam: eval video {uri} could not be fingerprinted: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class EvalIndex:
    """Every eval video's fingerprint side by side: `videos` (set, name) and, for each hashed frame
    and each window, its video's index and time."""

    videos: tuple[tuple[str, str], ...] = ()
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    code_video: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    code_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    window_video: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    window_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def eval_index(cfg: DecontamConfig, embed: EmbedConfig, map_each) -> tuple[EvalIndex, dict]:
    """The eval sets' fingerprints, from the cache where it holds them, the others made (and
    cached) on `map_each`; with the marker's counts of videos fingerprinted and read from the cache."""
    listed = [(s.name, video_name(s, uri), uri) for s in cfg.eval_sets for uri in list_videos(s)]
    ids = map_each(content_id, [uri for *_, uri in listed])
    parts = fingerprint_parts(cfg, embed)
    root = Path(cfg.cache) if cfg.cache else cache_dir() / STAGE
    cache = FingerprintCache(root, parts)
    found = {content: cache.load(content) for content in dict.fromkeys(ids)}
    missing = {content: uri for (*_, uri), content in zip(listed, ids) if found[content] is None}
    embed_json = embed.model_dump_json(exclude={"resources"}) if "windows" in parts else None
    for content, made in zip(missing, map_each(fingerprinted, list(missing.values()), parts=parts, embed_json=embed_json)):
        cache.save(content, made)
        found[content] = made
    log.info("decontam: %d eval videos, %d fingerprinted now, the others' fingerprints read from %s", len(listed), len(missing), root)
    prints = [found[content] for content in ids]
    return _joined(tuple((name, video) for name, video, _ in listed), prints), {"eval_fingerprinted": len(missing), "eval_from_cache": len(found) - len(missing)}


def _joined(videos: tuple[tuple[str, str], ...], prints: list[Fingerprint]) -> EvalIndex:
    """The videos' fingerprints as one index, in the videos' order."""
    embedded = [i for i, p in enumerate(prints) if p.windows is not None and len(p.windows)]
    return EvalIndex(
        videos=videos,
        codes=np.concatenate([np.zeros(0, np.int64), *(p.codes for p in prints)]),
        code_video=np.concatenate([np.zeros(0, np.int64), *(np.full(len(p.codes), i) for i, p in enumerate(prints))]),
        code_times=np.concatenate([np.zeros(0, np.float32), *(p.code_times for p in prints)]),
        windows=np.concatenate([prints[i].windows for i in embedded]).astype(np.float32) if embedded else np.zeros((0, 0), np.float32),
        window_video=np.concatenate([np.zeros(0, np.int64), *(np.full(len(prints[i].windows), i) for i in embedded)]),
        window_times=np.concatenate([np.zeros(0, np.float32), *(prints[i].window_times for i in embedded)]),
    )


# ---- matching ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    video: int  # in EvalIndex.videos
    time_s: float
    measure: str  # hamming | cosine
    figure: float
    frames: int | None = None  # pHash: the clip's frames that matched the video


def phash_matches(codes: np.ndarray, owners: np.ndarray, pictured: np.ndarray, index: EvalIndex, cfg: DecontamConfig) -> dict[int, Match]:
    """Clips (`owners` of the frame `codes`; `pictured`: each clip's frames with a hash) with at least
    `min_frames` frames (at most all it has) within `max_hamming` bits of frames of one eval video:
    of several videos, the one with the most such frames, then the closest frame, then the first
    listed. The time is that of the eval frame closest to one of them (the earliest of ties)."""
    if not len(codes) or not len(index.codes):
        return {}
    pairs, bits = phash_links(codes, index.codes, cfg.max_hamming)
    frame, hit = pairs[:, 0], pairs[:, 1]
    video = index.code_video[hit]
    order = np.lexsort((hit, bits, video, frame))  # by frame, then video, then closeness, then eval order
    frame, hit, video, bits = frame[order], hit[order], video[order], bits[order]
    best = np.ones(len(frame), bool)
    best[1:] = (frame[1:] != frame[:-1]) | (video[1:] != video[:-1])  # each frame's closest link into each video
    per_video: dict[tuple[int, int], list] = {}
    for f, h, v, b in zip(frame[best].tolist(), hit[best].tolist(), video[best].tolist(), bits[best].tolist()):
        entry = per_video.setdefault((int(owners[f]), v), [0, b, h])
        entry[0] += 1
        if (b, h) < (entry[1], entry[2]):
            entry[1:] = [b, h]
    out: dict[int, Match] = {}
    for (clip, v), (count, b, h) in sorted(per_video.items(), key=lambda kv: (kv[0][0], -kv[1][0], kv[1][1], kv[0][1])):
        if clip not in out and count >= min(cfg.min_frames, pictured[clip]):
            out[clip] = Match(v, float(index.code_times[h]), "hamming", float(b), count)
    return out


def cosine_matches(emb: np.ndarray, owners: list[int], index: EvalIndex, cfg: DecontamConfig) -> dict[int, Match]:
    """Clips (`owners` of the unit embeddings `emb`) at `near_cosine` or above to an eval window:
    the closest window (the first listed of ties)."""
    if not len(emb) or not len(index.windows):
        return {}
    pairs, cosines = flat_links(emb, index.windows, cfg.near_cosine)
    out: dict[int, Match] = {}
    for (q, w), c in sorted(zip(pairs.tolist(), cosines.tolist()), key=lambda link: (link[0][0], -link[1], link[0][1])):
        clip = owners[q]
        if clip not in out:
            out[clip] = Match(int(index.window_video[w]), float(index.window_times[w]), "cosine", float(c))
    return out


def match_block(clips: list[dict], index: EvalIndex, cfg: DecontamConfig) -> list[Match | dict | None]:
    """Each clip's match (pHash first: pixel evidence; then cosine), None, or the failed row's
    status fields where its frames could not be read."""
    out: list[Match | dict | None] = [None] * len(clips)
    codes, owners, pictured = [], [], np.zeros(len(clips), np.int64)
    if cfg.max_hamming is not None and len(index.codes):
        for i, clip in enumerate(clips):
            try:
                rgb, _ = read_frames(clip, cfg.frames, SIDE)
            except Exception as exc:  # noqa: BLE001 - one unreadable clip fails alone
                out[i] = failed("frames", exc)
                continue
            for (code,) in (frame_hashes(frame, [(0.0, 0.0)]) for frame in rgb):
                if code is not None:
                    codes.append(code)
                    owners.append(i)
                    pictured[i] += 1
    found = phash_matches(np.asarray(codes, np.int64), np.asarray(owners, np.int64), pictured, index, cfg)
    if cfg.near_cosine is not None:
        with_emb = [i for i, c in enumerate(clips) if c.get("image_emb") is not None and i not in found and out[i] is None]
        emb = embeddings([clips[i] for i in with_emb]) if with_emb else np.zeros((0, 0), np.float32)
        found = {**cosine_matches(emb, with_emb, index, cfg), **found}
    return [found.get(i, out[i]) for i in range(len(clips))]


# ---- questions -----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")  # {span0}, {start1}: times, rendered by exporters


def ngrams(text: str, n: int) -> set[str]:
    """Every run of n words of a question (lower case, placeholders and punctuation left out)."""
    words = _WORD.findall(_PLACEHOLDER.sub(" ", text.lower()))
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(cfg: DecontamConfig) -> list[tuple[str, set[str]]]:
    """Each set with a QA file, and the n-grams of its questions."""
    out = []
    for eval_set in cfg.eval_sets:
        questions = read_questions(eval_set)
        if questions:
            out.append((eval_set.name, set().union(*(ngrams(q, cfg.ngram) for q in questions))))
    return out


def eval_question_drops(items: list[dict], sets: list[tuple[str, set[str]]], n: int) -> tuple[list[dict], dict[str, int]]:
    """QA items less those whose question shares an n-gram with an eval set's, and how many went
    by set (each under the first such set)."""
    kept, dropped = [], {}
    for item in items:
        grams = ngrams(item.get("question", ""), n)
        matched = next((name for name, eval_grams in sets if not grams.isdisjoint(eval_grams)), None)
        if matched is None:
            kept.append(item)
        else:
            dropped[matched] = dropped.get(matched, 0) + 1
    return kept, dropped


def without_eval_questions(qa: str | None, sets: list[tuple[str, set[str]]], n: int) -> tuple[str | None, dict[str, int]]:
    """`eval_question_drops` on a QA column (JSON); the same text where none is dropped."""
    if qa is None or not sets:
        return qa, {}
    kept, dropped = eval_question_drops(json.loads(qa), sets, n)
    return (json.dumps(kept) if dropped else qa), dropped


# ---- the stage -----------------------------------------------------------------------------------


def _time_text(seconds: float) -> str:
    return f"{seconds:.2f}s"


def rejected(row: dict, match: Match, index: EvalIndex) -> dict:
    eval_set, video = index.videos[match.video]
    figure = f"hamming {int(match.figure)}, {match.frames} frames" if match.measure == "hamming" else f"cosine {match.figure:.4f}"
    return {
        "clip_id": row["clip_id"], "video_id": row["video_id"], "stage": STAGE, "status": REJECTED,
        "reason": f"contaminated: {eval_set}/{video}@{_time_text(match.time_s)} ({figure})",
        "eval_set": eval_set, "eval_video": video, "eval_time_s": round(match.time_s, 3),
        "match_measure": match.measure, "match_figure": round(match.figure, 6), "matched_frames": match.frames,
    }  # fmt: skip


def decontaminate(rows: list[dict], ctx) -> tuple[list[dict], dict]:
    """The stage over every clip at once: the eval index (cached fingerprints), the clips matched
    in blocks on the executor's parallel map, then the QA items of the clips kept."""
    cfg = ctx.config
    if not cfg.eval_sets:
        log.warning("decontam: no eval sets (decontam.eval_sets): nothing is checked")
        return [{"clip_id": r["clip_id"], "video_id": r["video_id"], "stage": STAGE, "status": KEPT, "reason": None, "qa": r.get("qa")} for r in rows], {}
    index, fields = eval_index(cfg, ctx.sections["embed"], ctx.executor.map)
    sets = eval_ngrams(cfg)
    blocks = [rows[i : i + BLOCK] for i in range(0, len(rows), BLOCK)]
    matches = [m for block in ctx.executor.map(match_block, blocks, index=index, cfg=cfg) for m in block]
    out = []
    for row, match in zip(rows, matches):
        if isinstance(match, Match):
            out.append(rejected(row, match, index))
            continue
        base = {"clip_id": row["clip_id"], "video_id": row["video_id"], "stage": STAGE}
        if match is not None:  # the clip's frames could not be read
            out.append({**base, **match})
            continue
        qa, dropped = without_eval_questions(row.get("qa"), sets, cfg.ngram)
        out.append({**base, "status": KEPT, "reason": None, "qa": qa, "qa_dropped": json.dumps(dropped, sort_keys=True) if dropped else None})
    return out, fields


def _check(ctx) -> None:
    check_eval_sets(ctx.config)


SPEC = Stage(
    name=STAGE,
    config_model=DecontamConfig,
    by_default=False,  # runs when named in `stages:`
    table=DECONTAMINATED,
    columns=("clip_id", "video_id", "clip_uri", "frames_uri", "image_emb"),
    optional=("qa",),
    needs=("embed",),
    sections=("embed",),  # eval windows are embedded by embed's model
    unhashed=("cache",),
    reasons={
        "contaminated": (
            REJECTED, "`<set>/<video>@<time>s (<figure>)`: the clip's frames match frames of an eval set's video: pHash "
            "(`hamming <bits>, <n> frames`, the closest frame's bits and the clip's frames that matched) or embedding "
            "(`cosine <value>`) to a window starting at that time",
        ),
        "frames": (FAILED, "the clip's frames could not be read (split's stored frames, else the clip decoded)"),
    },  # fmt: skip
    # random embeddings are all alike (cosine ~0.97): only the pHash decides under profile tiny
    tiny_defaults={"near_cosine": None},
    marker_fields={"eval_fingerprinted": "sum", "eval_from_cache": "sum"},
    whole=decontaminate,
    frames=lambda cfg: (FrameNeed(cfg.frames),) if cfg.eval_sets and cfg.max_hamming is not None else (),
    check=_check,
    outside=eval_files_digest,
)
