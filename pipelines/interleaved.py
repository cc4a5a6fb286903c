"""Interleaved exports: the shards' documents (`stages.documents`) as interleaved trainers read them.

- `obelics`: `obelics.parquet`, a row per document: `images` (Hugging Face `Image` structs: the
  JPEG's bytes and its name; null at a text position) and `texts` (null at an image position),
  lists of equal length with exactly one of the two set at each position, and `metadata` (JSON).
  The Parquet schema carries the `datasets` features, so `datasets.load_dataset` decodes images.
- `mmc4`: `mmc4.jsonl`, a line per document: `text_list`, `image_info` [{`image_name`,
  `matched_text_index`, `matched_sim`}] and `similarity_matrix` (images x texts, as MMC4 ships
  it), with the images beside it in `images/`. OpenFlamingo's loader needs every image's
  similarity: a document made without embed is left out (`unscored` in the summary).
- `llava-interleave`: `llava-interleave.json`, LLaVA conversations whose `image` is the list of
  the document's frames, one `<image>` per item in order (LLaVA-NeXT's multi-image path): a human
  turn per media part (with a question where the document asks one), the text after it the gpt
  turn; an in-context document's examples are earlier turns and the answer to its own question
  the last, so `pipelines.export.leaks` checks it as any conversation.

Documents name their media by sample key and time, never carrying them: the export reads the
shards twice, first every annotation (through the untrusted-shard readers: keys checked, bad
samples counted by reason), then the mp4 of every sample a document names, whose frames at those
times become `images/<key>_<ms>.jpg`. A pair whose media is not in the dataset (a sample left
out, a time outside its media) is left out of its document (`missing_media`); an in-context
document loses its question with its own media, and needs at least one example left. Times in
text render as "3.0 - 5.5 seconds" (`export.render` in LLaVA's wording) and answers of in-context
documents close them: OBELICS and MMC4 documents are trained on whole.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vidcurate.pipelines.export import render
from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.untrusted import Limits, Skipped, inside, log_skipped

FORMATS = ("obelics", "mmc4", "llava-interleave")
WORDING = "llava"  # "3.0 - 5.5 seconds"
JPEG_QUALITY = 95
IMAGE = "<image>"
INSTRUCTIONS = {  # the first human turn of a llava-interleave document (in-context documents need none)
    "events": "Each image is a frame of one video clip, in time order. After each, say what happens then, with its time in the clip.",
    "window": "Each image stands for one clip of a video, in time order. After each, say what happens in that clip, with its times in the video.",
}
# OBELICS's columns, as `datasets` features: images decode to PIL images (None at text positions)
OBELICS_FEATURES = {
    "images": {"feature": {"_type": "Image"}, "_type": "List"},
    "texts": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
    "metadata": {"dtype": "string", "_type": "Value"},
}
OBELICS_SCHEMA = pa.schema(
    [
        pa.field("images", pa.list_(pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]))),
        pa.field("texts", pa.list_(pa.string())),
        pa.field("metadata", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": OBELICS_FEATURES}})},
)


@dataclass
class Found:
    """A document of a sample read from the shards: the sample's key, kind and QA items."""

    key: str
    sample_kind: str
    document: dict
    qa: list[dict]


def documents_of(meta: dict) -> list[dict]:
    """A sample's documents; before 1.4.0 a clip's `interleaved` was one list of frame and text
    parts of its own media: read as its events document (unscored; every part checked here, since
    that schema left them open)."""
    interleaved = (meta.get("grounding") or {}).get("interleaved") or []
    if meta["schema_version"] not in ("1.3.0", "1.2.0"):
        return interleaved
    parts = []
    for part in interleaved:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "frame" and isinstance(part.get("t"), (int, float)) and 0 <= part["t"] <= meta["duration_s"]:
            parts.append({"type": "image", "key": meta["clip_id"], "t": part["t"], "similarity": None})
        elif kind == "text" and isinstance(part.get("text"), str) and part["text"].strip():
            parts.append({"type": "text", "text": part["text"].replace("{", "(").replace("}", ")"), "spans": []})
    return [{"kind": "events", "parts": parts, "pairs": {"scored": 0, "dropped": 0}}] if parts else []


def units(document: dict) -> list[tuple[int | None, list[int]]]:
    """The document as (index of a media part or None, indices of the text parts after it)."""
    out: list[tuple[int | None, list[int]]] = []
    for i, part in enumerate(document["parts"]):
        if part["type"] != "text":
            out.append((i, []))
        elif out:
            out[-1][1].append(i)
        else:
            out.append((None, [i]))
    return out


def _frames_at(mp4: bytes, times: set[float]) -> dict[float, bytes]:
    """The frame on screen nearest each time, as JPEG; a time more than a frame from every frame
    (outside the media) gets none."""
    best: dict[float, tuple[float, av.VideoFrame]] = {}
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        period = 1 / float(stream.average_rate) if stream.average_rate else 0.1
        for frame in container.decode(stream):
            for t in times:
                gap = abs(float(frame.time) - t)
                if gap <= period and (t not in best or gap < best[t][0]):
                    best[t] = (gap, frame)
    out = {}
    for t, (_, frame) in best.items():
        buf = io.BytesIO()
        frame.to_image().save(buf, format="JPEG", quality=JPEG_QUALITY)
        out[t] = buf.getvalue()
    return out


def image_name(key: str, t: float) -> str:
    return f"{key}_{round(t * 1000):09d}.jpg"


class Export:
    """One interleaved export: the documents read, the frames they name, the records written."""

    def __init__(self, location: str, fmt: str, out_dir: str | Path, limits: Limits):
        if fmt not in FORMATS:
            raise ValueError(f"unknown interleaved format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.location, self.fmt, self.limits = location, fmt, limits
        self.out = Path(out_dir).resolve()
        self.images = self.out / "images"
        if not inside(self.images, self.out):
            raise ValueError(f"{self.images} is a link to {self.images.resolve()}, outside the export folder")
        self.skipped: Counter = Counter()
        self.dropped: Counter = Counter()
        self.first: dict[str, str] = {}  # key -> the shard it is read from (its first)
        self.found: list[Found] = []
        self.frames: dict[tuple[str, float], bytes] = {}
        self.images_written = 0  # image positions in the records

    def skip(self, sample: Skipped) -> None:
        self.skipped[sample.code] += 1
        log_skipped(sample)

    def read_documents(self) -> None:
        for sample in open_shards(self.location, limits=self.limits, on_skip=self.skip, empty_check=False):
            key, meta = sample["__key__"], json.loads(sample["json"])  # key and json checked by the reader
            if key in self.first:
                self.skip(Skipped(sample["__url__"], key, "duplicate_key", f"already exported from {self.first[key]}"))
                continue
            self.first[key] = sample["__url__"]
            qa = (meta.get("grounding") or {}).get("qa") or []
            self.found += [Found(key, meta["kind"], document, qa) for document in documents_of(meta)]

    def read_frames(self) -> None:
        """The frames the documents name, from the mp4 of the sample each names (its first copy)."""
        wanted: dict[str, set[float]] = {}
        for found in self.found:
            for part in found.document["parts"]:
                if part["type"] != "text" and part["key"] in self.first:
                    wanted.setdefault(part["key"], set()).add(part["t"])
        if not wanted:
            return
        for sample in open_shards(self.location, limits=self.limits, on_skip=lambda _: None, empty_check=False):
            key = sample["__key__"]
            if key in wanted and sample["__url__"] == self.first[key]:
                try:
                    frames = _frames_at(sample["mp4"], wanted.pop(key))
                except (av.FFmpegError, ValueError, IndexError):
                    continue  # its pairs are left out as missing media
                self.frames.update({(key, t): jpeg for t, jpeg in frames.items()})

    def kept(self, found: Found) -> list[tuple[int | None, list[int]]] | None:
        """The document's units whose media is at hand (those without are left out and counted);
        None for a document left with nothing to train on."""
        out = []
        for unit in units(found.document):
            media = None if unit[0] is None else found.document["parts"][unit[0]]
            if media is None or (media["key"], media["t"]) in self.frames:
                out.append(unit)
            else:
                self.dropped["missing_media"] += 1
        if found.document["kind"] == "in_context":
            query = units(found.document)[-1]
            if not out or out[-1] != query:
                self.dropped["in_context_without_question"] += 1
                return None
            if len(out) < 2:
                self.dropped["in_context_without_examples"] += 1
                return None
        if not any(media is not None for media, _ in out):
            self.dropped["without_images"] += 1  # every pair left out (by alignment, or its media missing)
            return None
        return out

    def text(self, found: Found, i: int) -> str:
        part = found.document["parts"][i]
        return render(part["text"], part["spans"], WORDING)

    def answer(self, found: Found) -> str | None:
        """An in-context document's target: the answer to its own question."""
        if found.document["kind"] != "in_context":
            return None
        item = found.qa[found.document["item"]]
        return render(item["answer"], item["spans"], WORDING)

    def write_image(self, found: Found, media: dict) -> str | None:
        """`images/<key>_<ms>.jpg`, relative to the export folder; None where it would resolve outside."""
        name = image_name(media["key"], media["t"])
        path = self.images / name
        if not inside(path, self.images):
            self.skip(Skipped(self.first[found.key], found.key, "outside_output", f"images/{name} resolves to {path.resolve()}"))
            return None
        if not path.exists():
            path.write_bytes(self.frames[media["key"], media["t"]])
        self.images_written += 1
        return f"images/{name}"

    def metadata(self, found: Found, kept: list[tuple[int | None, list[int]]]) -> dict:
        """The sample and document a record comes from, and the media it shows, in order."""
        document = found.document
        media = [document["parts"][m] for m, _ in kept if m is not None]
        return {
            "sample": found.key, "sample_kind": found.sample_kind, "document": document["kind"],
            "media": [{"key": p["key"], "t": p["t"], "type": p["type"], "similarity": p["similarity"]} for p in media],
            **({"neighbours": document["neighbours"], "item": document["item"]} if document["kind"] == "in_context" else {}),
        }

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.read_documents()
        if self.fmt != "obelics":  # OBELICS carries its images' bytes
            self.images.mkdir(exist_ok=True)
        self.read_frames()
        write = {"obelics": self.obelics, "mmc4": self.mmc4, "llava-interleave": self.llava}[self.fmt]
        records, samples, kinds = write()
        return {
            "path": str(records), "records": sum(kinds.values()), "clips": len(samples["clip"]), "windows": len(samples["window"]),
            "documents": dict(sorted(kinds.items())), "images": self.images_written,
            "dropped": dict(sorted(self.dropped.items())), "skipped": dict(sorted(self.skipped.items())),
        }

    def _each(self):
        """(document, its kept units) for every document with something to train on."""
        for found in self.found:
            kept = self.kept(found)
            if kept is not None:
                yield found, kept

    def obelics(self):
        rows, samples, kinds = [], {"clip": set(), "window": set()}, Counter()
        for found, kept in self._each():
            images, texts = [], []
            for media, text_parts in kept:
                if media is not None:
                    part = found.document["parts"][media]
                    images.append({"bytes": self.frames[part["key"], part["t"]], "path": image_name(part["key"], part["t"])})
                    texts.append(None)
                    self.images_written += 1
                for i in text_parts:
                    images.append(None)
                    texts.append(self.text(found, i))
            if (answer := self.answer(found)) is not None:
                images.append(None)
                texts.append(answer)
            rows.append({"images": images, "texts": texts, "metadata": json.dumps(self.metadata(found, kept), sort_keys=True)})
            samples[found.sample_kind].add(found.key)
            kinds[found.document["kind"]] += 1
        path = self.out / "obelics.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), path)
        return path, samples, kinds

    def mmc4(self):
        lines, samples, kinds = [], {"clip": set(), "window": set()}, Counter()
        for found, kept in self._each():
            document = found.document
            if "similarity_matrix" not in document:
                self.dropped["unscored"] += 1
                continue
            text_index = {i: n for n, i in enumerate(i for i, part in enumerate(document["parts"]) if part["type"] == "text")}
            media_index = [m for m, _ in units(document) if m is not None]
            columns = [i for _, text_parts in kept for i in text_parts]
            text_list = [self.text(found, i) for i in columns]
            matrix_columns = [text_index[i] for i in columns]
            if (answer := self.answer(found)) is not None:
                text_list.append(answer)
                matrix_columns.append(text_index[kept[-1][1][0]])  # the answer is about what its question is about
            image_info, matrix = [], []
            for media, text_parts in kept:
                if media is None:
                    continue
                name = self.write_image(found, document["parts"][media])
                if name is None:
                    continue
                row = document["similarity_matrix"][media_index.index(media)]
                similarity = document["parts"][media]["similarity"]
                image_info.append({"image_name": Path(name).name, "matched_text_index": columns.index(text_parts[0]), "matched_sim": similarity})
                matrix.append([row[c] for c in matrix_columns])
            line = {"text_list": text_list, "image_info": image_info, "similarity_matrix": matrix, "url": found.key, "metadata": self.metadata(found, kept)}
            lines.append(json.dumps(line, sort_keys=True))
            samples[found.sample_kind].add(found.key)
            kinds[document["kind"]] += 1
        path = self.out / "mmc4.jsonl"
        path.write_text("".join(f"{line}\n" for line in lines))
        return path, samples, kinds

    def llava(self):
        records, samples, kinds = [], {"clip": set(), "window": set()}, Counter()
        for found, kept in self._each():
            document, images, turns, context = found.document, [], [], []
            for media, text_parts in kept:
                parts = [document["parts"][i] for i in text_parts]
                if media is None:
                    context += [self.text(found, i) for i in text_parts]
                    continue
                name = self.write_image(found, document["parts"][media])
                if name is None:
                    continue
                images.append(name)
                asked = [self.text(found, i) for i, p in zip(text_parts, parts) if p.get("role") == "question"]
                said = [self.text(found, i) for i, p in zip(text_parts, parts) if p.get("role") != "question"]
                lead = [INSTRUCTIONS[document["kind"]], *context] if not turns and document["kind"] in INSTRUCTIONS else context
                turns.append({"from": "human", "value": "\n".join([IMAGE, *[t for t in (" ".join(lead),) if t], *asked])})
                turns.append({"from": "gpt", "value": " ".join(said)})
                context = []
            if (answer := self.answer(found)) is not None:
                turns[-1]["value"] = answer
            records.append({"id": f"{found.key}/{document['kind']}", "image": images, "conversations": turns})
            samples[found.sample_kind].add(found.key)
            kinds[document["kind"]] += 1
        path = self.out / "llava-interleave.json"
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
        return path, samples, kinds


def export_documents(location: str, fmt: str, out_dir: str | Path, limits: Limits = Limits()) -> dict:
    """Write the documents of the clip and window samples at `location` in an interleaved format
    into `out_dir`; the summary counts records by document kind, what was left out of them and
    the samples the readers' checks left out, by reason."""
    return Export(location, fmt, out_dir, limits).run()
