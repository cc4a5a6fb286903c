"""Interleaved documents: media and text in order, as interleaved trainers read them.

Three kinds, each stored in its sample's `grounding.interleaved` (sample schema 1.4.0):
- `events` (every clip sample; ground makes it): the caption, then per event the frame that
  stands for it and the event's text with its span.
- `window` (every window sample; the shard stage makes it): per clip, in time order, the clip
  itself (a video part; its keyframe stands for it where a consumer takes images) and its events'
  text with their times on the window's clock.
- `in_context` (clip samples; the shard stage makes it, once it is known which clips ship): the
  sample's `ground.in_context_k` nearest shipped clips by image embedding (FAISS, as dedup
  searches), each with a QA pair of the task asked or else its caption, then the sample and its own
  question (`item`: which of its QA items; the answer is never in the document). Clips of the same
  video, near duplicates (cosine at `dedup.near_cosine` or more) and examples that would show any
  of the answer (one of its times or its event texts) are never examples.

Media are named by sample key and a time, never copied. Every (media, text) pair is scored with
the embed model's cosine where embed ran (`stages.embed.similarity`, on the very frame shown);
pairs under `ground.min_pair_similarity` are dropped, and each document counts the pairs scored
and dropped. The in-context query is scored but never dropped: whether its QA item holds is span
verification's call (`ground.min_verification`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from vidcurate.schemas.sample import TIME_REF
from vidcurate.schemas.tables import stable_int
from vidcurate.stages.contract import map_here
from vidcurate.stages.dedup import cluster_groups, embeddings, near_clusters
from vidcurate.stages.embed import Evidence, event_embeddings, frame_evidence, similarity, unpack
from vidcurate.stages.ground_pools import safe

SEARCH_DEPTH = 8  # candidates searched per example wanted (same video, near duplicates, give-aways and low pairs are passed over)
EXACT_MAX = 20_000  # clips searched exactly (one GEMM); past it, cluster by cluster (examples need not be the very nearest)


@dataclass
class Unit:
    """A media part (or none) and the text parts after it; `about`: per text part, the embeddings
    of the sentences it says (empty: not known). Its pair is the media and its first text."""

    texts: list[dict]
    about: list[list[np.ndarray]]
    media: dict | None = None
    frame: np.ndarray | None = None
    kept: bool = False  # never dropped (the in-context query)

    @property
    def similarity(self) -> float | None:
        return similarity(self.frame, self.about[0]) if self.media is not None and self.about else None


def text(words: str, spans: list[list[float]] = (), role: str | None = None) -> dict:
    return {"type": "text", "text": words, "spans": [list(s) for s in spans], **({"role": role} if role else {})}


def assemble(kind: str, units: list[Unit], min_similarity: float, passed_over: tuple[int, int] = (0, 0), **extra) -> dict:
    """A document of `units` in order: pairs under `min_similarity` left out (their media and
    texts), the pairs scored and dropped counted (`passed_over`: those counted already), and the
    similarity of every media part with every text part where all of them are known."""
    parts, frames, abouts = [], [], []
    scored, dropped = passed_over
    for unit in units:
        if unit.media is not None:
            score = unit.similarity
            scored += score is not None
            if score is not None and score < min_similarity and not unit.kept:
                dropped += 1
                continue
            parts.append({**unit.media, "similarity": score})
            frames.append(unit.frame)
        parts += unit.texts
        abouts += unit.about
    document = {"kind": kind, "parts": parts, "pairs": {"scored": scored, "dropped": dropped}, **extra}
    if frames and all(f is not None for f in frames) and abouts and all(abouts):
        document["similarity_matrix"] = [[similarity(f, about) for about in abouts] for f in frames]
    return document


def _video(clip: dict) -> tuple[dict, np.ndarray | None]:
    """A clip as a video part: its key, and the frame nearest its middle as its keyframe (the
    embed stage's, where it ran)."""
    duration = clip["end_s"] - clip["start_s"]
    evidence = frame_evidence(clip)
    t, frame = evidence.shown(0.0, duration) if evidence is not None else (round(duration / 2, 3), None)
    return {"type": "video", "key": clip["clip_id"], "t": t}, frame


def events_document(key: str, duration_s: float, caption: str, events: list[dict], embs: list, evidence: Evidence | None,
                    caption_emb: np.ndarray | None, min_similarity: float) -> dict:
    """A clip's document: its caption, then per event (in time order) the frame that stands for
    it and its text with its span. `embs`: each event's text embedding (None each without embed)."""
    units = [Unit([text(safe(caption))], [[] if caption_emb is None else [caption_emb]])] if caption else []
    for event, emb in sorted(zip(events, embs), key=lambda pair: pair[0]["start_s"]):
        a, b = event["start_s"], event["end_s"]
        t, frame = evidence.shown(a, b) if evidence is not None else (round(min((a + b) / 2, duration_s), 3), None)
        words = f"{{span0}}: {safe(event['text']).rstrip('.')}."
        units.append(Unit([text(words, [[a, b]])], [[] if emb is None else [emb]], {"type": "image", "key": key, "t": t}, frame))
    return assemble("events", units, min_similarity)


def window_document(window: dict, clips: dict[str, dict], min_similarity: float) -> dict:
    """A window's document: per clip in order, the clip and its events' text with their times
    on the window's clock (its caption where it has no event)."""
    units = []
    for part in window["clips"]:
        clip, offset = clips[part["key"]], part["offset_s"]
        events = json.loads(clip["events"] or "[]")
        if events:
            words = " ".join(f"{{span{k}}}: {safe(e['text']).rstrip('.')}." for k, e in enumerate(events))
            spans = [[round(e["start_s"] + offset, 3), round(e["end_s"] + offset, 3)] for e in events]
            about = [emb for emb in event_embeddings(clip, len(events)) if emb is not None]
        elif clip["caption"]:
            words, spans = safe(clip["caption"]), []
            about = [emb] if (emb := unpack(clip.get("text_emb"))) is not None else []
        else:
            continue  # nothing to say about it (ground ships no such clip)
        media, frame = _video(clip)
        units.append(Unit([text(words, spans)], [about], media, frame))
    return assemble("window", units, min_similarity)


def nearest(emb: np.ndarray, depth: int, exact_max: int = EXACT_MAX, map_each=map_here) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `depth` nearest rows by cosine (itself among them), best first: (cosines, ids;
    -1 where fewer). Exact FAISS search up to `exact_max` rows; beyond, as dedup searches at scale:
    each row among the rows of its 2 nearest k-means clusters (`dedup.cluster_groups`), a cluster
    a job of `map_each`."""
    if len(emb) <= exact_max:
        return cluster_knn(np.arange(len(emb)), emb, depth)[1:]
    found = map_each(cluster_knn, cluster_groups(emb, near_clusters(len(emb)), soft=2, map_each=map_each), emb=emb, depth=depth)
    rows = np.concatenate([np.repeat(members, cosines.shape[1]) for members, cosines, _ in found])
    cosines, ids = (np.concatenate([f[i].ravel() for f in found]) for i in (1, 2))
    keep = ids >= 0
    _, once = np.unique(rows[keep] * len(emb) + ids[keep], return_index=True)  # a pair found in both clusters the rows share: once
    rows, cosines, ids = (a[keep][once] for a in (rows, cosines, ids))
    order = np.lexsort((ids, -cosines, rows))  # by row, nearest first
    rows, cosines, ids = rows[order], cosines[order], ids[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    top = rank < depth
    out_cosines, out_ids = np.full((len(emb), depth), -np.inf, np.float32), np.full((len(emb), depth), -1, np.int64)
    out_cosines[rows[top], rank[top]], out_ids[rows[top], rank[top]] = cosines[top], ids[top]
    return out_cosines, out_ids


def cluster_knn(members: np.ndarray, emb: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each member's `depth` nearest members (exact FAISS inner-product search): (members, cosines,
    global ids; -1 where fewer)."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    vectors = np.ascontiguousarray(emb[members])
    index.add(vectors)
    cosines, local = index.search(vectors, min(depth, len(members)))
    ids = np.where(local >= 0, members[np.maximum(local, 0)], -1)
    pad = depth - ids.shape[1]
    return members, np.pad(cosines, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)


def in_context_documents(clips: list[dict], k: int, min_similarity: float, near_cosine: float, map_each=map_here) -> dict[str, dict]:
    """The in-context document of every clip (merged stage rows of the clips that ship) that has
    an image embedding and a question to ask, by clip id; none with `k` = 0. `map_each`: the
    executor's parallel map for the search at scale."""
    pool = [c for c in clips if c.get("image_emb")]
    if k <= 0 or len(pool) < 2:
        return {}
    cosines, ids = nearest(embeddings(pool), min(len(pool), SEARCH_DEPTH * k + 1), map_each=map_each)
    out = {}
    for i, clip in enumerate(pool):
        candidates = [(pool[j], float(c)) for j, c in zip(ids[i].tolist(), cosines[i].tolist()) if j >= 0 and j != i]
        document = in_context(clip, candidates, k, min_similarity, near_cosine)
        if document is not None:
            out[clip["clip_id"]] = document
    return out


def in_context(clip: dict, candidates: list[tuple[dict, float]], k: int, min_similarity: float, near_cosine: float) -> dict | None:
    """`clip`'s document: up to `k` examples from `candidates` (clips and cosines, nearest first)
    that pass every rule, then the clip and the question of one of its QA items (seeded); None
    where it has no item about its events to ask. Read as a conversation (an example a turn, the
    question the last), no answer may be read from an earlier turn (`Said`)."""
    items = json.loads(clip.get("qa") or "[]")
    askable = [n for n, it in enumerate(items) if not it.get("negative") and it.get("events")]
    if not askable:
        return None
    n = askable[stable_int(f"{clip['clip_id']}/in_context") % len(askable)]
    item, events = items[n], json.loads(clip["events"] or "[]")
    said = Said({_normal(e["text"]) for e in events} - {""})
    units, neighbours, dropped = [], [], 0
    for other, cosine in candidates:
        if len(units) == k:
            break
        if other["video_id"] == clip["video_id"] or cosine >= near_cosine:
            continue
        unit = next((u for u in examples(other, item["task"]) if said.allows(u.texts, item)), None)
        if unit is None:
            continue
        if (score := unit.similarity) is not None and score < min_similarity:
            dropped += 1  # scored and dropped: the next candidate is tried
            continue
        said.hear(unit.texts)
        units.append(unit)
        neighbours.append({"key": other["clip_id"], "similarity": round(cosine, 4)})
    embs = event_embeddings(clip, len(events))
    media, frame = _video(clip)
    query = Unit([text(item["question"], item["spans"], "question")], [[embs[e] for e in item["events"] if embs[e] is not None]], media, frame, kept=True)
    return assemble("in_context", [*units, query], min_similarity, (dropped, dropped), neighbours=neighbours, item=n)


def examples(clip: dict, task: str):
    """What a clip can show as an example, best first: one of its QA pairs of `task` (seeded by
    its key), then its caption."""
    media, frame = _video(clip)
    items = [it for it in json.loads(clip.get("qa") or "[]") if it["task"] == task and not it.get("negative") and it.get("events")]
    if items:
        item = items[stable_int(f"{clip['clip_id']}/example/{task}") % len(items)]
        events = json.loads(clip["events"] or "[]")
        embs = event_embeddings(clip, len(events))
        about = [embs[e] for e in item["events"] if embs[e] is not None]
        qa = [text(item["question"], item["spans"], "question"), text(item["answer"], item["spans"], "answer")]
        yield Unit(qa, [about, about], media, frame)
    if clip.get("caption"):
        emb = unpack(clip.get("text_emb"))
        yield Unit([text(safe(clip["caption"]))], [[] if emb is None else [emb]], media, frame)


@dataclass
class Said:
    """What the turns of an in-context document said so far, read as `pipelines.export.leaks`
    reads a conversation: an answer can be read from them where it states a time they stated (to
    the tenth of a second, as exporters render times), repeats one of the sample's event texts
    (`known`) they said, or, stating no time, is itself something they said."""

    known: set[str]
    times: set[str] = field(default_factory=set)
    words: str = " "

    def reveals(self, answer: dict) -> bool:
        times, words = stated_times(answer["text"], answer["spans"]), f" {_normal(TIME_REF.sub(' ', answer['text']))} "
        repeated = any(f" {t} " in words and f" {t} " in self.words for t in self.known)
        return bool(times & self.times) or repeated or (not times and len(words.split()) >= 2 and words in self.words)

    def hear(self, parts: list[dict]) -> None:
        for part in parts:
            self.times |= stated_times(part["text"], part["spans"])
            self.words += f"{_normal(TIME_REF.sub(' ', part['text']))} "

    def allows(self, example: list[dict], item: dict) -> bool:
        """Whether `example` (its last part its answer) may come next: its answer not readable from
        the examples before it, and the item's answer not readable once it is said."""
        after = Said(self.known, set(self.times), self.words)
        after.hear(example)
        return not self.reveals(example[-1]) and not after.reveals(text(item["answer"], item["spans"]))


DECIMAL = re.compile(r"(?<![\d.])\d+\.\d(?!\d)")  # a time as exporters render it (`pipelines.export.leaks` reads them so)


def stated_times(words: str, spans: list[list[float]]) -> set[str]:
    """The times a text states, through its placeholders and in its words, as exporters render
    them (one decimal)."""
    out = set(DECIMAL.findall(TIME_REF.sub(" ", words)))
    for kind, k in TIME_REF.findall(words):
        a, b = spans[int(k)]
        out |= {f"{a:.1f}", f"{b:.1f}"} if kind == "span" else {f"{a if kind == 'start' else b:.1f}"}
    return out


def _normal(words: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", words.lower()).split())
