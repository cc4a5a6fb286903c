"""Interleaved documents end to end: a real run (in-process executor) over two planted videos (a
red square only while an event is on, over noise so frames are as large as real ones), whose
captioner is tests/planted.py's double at the backend interface; then every interleaved export,
read by its consumer's own reading code (tests/interleaved_loaders.py names the file and function
each follows): `datasets.load_dataset` for OBELICS, OpenFlamingo's MMC4 conversion and
preprocessing, LLaVA-NeXT's multi-image `LazySupervisedDataset` path."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interleaved_loaders import MIN_KB, convert_mmc4_to_wds, llava_get_item, openflamingo_tokenizer, preprocess_interleaved, preprocess_interleaved_v1
from planted import SIZE, SampledFrameCaptioner, make_planted_video, square_visible
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import leaks, render
from vidcurate.pipelines.interleaved import export_documents as export
from vidcurate.pipelines.runner import Runner
from vidcurate.schemas.readers import open_shards
from vidcurate.schemas.sample import SCHEMA_VERSION, TIME_REF

SECOND_EVENTS = [(2.0, 4.5), (8.0, 10.6), (14.2, 16.0), (20.0, 22.6)]  # not the first video's times: in-context answers differ


def _noise(seed: int):
    """Each 6 s shot a still of seeded noise: cuts between shots, JPEGs the size of real frames."""
    shots = [np.random.default_rng(seed + k).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for k in range(4)]
    return lambda i: shots[min(3, i // 150)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from openai_server import OpenAIServer

    root = tmp_path_factory.mktemp("interleaved")
    (root / "inputs").mkdir()
    make_planted_video(root / "inputs" / "a.mp4", barcode=False, background=_noise(0))
    make_planted_video(root / "inputs" / "b.mp4", barcode=False, events=SECOND_EVENTS, background=_noise(10))
    with OpenAIServer(SampledFrameCaptioner()) as server:
        settings = {"executor": "in_process", "caption.backend": "openai", "caption.openai.base_url": server.base_url, "caption.frames": 8, "caption.frame_height": 240}
        cfg = load_config(None, profile="tiny", inputs=str(root / "inputs"), run_dir=str(root / "run"), stages=["caption", "embed", "ground"], **settings)
        stats = Runner(cfg).run_all()
    dataset = root / "run" / "shard" / "dataset"
    samples = {s["__key__"]: (json.loads(s["json"]), s["mp4"]) for s in open_shards(str(dataset))}
    return dataset, stats, samples


def _frame_at(mp4: bytes, t: float) -> np.ndarray:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        return min(((abs(float(f.time) - t), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)), key=lambda p: p[0])[1]


def test_every_sample_ships_its_documents_naming_shipped_media(run):
    dataset, stats, samples = run
    clips = {k for k, (m, _) in samples.items() if m["kind"] == "clip"}
    kinds, full = {"events": 0, "window": 0, "in_context": 0}, 0
    for key, (meta, mp4) in samples.items():
        assert meta["schema_version"] == SCHEMA_VERSION
        documents = meta["grounding"]["interleaved"]
        kinds.update({d["kind"]: kinds[d["kind"]] + 1 for d in documents})
        if meta["kind"] == "window":
            (document,) = documents
            media = [p for p in document["parts"] if p["type"] != "text"]
            assert [p["key"] for p in media] == [c["key"] for c in meta["clips"]] and {p["type"] for p in media} == {"video"}
            continue
        events, in_context = documents
        assert (events["kind"], in_context["kind"]) == ("events", "in_context")
        for image in (p for p in events["parts"] if p["type"] != "text"):  # the frame an event's text follows shows the event
            assert image["key"] == key and square_visible(_frame_at(mp4, image["t"]))
        # up to ground.in_context_k (2): the planted clips all say "a red square is shown", so where the
        # answer repeats it, a second example saying it too would give it away
        assert {n["key"] for n in in_context["neighbours"]} <= clips - {key} and 1 <= len(in_context["neighbours"]) <= 2
        full += len(in_context["neighbours"]) == 2
        assert all(samples[n["key"]][0]["video_id"] != meta["video_id"] for n in in_context["neighbours"])
        item = meta["grounding"]["qa"][in_context["item"]]
        said = " ".join(render(p["text"], p["spans"], "llava") for p in in_context["parts"] if p["type"] == "text")
        assert in_context["parts"][-1]["text"] == item["question"] and render(item["answer"], item["spans"], "llava") not in said
        assert all(d["pairs"]["dropped"] == 0 and d["pairs"]["scored"] > 0 for d in documents)  # tiny: scored, never dropped
    assert kinds == {"events": stats["samples"], "window": stats["window_samples"], "in_context": stats["samples"]} and stats["window_samples"] >= 2
    # the tiny profile's random embeddings are all alike (cosine 0.994-0.997 here), so which
    # neighbours come first, and so how many pass the rules, is not the point: k is reached
    assert full >= 1


def test_the_card_counts_documents_images_tokens_and_pairs(run):
    """Documents, images per document and tokens of text per document (CLIP's BPE, open_clip's
    own tokenizer, over the text as exporters render it) by kind, and the pairs scored."""
    from open_clip import get_tokenizer

    tokenize = get_tokenizer("ViT-B-32")  # CLIP's BPE: start and end tokens, then padding
    dataset, _, samples = run
    written = json.loads((dataset / "stats.json").read_text())["content"]["documents"]
    card = (dataset / "README.md").read_text()
    for kind, counted in written.items():
        documents = [d for meta, _ in samples.values() for d in meta["grounding"]["interleaved"] if d["kind"] == kind]
        images = [sum(p["type"] != "text" for p in d["parts"]) for d in documents]
        tokens = [sum(int((tokenize([render(p["text"], p["spans"], "llava")], context_length=4096)[0] > 0).sum()) - 2 for p in d["parts"] if p["type"] == "text") for d in documents]
        assert counted["documents"] == len(documents) and counted["images"]["mean"] == round(float(np.mean(images)), 4)
        assert counted["tokens"]["p100"] == max(tokens) and counted["tokens"]["mean"] == round(float(np.mean(tokens)), 4) and counted["scored"] == sum(d["pairs"]["scored"] for d in documents)
        assert re.search(rf"\| {kind} \| [^|]+ \| {len(documents)} \| {counted['images']['mean']} \(", card)


def _export(dataset: Path, fmt: str, out: Path) -> dict:
    summary = export(str(dataset), fmt, out)
    assert summary["skipped"] == {} and summary["dropped"] == {} and summary["records"] == sum(summary["documents"].values())
    return summary


def test_obelics_reads_with_datasets_load_dataset(run, tmp_path):
    """What was checked, on the rows `datasets.load_dataset("parquet", ...)` returns (its features
    from the file's own metadata): a row per document; `images` and `texts` of equal length with
    exactly one of the two at each position; each image decoded by `datasets` to the pixels of the
    frame the document names; times written out; an in-context document closes with the answer
    to its question, said nowhere before it; `metadata` names the sample and the media."""
    from datasets import load_dataset

    dataset, stats, samples = run
    summary = _export(dataset, "obelics", tmp_path)
    rows = load_dataset("parquet", data_files=str(tmp_path / "obelics.parquet"), split="train")
    assert rows.num_rows == summary["records"] == 2 * stats["samples"] + stats["window_samples"]
    assert rows.features["images"].feature.__class__.__name__ == "Image"
    for row in rows:
        meta = json.loads(row["metadata"])
        assert len(row["images"]) == len(row["texts"]) and all((i is None) != (t is None) for i, t in zip(row["images"], row["texts"]))
        images = [i for i in row["images"] if i is not None]
        assert len(images) == len(meta["media"]) > 0
        for image, media in zip(images, meta["media"]):
            expected = _frame_at(samples[media["key"]][1], media["t"])
            assert np.abs(np.asarray(image.convert("RGB"), float) - expected).mean() < 12  # that frame as JPEG (noise: ~9); another shot: ~85
        texts = [t for t in row["texts"] if t is not None]
        assert not any(TIME_REF.search(t) for t in texts)
        if meta["document"] == "in_context":
            item = samples[meta["sample"]][0]["grounding"]["qa"][meta["item"]]
            answer = render(item["answer"], item["spans"], "llava")
            assert texts[-1] == answer and answer not in " ".join(texts[:-1])


def test_mmc4_runs_through_openflamingo_conversion_and_preprocessing(run, tmp_path):
    """OpenFlamingo's own route: the jsonl zipped as MMC4 shard 0, the images where its converter
    looks (`image_dir/0/`), every document through `convert_mmc4_to_wds` and `preprocess_interleaved`
    (HEAD: `similarity_matrix`, one-to-one assignment; v1: `matched_sim`, `matched_text_index`).
    The tiny profile's similarities are noise, so the threshold is -1 for the pass-through checks;
    README's 0.24 then drops exactly the images whose `matched_sim` is lower."""
    dataset, _, samples = run
    summary = _export(dataset, "mmc4", tmp_path / "export")
    lines = (tmp_path / "export" / "mmc4.jsonl").read_text().splitlines()
    assert len(lines) == summary["records"] and summary["images"] > 0
    with zipfile.ZipFile(tmp_path / "shard_0.zip", "w") as shard:
        shard.write(tmp_path / "export" / "mmc4.jsonl", "mmc4.jsonl")
    (tmp_path / "image_dir").mkdir()
    (tmp_path / "image_dir" / "0").symlink_to(tmp_path / "export" / "images", target_is_directory=True)
    converted = convert_mmc4_to_wds([tmp_path / "shard_0.zip"], tmp_path / "image_dir")
    tokenizer = openflamingo_tokenizer()
    assert len(converted) == len(lines)
    for sample, line in zip(converted, lines):
        document = json.loads(line)
        infos = document["image_info"]
        assert len(document["similarity_matrix"]) == len(infos) and all(len(r) == len(document["text_list"]) for r in document["similarity_matrix"])
        assert all(len(json.loads(sample["json"])["image_info"][i]["image_base64"]) * 3 // 4 // 1000 > MIN_KB for i in range(len(infos)))
        head = preprocess_interleaved((sample["json"],), tokenizer, sim_threshold=-1.0)
        assert head["image_tokens"] == len(head["images"]) == min(len(infos), 6)
        v1 = preprocess_interleaved_v1((sample["json"],), tokenizer, sim_threshold=-1.0)
        assert v1["sentence_ixs"] == [info["matched_text_index"] for info in infos][:5]
        for info, ix in zip(infos, v1["sentence_ixs"]):  # each image goes before the text the document put after it
            assert f"<image>{document['text_list'][ix]}" in v1["text"]
        high = [info for info in infos if info["matched_sim"] >= 0.24]
        if high:
            assert len(preprocess_interleaved_v1((sample["json"],), tokenizer, sim_threshold=0.24)["images"]) == len(high)
        else:
            with pytest.raises(ValueError, match="No images in sample"):
                preprocess_interleaved_v1((sample["json"],), tokenizer, sim_threshold=0.24)


def test_llava_interleave_resolves_every_image_and_token_in_llava_next(run, tmp_path):
    """LLaVA-NeXT's `LazySupervisedDataset._get_item` multi-image path, with `image_folder` the
    export folder: every path opens, one `<image>` token per listed image in order, conversations
    from human to gpt; an in-context record closes with the answer to its own question, and no
    answer of it can be read from an earlier turn (`pipelines.export.leaks`)."""
    from transformers import CLIPImageProcessor

    dataset, _, samples = run
    summary = _export(dataset, "llava-interleave", tmp_path)
    records = json.loads((tmp_path / "llava-interleave.json").read_text())
    assert len(records) == summary["records"]
    processor = CLIPImageProcessor()
    for record in records:
        item = llava_get_item(record, str(tmp_path), processor)
        assert len(item["image"]) == len(record["image"]) == item["image_tokens"] > 0
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and all(t["value"] for t in turns)
        assert [t["value"].count("<image>") for t in turns[::2]] == [1] * (len(turns) // 2)  # one per item, in the order of `image`
        key, kind = record["id"].split("/")
        if kind == "in_context":
            meta = samples[key][0]
            document = meta["grounding"]["interleaved"][1]
            qa = meta["grounding"]["qa"][document["item"]]
            assert turns[-1]["value"] == render(qa["answer"], qa["spans"], "llava")
            assert not leaks(record, tuple(e["text"] for e in meta["caption"]["events"]))


def test_the_command_line_exports_documents_and_refuses_qa_options(run, tmp_path, capsys):
    dataset, _, _ = run
    assert cli_main(["export", str(dataset), "--format", "llava-interleave", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["documents"]["window"] > 0
    assert cli_main(["export", str(dataset), "--format", "mmc4", "--out", str(tmp_path / "x"), "--turns", "2"]) == 2
    assert "--turns and --absolute-media are for the QA formats" in capsys.readouterr().err


def test_documents_without_similarities_and_missing_media(run, tmp_path):
    """A 1.3.0 shard (its clip parts, no similarity) exports as an events document, except to MMC4,
    which needs similarities; an in-context document whose examples are not in the dataset is
    left out, as is an example's pair alone when only it is missing."""
    _, _, samples = run
    key, (meta, mp4) = next((k, s) for k, s in samples.items() if s[0]["kind"] == "clip" and len(s[0]["grounding"]["interleaved"][-1]["neighbours"]) == 2)

    def shard(name: str, annotation: dict) -> str:
        with tarfile.open(tmp_path / name, "w") as tar:
            for member, data in ((f"{key}.json", json.dumps(annotation).encode()), (f"{key}.mp4", mp4)):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return str(tmp_path / name)

    old = lambda parts: {**meta, "schema_version": "1.3.0", "grounding": {**meta["grounding"], "interleaved": parts}}  # noqa: E731
    legacy = shard("old-000000.tar", old([{"type": "frame", "t": 1.0}, {"type": "text", "text": "A square."}]))
    assert export(legacy, "mmc4", tmp_path / "mmc4")["dropped"] == {"unscored": 1}
    summary = export(legacy, "obelics", tmp_path / "obelics")
    assert summary["documents"] == {"events": 1} and summary["images"] == 1
    assert export(shard("text-000000.tar", old([{"type": "text", "text": "Only words."}])), "obelics", tmp_path / "text")["dropped"] == {"without_images": 1}
    alone = shard("alone-000000.tar", meta)  # the clip without its neighbours
    summary = export(alone, "llava-interleave", tmp_path / "alone")
    assert summary["documents"] == {"events": 1} and summary["dropped"] == {"in_context_without_examples": 1, "missing_media": 2}
    assert Image.open(tmp_path / "alone" / json.loads((tmp_path / "alone" / "llava-interleave.json").read_text())[0]["image"][0]).size == SIZE
