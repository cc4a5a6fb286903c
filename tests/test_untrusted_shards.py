"""Shards are untrusted input. A hostile corpus, built here around good samples of a real run
(planted video, in-process executor; the captioner is tests/planted.py's double at the backend
interface; embed runs, so the documents carry what MMC4 needs), goes through every reader and
every export format, QA and interleaved: nothing is written outside the
output folder, every bad sample is reported with its reason, and every good sample beside them
comes out exactly as it does from a clean copy of the same samples."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from vidcurate.pipelines.cli import main as cli_main
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS, export
from vidcurate.pipelines.interleaved import FORMATS as INTERLEAVED_FORMATS
from vidcurate.pipelines.runner import Runner
from vidcurate.schemas.readers import open_shards, shard_urls, training_samples
from vidcurate.schemas.untrusted import REASONS, Limits, Skipped, printable, reasons_table

LIMITS = Limits(sample_bytes=2 << 20, json_bytes=1 << 20)  # small, so oversized members stay cheap to build
LIMIT_FLAGS = ["--max-sample-mb", "2", "--max-json-mb", "1"]
TERMINAL_CONTROLS = ("\x1b", "\x07", "\x7f", "\x9b", "\u202e")  # ESC, BEL, DEL, CSI, right-to-left override


@pytest.fixture(scope="module")
def good_samples(tmp_path_factory) -> list[dict]:
    """Every sample (clips and windows) of a small real run, members as stored in its shards."""
    from openai_server import OpenAIServer
    from planted import PlantedEventCaptioner, make_planted_video

    root = tmp_path_factory.mktemp("real")
    (root / "inputs").mkdir()
    make_planted_video(root / "inputs" / "planted.mp4")
    with OpenAIServer(PlantedEventCaptioner()) as server:
        settings = {"executor": "in_process", "caption.backend": "openai", "caption.openai.base_url": server.base_url, "shard.keyframes": 1}
        cfg = load_config(None, profile="tiny", inputs=str(root / "inputs"), run_dir=str(root / "run"), stages=["caption", "embed", "ground"], **settings)
        Runner(cfg).run_all()
    samples = []
    for url in shard_urls(str(root / "run" / "shard" / "dataset")):
        with tarfile.open(url) as tar:  # our own run's shards: read as stored
            for info in tar:
                key, suffix = info.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][suffix] = tar.extractfile(info).read()
    kinds = Counter(json.loads(s["json"])["kind"] for s in samples)
    assert kinds["clip"] >= 4 and kinds["window"] >= 1
    assert all(sum(len(v) for k, v in s.items() if k != "__key__") < LIMITS.sample_bytes for s in samples)
    # a good sample whose text and member names carry terminal controls: valid, so read as any other
    meta = json.loads(samples[0]["json"])
    meta["caption"]["text"] += " \x1b[31mred\x07\x7f\x9b\u202eevil"
    samples[0] = {**samples[0], "json": json.dumps(meta, sort_keys=True).encode(), "\x1b[2jx": b"member named with a control"}
    return samples


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", pax: dict | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.pax_headers = kind, link, pax or {}
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _write(tar: tarfile.TarFile, sample: dict) -> None:
    for suffix, data in sample.items():
        if suffix != "__key__":
            _member(tar, f"{sample['__key__']}.{suffix}", data)


def _with(sample: dict, key: str, **changes) -> bytes:
    """`sample`'s annotation as the sample `key` (a valid one), with fields changed."""
    return json.dumps({**json.loads(sample["json"]), "clip_id": key, **changes}).encode()


def _hostile(good: list[dict], root: Path, target: Path) -> tuple[Path, Path, list[tuple[str, str | None, str]]]:
    """A clean dataset of the good samples and a hostile one that holds the same good samples
    in the same order among bad ones; and the (shard, key, code) every reader must report."""
    clean, hostile = root / "clean", root / "hostile"
    clean.mkdir(), hostile.mkdir()
    half = len(good) // 2
    assert half >= 2, "the good samples of the real run should be at least 4"
    for i, part in enumerate((good[:half], good[half:])):
        with tarfile.open(clean / f"clean-{i:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for sample in part:
                _write(tar, sample)
    model, video_id = good[0], json.loads(good[0]["json"])["video_id"]
    mp4 = model["mp4"]
    key = iter(f"{video_id}_{900000000 + 1000 * i:09d}_{900000500 + 1000 * i:09d}" for i in range(100))
    expected: list[tuple[str, str | None, str]] = []
    shard0 = hostile / "hostile-000000.tar"

    def bad(tar: tarfile.TarFile, code: str, members: list[tuple], sample_key: str) -> None:
        for member in members:
            _member(tar, *member)
        expected.append((shard0.name, sample_key, code))

    with tarfile.open(shard0, "w", format=tarfile.PAX_FORMAT) as tar:
        _write(tar, good[0])
        bad(tar, "unsafe_path", [("../../pwned.json", _with(model, next(key))), ("../../pwned.mp4", mp4)], "../../pwned")
        absolute = str(target / "pwned")
        bad(tar, "unsafe_path", [(f"{absolute}.json", _with(model, next(key))), (f"{absolute}.mp4", mp4)], absolute)
        for sample in good[1:half]:
            _write(tar, sample)
        long_key = "ab" * 400 + "_1_2"
        bad(tar, "bad_key", [(f"{long_key}.json", _with(model, long_key)), (f"{long_key}.mp4", mp4)], long_key)
        k = next(key)
        bad(tar, "bad_key", [(f"sub/{k}.json", _with(model, k)), (f"sub/{k}.mp4", mp4)], f"sub/{k}")
        escape = "\x1b]0;owned\x07\x1b[2J_1_2"
        bad(tar, "bad_key", [(f"{escape}.json", _with(model, escape)), (f"{escape}.mp4", mp4)], escape)
        bad(tar, "duplicate_key", [(f"{good[1]['__key__']}.json", good[1]["json"]), (f"{good[1]['__key__']}.mp4", b"other bytes")], good[1]["__key__"])
        k = next(key)
        bad(tar, "link", [(f"{k}.json", _with(model, k)), (f"{k}.mp4", b"", tarfile.SYMTYPE, "/etc/passwd")], k)
        k = next(key)
        bad(tar, "link", [(f"{k}.json", _with(model, k)), (f"{k}.mp4", b"", tarfile.LNKTYPE, f"{good[0]['__key__']}.mp4")], k)
        k = next(key)
        bad(tar, "special", [(f"{k}.json", _with(model, k)), (f"{k}.mp4", b"", tarfile.CHRTYPE)], k)
        k = next(key)
        bad(tar, "special", [(f"{k}.json", _with(model, k)), (f"{k}.mp4", b"", tarfile.FIFOTYPE)], k)
        for code, data in [
            ("bad_json", b"this is not json {"),
            ("bad_json", b"[" * 100_000),
            ("bad_json", b'{"clip_id": "%s", "clip_id": "../../pwned"}'),
            ("bad_json", _with(model, "%s").replace(b'"duration_s": ', b'"duration_s": NaN, "x": ')),
            ("not_utf8", _with(model, "%s").replace(b'"caption": {', b'"caption": {"x": "\xff\xfe", ')),
            ("schema", _with(model, "%s", duration_s=-1)),
            ("unknown_version", _with(model, "%s", schema_version="9.9.9")),
            ("schema", _with(model, "%s", grounding={"qa": [{**json.loads(model["json"])["grounding"]["qa"][0], "question": "When {span7}?"}], "interleaved": []})),
            ("key_mismatch", _with(model, good[3]["__key__"])),
            ("too_large", _with(model, "%s") + b" " * LIMITS.json_bytes),
        ]:
            k = next(key)
            bad(tar, code, [(f"{k}.json", data.replace(b"%s", k.encode())), (f"{k}.mp4", mp4)], k)
        k = next(key)
        bad(tar, "missing_member", [(f"{k}.json", _with(model, k))], k)
        k = next(key)
        bad(tar, "too_large", [(f"{k}.json", _with(model, k)), (f"{k}.mp4", np.random.default_rng(0).bytes(LIMITS.sample_bytes))], k)
    # the second half, then a sample cut inside its mp4
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in good[half:]:
            _write(tar, sample)
        k = next(key)
        _member(tar, f"{k}.json", _with(model, k))
        cut_at = tar.offset + 512 + len(mp4) // 2  # halfway through the mp4's data
        _member(tar, f"{k}.mp4", mp4)
    (hostile / "hostile-000001.tar").write_bytes(buf.getvalue()[:cut_at])
    expected.append(("hostile-000001.tar", k, "truncated"))
    (hostile / "hostile-000002.tar").write_bytes(b"not a tar at all " * 100)
    expected.append(("hostile-000002.tar", None, "bad_tar"))
    with tarfile.open(hostile / "hostile-000003.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, f"{next(key)}.json", b"{}", pax={"comment": "x" * (2 << 20)})  # a 2 MiB pax header
    expected.append(("hostile-000003.tar", None, "bad_tar"))
    return clean, hostile, expected


@pytest.fixture
def corpus(good_samples, tmp_path):
    """(clean, hostile, expected skips, the folder around the outputs, where any write outside
    them would land: relative keys climb into it, the absolute key points into it)."""
    around = tmp_path / "around"
    (around / "deep" / "er").mkdir(parents=True)
    clean, hostile, expected = _hostile(good_samples, tmp_path, around / "target")
    return clean, hostile, expected, around


def _tree(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_symlink(), p.is_file() and p.read_bytes()) for p in sorted(folder.rglob("*"))}


def _skips(location: Path, read) -> list[tuple[str, str | None, str]]:
    skipped: list[Skipped] = []
    read(str(location), skipped.append)
    assert all(s.code in REASONS and s.detail for s in skipped)
    return [(Path(s.shard).name, s.key, s.code) for s in skipped]


def _read_all(location: str, on_skip) -> list[dict]:
    return list(open_shards(location, limits=LIMITS, on_skip=on_skip))


def test_every_reader_reads_the_good_samples_and_reports_every_bad_one(corpus, monkeypatch):
    clean, hostile, expected, around = corpus
    assert _skips(clean, _read_all) == []
    good = _read_all(str(clean), lambda skipped: pytest.fail(f"a clean sample was skipped: {skipped}"))
    got: list[dict] = []
    assert _skips(hostile, lambda loc, skip: got.extend(_read_all(loc, skip))) == expected
    drop = ("__url__", "__local_path__")
    assert [{k: v for k, v in s.items() if k not in drop} for s in got] == [{k: v for k, v in s.items() if k not in drop} for s in good]

    items: list[dict] = []
    assert _skips(hostile, lambda loc, skip: items.extend(training_samples(loc, frames=2, limits=LIMITS, on_skip=skip))) == expected
    clean_items = list(training_samples(str(clean), frames=2, limits=LIMITS))
    assert [i["key"] for i in items] == [i["key"] for i in clean_items] and [i["meta"] for i in items] == [i["meta"] for i in clean_items]
    assert all(np.array_equal(a["frames"], b["frames"]) for a, b in zip(items, clean_items))

    monkeypatch.syspath_prepend(str(REPO / "docs" / "examples"))  # the DataLoader example, as users run it (2 workers)
    from torch.utils.data import DataLoader
    from torch_dataloader import Clips

    loader = DataLoader(Clips(str(hostile), frames=2, limits=LIMITS), batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert sorted(batch["key"] for batch in loader) == sorted(s["__key__"] for s in good)
    assert _tree(around) == {"deep": (False, False), "deep/er": (False, False)}


def test_inspect_prints_the_good_samples_escaped_and_says_what_it_skipped(corpus, capsys):
    clean, hostile, expected, _ = corpus
    assert cli_main(["inspect", str(clean), "-n", "1000", *LIMIT_FLAGS]) == 0
    clean_out = capsys.readouterr().out
    assert cli_main(["inspect", str(hostile), "-n", "1000", *LIMIT_FLAGS]) == 0
    out = capsys.readouterr().out
    assert not any(c in out or c in clean_out for c in TERMINAL_CONTROLS)
    assert "\\u001b[31mred\\u0007\\u007f\\u009b\\u202eevil" in out  # the good sample's text, every control escaped
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert [line for line in out.splitlines() if not line.startswith("skipped ")] == clean_out.splitlines()
    assert len(skipped) == len(expected) + 1  # one line per sample, then the counts
    for line, (shard, key, code) in zip(skipped, expected):
        assert line.startswith(f"skipped {printable(str(hostile / shard))} {printable(key) if key else '(rest of shard)'}: {code}: ")
    counts = Counter(code for _, _, code in expected)
    assert skipped[-1] == f"skipped {len(expected)} sample(s): " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))


@pytest.mark.parametrize("fmt", FORMATS + INTERLEAVED_FORMATS)
def test_every_export_writes_the_good_samples_as_from_clean_shards_and_nothing_outside(corpus, fmt, monkeypatch, capsys, caplog):
    clean, hostile, expected, around = corpus
    outputs = around / "deep" / "er"  # media/../../../pwned.mp4 from an export folder here lands in `around`
    monkeypatch.chdir(around / "deep")
    before = _tree(around)
    assert cli_main(["export", str(clean), "--format", fmt, "--out", str(outputs / "clean"), *LIMIT_FLAGS]) == 0
    clean_summary = json.loads(capsys.readouterr().out)
    assert cli_main(["export", str(hostile), "--format", fmt, "--out", str(outputs / "hostile"), *LIMIT_FLAGS]) == 0
    summary = json.loads(capsys.readouterr().out)
    after = _tree(around)
    written = {p: v for p, v in after.items() if p not in before}
    assert all(p.startswith(("deep/er/clean", "deep/er/hostile")) for p in written), sorted(written)
    assert {p: v for p, v in after.items() if p in before} == before
    assert summary.pop("skipped") == dict(sorted(Counter(code for _, _, code in expected).items()))
    assert clean_summary.pop("skipped") == {}
    assert {k: v for k, v in summary.items() if k != "path"} == {k: v for k, v in clean_summary.items() if k != "path"}
    assert summary["records"] > 0 and summary["windows"] > 0
    exported = {p.removeprefix("deep/er/hostile"): v for p, v in written.items() if p.startswith("deep/er/hostile")}
    assert exported == {p.removeprefix("deep/er/clean"): v for p, v in written.items() if p.startswith("deep/er/clean")}
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(warned) == len(expected) and not any(c in line for line in warned for c in TERMINAL_CONTROLS)


def test_export_writes_no_key_twice_and_never_through_a_link(good_samples, tmp_path):
    """Keys are unique per shard for every reader; across shards, export keeps the first sample
    of a key. A link planted in the export folder is never written through."""
    data = tmp_path / "data"
    data.mkdir()
    twice = [good_samples[1], good_samples[2]]
    for i in range(2):
        with tarfile.open(data / f"s-{i:06d}.tar", "w") as tar:
            for sample in twice:
                _write(tar, {**sample, "mp4": sample["mp4"] + bytes([i])})
    out, victim = tmp_path / "out", tmp_path / "victim.mp4"
    (out / "media").mkdir(parents=True)
    victim.write_bytes(b"precious")
    (out / "media" / f"{twice[1]['__key__']}.mp4").symlink_to(victim)
    summary = export(str(data), "llava", out)
    assert summary["skipped"] == {"duplicate_key": 1, "outside_output": 2}  # the linked key, from either shard
    assert victim.read_bytes() == b"precious"
    assert (out / "media" / f"{twice[0]['__key__']}.mp4").read_bytes() == twice[0]["mp4"] + b"\x00"
    assert {r["id"] for r in json.loads((out / "llava.json").read_text())} == {twice[0]["__key__"]}  # one record per QA item
    linked_out, elsewhere = tmp_path / "linked", tmp_path / "elsewhere"
    linked_out.mkdir(), elsewhere.mkdir()
    (linked_out / "media").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the export folder"):
        export(str(data), "llava", linked_out)
    assert not list(elsewhere.iterdir())


def test_training_samples_skip_media_that_does_not_decode(good_samples, tmp_path):
    with tarfile.open(tmp_path / "s-000000.tar", "w") as tar:
        _write(tar, {**good_samples[1], "mp4": b"\x00\x00\x00\x18ftypmp42 but no video"})
        _write(tar, good_samples[2])
    skipped: list[Skipped] = []
    items = list(training_samples(str(tmp_path), frames=2, on_skip=skipped.append))
    assert [i["key"] for i in items] == [good_samples[2]["__key__"]]
    assert [(s.key, s.code) for s in skipped] == [(good_samples[1]["__key__"], "undecodable")]


def test_an_index_that_names_shards_outside_its_dataset_is_refused(tmp_path, capsys):
    for url in ("../elsewhere.tar", "/etc/passwd", "s3://other/bucket.tar", 7):
        (tmp_path / "index.json").write_text(json.dumps({"shardlist": [{"url": url}]}))
        with pytest.raises(ValueError, match="outside its dataset"):
            shard_urls(str(tmp_path))
    for index in ({"shardlist": [{}]}, {"shardlist": 5}, [1]):
        (tmp_path / "index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match="is not a shard index"):
            shard_urls(str(tmp_path))
    (tmp_path / "index.json").write_text(json.dumps({"shardlist": [{"url": "../elsewhere.tar"}]}))
    assert cli_main(["inspect", str(tmp_path)]) == 2
    assert "names a shard outside its dataset" in capsys.readouterr().err


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_text():
    assert printable("ok ünïcødé 视频 🎬") == "ok ünïcødé 视频 🎬"
    assert printable("a\x1b[2Jb\x07\x7f\x9b\u202e\u2028\U000e0001\ud800") == "a\\u001b[2Jb\\u0007\\u007f\\u009b\\u202e\\u2028\\U000e0001\\ud800"
    assert printable("line\nnext\r", keep="\n") == "line\nnext\\u000d"
    assert json.loads(printable(json.dumps({"t": "\x7f\x1b"}))) == {"t": "\x7f\x1b"}  # escapes stay valid JSON


def test_readme_holds_the_generated_table_of_shard_reasons():
    text = (REPO / "README.md").read_text()
    start = "<!-- shard reasons: generated by python -m vidcurate.schemas.untrusted -->\n"
    table = text[text.index(start) + len(start) : text.index("\n<!-- shard reasons: end -->")]
    assert table == reasons_table(), "README's table of shard reasons is stale: paste `python -m vidcurate.schemas.untrusted`"
