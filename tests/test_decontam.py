"""Eval-set decontamination on real footage. The eval set is real videos; the inputs are copies of
them (re-encoded at another CRF and size, cropped, cut in time) mixed with unrelated real and
synthetic videos, run through the real pipeline (probe, split, caption, ground, embed, decontam,
shard; in process, profile tiny). Every copy's clips are rejected naming the set, the source and a
time inside the clip's own span there; no unrelated clip is. The tiny embed model's embeddings are
random (cosine ~0.97 between anything), so under profile tiny the cosine signal is off
(`decontam.tiny_defaults`) and the frames' pHash decides every match; the cosine rule is checked on
planted embeddings. The captioner is the one test double (`FixedCaptioner`): it answers one known
caption and event for every clip, so ground's questions quote sentences the eval questions share."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_VIDEOS
from copies import transcode
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.runner import Runner
from vidcurate.pipelines.store import StageStore
from vidcurate.schemas.readers import open_shards
from vidcurate.stages import decontam
from vidcurate.stages.contract import map_here
from vidcurate.stages.decontam import DecontamConfig, EvalIndex, EvalSet, EvalSetError

EVAL = {"chaplin.mp4": "moviepy_chaplin.mp4", "city.mpg": "kivy_cityCC0.mpg", "cockatoo.mp4": "imageio_cockatoo.mp4"}
# input name: (the eval video it copies, how), each re-encoded with libx264
COPIES = {
    "chaplin_small.mp4": ("chaplin.mp4", {"crf": 36, "width": 320}),  # another CRF, half the size
    "chaplin_4x3.mp4": ("chaplin.mp4", {"crf": 26, "width": 288, "crop": (0.0, 0.0, 0.125, 0.125)}),  # cut to 4:3
    "city_cropped.mp4": ("city.mpg", {"crf": 28, "width": 400, "crop": (0.06,) * 4}),  # centre crop, 6% a side
    "cockatoo_cut.mp4": ("cockatoo.mp4", {"crf": 30, "width": 480, "start_s": 3.0, "end_s": 9.0}),  # 6 s from 3 s in
}
UNRELATED = ["moviepy_video_with_failing_audio.mp4", "psd_counter.mp4"]  # and two synthetic videos
EVENT = "a small brown dog runs across the wet green lawn and jumps over the low wooden fence"
CAPTION = "Somebody films the garden behind the old stone house on a grey and windy afternoon in early spring."
QUESTIONS = {  # eval set: its questions, and how many of a clip's QA items each set takes out
    "bench": [
        "Why does a small brown dog run across the wet green lawn and jump over the fence?",  # 12 words in a row: too few
        f"At what time in the video does {EVENT.replace('a small', 'the small')}?",  # 13 and more
        "How many people enter the room?",
    ],
    "quiz": [f"Is it true that somebody films the garden behind the old stone house on a grey and windy day?"],
}


class FixedCaptioner:
    """The test double at the captioning backend interface (`generate(prompts) -> answers`): every
    clip gets the caption CAPTION and one event, EVENT, over all of it."""

    name = "fixed-event"

    def generate(self, prompts) -> list[str]:
        return [self._answer(p) for p in prompts]

    def _answer(self, prompt) -> str:
        texts = [v for kind, v in prompt.parts if kind == "text"]
        duration = float(re.search(r"lasting ([\d.]+) seconds", texts[-1]).group(1))
        return json.dumps({"caption": CAPTION, "events": [{"start_s": 0.0, "end_s": duration, "text": EVENT}]})


def _eval_sets(root: Path) -> list[dict]:
    bench, quiz = root / "eval" / "bench", root / "eval" / "quiz"
    bench.mkdir(parents=True)
    quiz.mkdir(parents=True)
    for name, shared in EVAL.items():
        shutil.copy(SHARED_VIDEOS / shared, bench / name)
    shutil.copy(SHARED_VIDEOS / "psd_testvideo.mp4", quiz / "nature.mp4")
    for name, questions in QUESTIONS.items():
        (root / "eval" / f"{name}.jsonl").write_text("".join(json.dumps({"question": q, "answer": "-"}) + "\n" for q in questions))
    return [
        {"name": "bench", "videos": str(bench), "questions": str(root / "eval" / "bench.jsonl")},
        {"name": "quiz", "videos": str(quiz / "*.mp4"), "questions": str(root / "eval" / "quiz.jsonl")},
    ]


def _config(root: Path, eval_sets: list[dict], base_url: str = "http://127.0.0.1:9/v1"):
    settings = {
        "caption.backend": "openai",
        "caption.openai.base_url": base_url,
        "split.max_clip_s": 3.0,
        "split.clip_max_height": 144,
        "decontam.eval_sets": eval_sets,
        "decontam.cache": str(root / "fingerprints"),
    }
    stages = ["caption", "embed", "ground", "decontam"]
    return load_config(None, profile="tiny", inputs=str(root / "inputs"), run_dir=str(root / "run"), executor="in_process", stages=stages, **settings)


@pytest.fixture(scope="module")
def contaminated_run(tmp_path_factory, synthetic_videos):
    """The run, and each input's source: the eval video a copy was made from (with the copy's
    start in it), or None for an unrelated video."""
    from openai_server import OpenAIServer

    root = tmp_path_factory.mktemp("decontam")
    eval_sets = _eval_sets(root)
    inputs = root / "inputs"
    inputs.mkdir()
    sources: dict[str, tuple[str, float] | None] = {}
    for name, (source, how) in COPIES.items():
        transcode(root / "eval" / "bench" / source, inputs / name, **how)
        sources[name] = (source, how.get("start_s", 0.0))
    for name in UNRELATED:
        shutil.copy(SHARED_VIDEOS / name, inputs / name)
        sources[name] = None
    for video in sorted(synthetic_videos[0].glob("*.mp4")):
        shutil.copy(video, inputs / video.name)
        sources[video.name] = None
    with OpenAIServer(FixedCaptioner()) as server:
        cfg = _config(root, eval_sets, server.base_url)
        Runner(cfg).run_all()
    return root, cfg, sources


def _clips(run_dir: Path, sources: dict) -> list[dict]:
    """Every clip of the run: the split row, the input it came from and decontam's row."""
    store = StageStore(run_dir)
    by_video = {Path(r["uri"]).name: r["video_id"] for r in store.table(run_dir / "probe").to_pylist()}
    input_of = {video_id: name for name, video_id in by_video.items()}
    decided = {r["clip_id"]: r for r in store.table(run_dir / "decontam").to_pylist()}
    clips = [r for r in store.table(run_dir / "split").to_pylist() if r["status"] == "kept" and r["clip_id"] in decided]
    assert {input_of[c["video_id"]] for c in clips} == set(sources), "every input reached decontam with clips"
    return [{**c, "input": input_of[c["video_id"]], "decided": decided[c["clip_id"]]} for c in clips]


def test_every_copy_clip_is_rejected_naming_its_source_and_no_unrelated_clip(contaminated_run):
    root, _, sources = contaminated_run
    clips = _clips(root / "run", sources)
    copies = [c for c in clips if sources[c["input"]]]
    unrelated = [c for c in clips if not sources[c["input"]]]
    true = [c for c in copies if c["decided"]["status"] == "rejected"]
    false = [c for c in unrelated if c["decided"]["status"] == "rejected"]
    bits = [c["decided"]["match_figure"] for c in true]
    print(f"\ntrue matches {len(true)}/{len(copies)} copy clips; false matches {len(false)}/{len(unrelated)} unrelated clips; "
          f"Hamming bits of the closest frame {min(bits):g}-{max(bits):g}")  # fmt: skip
    assert len(copies) >= 10 and len(unrelated) >= 10
    assert (len(true), len(false)) == (len(copies), 0)
    for clip in copies:
        source, offset = sources[clip["input"]]
        row = clip["decided"]
        assert (row["eval_set"], row["eval_video"], row["match_measure"]) == ("bench", source, "hamming"), row  # tiny: pHash decides
        assert clip["start_s"] + offset - 0.2 <= row["eval_time_s"] <= clip["end_s"] + offset + 0.2, (clip, row)  # where the clip is
        assert row["match_figure"] <= 6 and 2 <= row["matched_frames"] <= 4
        assert row["reason"] == f"contaminated: bench/{source}@{row['eval_time_s']:.2f}s (hamming {int(row['match_figure'])}, {row['matched_frames']} frames)"


def _shares_13_words(question: str, eval_question: str) -> bool:
    """Counted here apart from the stage: 13 words in a row of one text are in the other."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z0-9']+", text.lower())
        return {tuple(words[i : i + 13]) for i in range(len(words) - 12)}

    return bool(grams(question) & grams(eval_question))


def _expected_drops(root: Path) -> dict[str, dict[str, int]]:
    """Per clip ground kept: how many of its items each eval set takes out (the first set whose
    question shares 13 words with the item's), from ground's own table."""
    grounded = StageStore(root / "run").table(root / "run" / "ground").to_pylist()
    drops = {}
    for row in grounded:
        counts: dict[str, int] = {}
        for item in json.loads(row["qa"] or "[]"):
            matched = next((name for name, questions in QUESTIONS.items() if any(_shares_13_words(item["question"], q) for q in questions)), None)
            if matched:
                counts[matched] = counts.get(matched, 0) + 1
        drops[row["clip_id"]] = counts
    return drops


def test_qa_items_sharing_13_words_with_an_eval_question_never_ship(contaminated_run):
    """Each kept clip loses exactly the items whose question quotes 13 words of an eval question
    (EVENT, in ground's grounding questions: bench's second question; the 12 words its first
    question shares are too few), counted under their set; the rest ship as ground made them."""
    root, _, sources = contaminated_run
    expected = _expected_drops(root)
    decided = StageStore(root / "run").table(root / "run" / "decontam").to_pylist()
    kept = [r for r in decided if r["status"] == "kept"]
    assert kept and all(json.loads(r["qa_dropped"]) == expected[r["clip_id"]] for r in kept)
    assert all(expected[r["clip_id"]].get("bench", 0) > 0 for r in kept)  # every clip had items to lose
    grounded = {r["clip_id"]: json.loads(r["qa"] or "[]") for r in StageStore(root / "run").table(root / "run" / "ground").to_pylist()}
    samples = [json.loads(s["json"]) for s in open_shards(str(root / "run" / "shard" / "dataset")) if "windows" not in s["__url__"]]
    assert len(samples) == len(kept)
    eval_questions = [q for questions in QUESTIONS.values() for q in questions]
    for sample in samples:
        shipped = [item["question"] for item in sample["grounding"]["qa"]]
        left = [item["question"] for item in grounded[sample["clip_id"]] if not any(_shares_13_words(item["question"], q) for q in eval_questions)]
        assert shipped == left and shipped


def _window_samples(root: Path) -> list[dict]:
    return [json.loads(s["json"]) for s in open_shards(str(root / "run" / "shard" / "dataset")) if "windows" in s["__url__"]]


def test_window_items_sharing_13_words_with_an_eval_question_never_ship(contaminated_run):
    """Windows' QA items are made at shard time, after decontam: the same n-gram rule leaves out
    those quoting an eval question (every window's event grounding quotes EVENT), counted by set."""
    root, _, _ = contaminated_run
    samples = _window_samples(root)
    eval_questions = [q for questions in QUESTIONS.values() for q in questions]
    assert samples and all(sample["grounding"]["qa"] for sample in samples)
    for sample in samples:
        assert not any(_shares_13_words(item["question"], q) for item in sample["grounding"]["qa"] for q in eval_questions)
        assert sample["grounding"]["decontaminated"].get("bench", 0) > 0


def test_the_card_states_the_sets_what_each_removed_and_the_thresholds(contaminated_run):
    root, _, sources = contaminated_run
    decided = StageStore(root / "run").table(root / "run" / "decontam").to_pylist()
    rejected = sum(r["status"] == "rejected" for r in decided)
    kept = sum(r["status"] == "kept" for r in decided)
    dataset = root / "run" / "shard" / "dataset"
    stats = json.loads((dataset / "stats.json").read_text())["content"]["decontamination"]
    kept_ids = {r["clip_id"] for r in decided if r["status"] == "kept"}
    removed = {name: sum(counts.get(name, 0) for clip, counts in _expected_drops(root).items() if clip in kept_ids) for name in QUESTIONS}
    for window in _window_samples(root):  # and those of the shipped windows
        for name, items in window["grounding"]["decontaminated"].items():
            removed[name] += items
    assert stats["sets"] == [
        {"name": "bench", "videos": 3, "questions": 3, "clips_removed": rejected, "items_removed": removed["bench"]},
        {"name": "quiz", "videos": 1, "questions": 1, "clips_removed": 0, "items_removed": removed["quiz"]},
    ]
    assert stats["decided_by"] == {"hamming": rejected}
    card = (dataset / "README.md").read_text()
    assert "## Decontamination" in card
    assert f"| bench | 3 | 3 | {rejected} | {removed['bench']} |" in card and f"| quiz | 1 | 1 | 0 | {removed['quiz']} |" in card
    assert "pHash within 6 bits on at least 2 of a clip's 4 frames" in card and "embedding cosine: off" in card
    assert "13 words in a row" in card


def test_the_fingerprints_are_cached_by_content(contaminated_run, tmp_path):
    """The run fingerprinted the four eval videos; the same settings read them back, also for a
    copy of the same bytes under another name; other bytes are fingerprinted anew."""
    root, cfg, _ = contaminated_run
    marker = StageStore(root / "run").completed("decontam")
    assert (marker.fields["eval_fingerprinted"], marker.fields["eval_from_cache"]) == (4, 0)
    index, fields = decontam.eval_index(cfg.decontam, cfg.embed, map_here)
    assert fields == {"eval_fingerprinted": 0, "eval_from_cache": 4}
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(SHARED_VIDEOS / EVAL["city.mpg"], renamed / "another name.mpg")
    transcode(SHARED_VIDEOS / "psd_counter.mp4", renamed / "new.mp4", crf=30, width=320)
    again = cfg.decontam.model_copy(update={"eval_sets": [EvalSet(name="renamed", videos=str(renamed))]})
    renamed_index, fields = decontam.eval_index(again, cfg.embed, map_here)
    assert fields == {"eval_fingerprinted": 1, "eval_from_cache": 1}
    city = index.videos.index(("bench", "city.mpg"))
    assert renamed_index.codes[renamed_index.code_video == 0].tolist() == index.codes[index.code_video == city].tolist()


def test_on_ray_tasks_the_fingerprints_and_decisions_are_the_same(contaminated_run, ray_local, tmp_path):
    """The executor's parallel map on Ray (fingerprints made in tasks, into a fresh cache; clips
    matched in tasks, 5 clips a block) gives the index and the decisions of the in-process run."""
    from vidcurate.pipelines.executors import map_on_ray_tasks

    root, cfg, sources = contaminated_run
    local, _ = decontam.eval_index(cfg.decontam, cfg.embed, map_here)
    fresh = cfg.decontam.model_copy(update={"cache": str(tmp_path / "cache")})
    on_ray, fields = decontam.eval_index(fresh, cfg.embed, map_on_ray_tasks)
    assert fields == {"eval_fingerprinted": 4, "eval_from_cache": 0}
    assert on_ray.videos == local.videos and on_ray.codes.tolist() == local.codes.tolist()
    clips = _clips(root / "run", sources)
    blocks = [clips[i : i + 5] for i in range(0, len(clips), 5)]
    found = [m for block in map_on_ray_tasks(decontam.match_block, blocks, index=on_ray, cfg=fresh) for m in block]
    for clip, match in zip(clips, found):
        row = clip["decided"]
        assert (row["eval_video"], row["eval_time_s"]) == ((on_ray.videos[match.video][1], round(match.time_s, 3)) if match else (None, None))


def test_a_missing_or_unreadable_eval_set_stops_the_stage_before_any_work(contaminated_run, tmp_path):
    """Each bad set is an EvalSetError naming it, raised by the stage's check when decontam
    starts: its last table stays and nothing is fingerprinted."""
    root, cfg, _ = contaminated_run
    good = cfg.decontam.eval_sets[0]
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "notes.mp4").write_text("not a video")
    (tmp_path / "bad.jsonl").write_text('{"question": "fine"}\n{"q": "no question field"}\n')
    bad = {
        "is not a directory, glob, list file": EvalSet(name="gone", videos=str(tmp_path / "missing")),
        "no videos at": EvalSet(name="empty", videos=str(tmp_path / "*.mkv")),
        "notes.mp4 is not a readable video": EvalSet(name="text", videos=str(tmp_path / "set")),
        "bad.jsonl', line 2: no string `question` field": good.model_copy(update={"questions": str(tmp_path / "bad.jsonl")}),
        "No such file": good.model_copy(update={"questions": str(tmp_path / "absent.jsonl")}),
    }
    table = (root / "run" / "decontam" / "part-000000.parquet").read_bytes()
    for expected, eval_set in bad.items():
        with pytest.raises(EvalSetError, match=re.escape(expected)):
            decontam.check_eval_sets(DecontamConfig(eval_sets=[eval_set]))
        wrong = cfg.model_copy(update={"decontam": cfg.decontam.model_copy(update={"eval_sets": [eval_set], "cache": str(tmp_path / "cache")})})
        with pytest.raises(EvalSetError, match=re.escape(expected)):
            Runner(wrong).run_stage("decontam")
        assert not (tmp_path / "cache").exists()
    assert (root / "run" / "decontam" / "part-000000.parquet").read_bytes() == table


def test_doctor_names_a_bad_eval_set(contaminated_run, tmp_path):
    from vidcurate.pipelines.doctor import diagnose

    _, cfg, _ = contaminated_run
    (finding,) = [f for f in diagnose(cfg) if f.check == "eval sets"]
    assert finding.ok and finding.detail == "bench: 3 videos, 3 questions; quiz: 1 videos, 1 questions"
    wrong = cfg.model_copy(update={"decontam": cfg.decontam.model_copy(update={"eval_sets": [EvalSet(name="gone", videos=str(tmp_path / "x"))]})})
    (finding,) = [f for f in diagnose(wrong) if f.check == "eval sets"]
    assert not finding.ok and "'gone'" in finding.detail and finding.fix


# ---- the rules, on planted fingerprints --------------------------------------------------------

D = 32


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _index(codes: list[list[int]], windows: np.ndarray | None = None) -> EvalIndex:
    """Two eval videos (set s): frame i of video v at i seconds; windows of video 1."""
    times = [float(i) for frames in codes for i in range(len(frames))]
    owners = [v for v, frames in enumerate(codes) for _ in frames]
    emb = np.zeros((0, 0), np.float32) if windows is None else windows.astype(np.float32)
    return EvalIndex(
        videos=(("s", "a.mp4"), ("s", "b.mp4")), codes=np.asarray([c for f in codes for c in f], np.int64),
        code_video=np.asarray(owners), code_times=np.asarray(times, np.float32), windows=emb,
        window_video=np.ones(len(emb), np.int64), window_times=np.arange(len(emb), dtype=np.float32) * 2,
    )  # fmt: skip


def test_the_phash_rule_needs_min_frames_of_one_video_and_names_the_closest_frame():
    rng = np.random.default_rng(3)
    a, b = rng.integers(-(2**63), 2**63 - 1, size=(2, 6))
    index = _index([a.tolist(), b.tolist()])
    cfg = DecontamConfig(max_hamming=6, near_cosine=None, min_frames=2)
    clips = {  # clip: its frames' hashes
        0: [a[1] ^ 0b111, a[2] ^ 0b1, 12345],  # two frames of a: matched, at a[2] (1 bit)
        1: [a[1] ^ 0b11, b[4] ^ 0b1],  # one frame each of a and b: not enough of either
        2: [b[5] ^ 0b1111111],  # one frame, 7 bits away: no match
        3: [b[3] ^ 0b11],  # its only frame with a picture matches: min_frames is capped by what it has
    }
    codes = np.asarray([c for frames in clips.values() for c in frames], np.int64)
    owners = np.asarray([clip for clip, frames in clips.items() for _ in frames])
    pictured = np.asarray([len(frames) for frames in clips.values()])
    found = decontam.phash_matches(codes, owners, pictured, index, cfg)
    assert found == {
        0: decontam.Match(0, 2.0, "hamming", 1.0, 2),
        3: decontam.Match(1, 3.0, "hamming", 2.0, 1),
    }


def test_the_cosine_rule_takes_what_the_phash_missed():
    """A clip whose frames the pHash does not find, but whose embedding is at near_cosine to an
    eval window, is rejected by cosine, at the window's start; below it, kept."""
    rng = np.random.default_rng(4)
    windows = _unit(rng.normal(size=(5, D)))
    near = _unit(windows[3] + 0.1 * _unit(rng.normal(size=D)))
    far = _unit(rng.normal(size=D))
    index = _index([[1, 2], [3]], windows)
    clips = [{"clip_id": f"c{i}", "image_emb": e.astype(np.float16).tobytes()} for i, e in enumerate((near, far))]
    cfg = DecontamConfig(max_hamming=6, near_cosine=0.98)
    cosine = float(decontam.embeddings(clips[:1])[0] @ windows[3])
    assert cosine >= 0.98
    (match, nothing) = decontam.match_block(clips, index, cfg.model_copy(update={"max_hamming": None}))
    assert nothing is None and match == decontam.Match(1, 6.0, "cosine", pytest.approx(cosine, abs=1e-5))


def test_flat_frames_carry_no_hash():
    """Black or flat frames (fades, title colours) would all match each other: no pHash."""
    rng = np.random.default_rng(5)
    picture = np.kron(rng.integers(0, 256, (9, 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    black = np.zeros_like(picture)
    grey = np.full_like(picture, 128) + rng.integers(0, 3, picture.shape).astype(np.uint8)
    assert decontam.frame_hashes(black, [(0.0, 0.0)]) == [None] and decontam.frame_hashes(grey, [(0.0, 0.0)]) == [None]
    hashes = decontam.frame_hashes(picture, decontam.CROPS)
    assert None not in hashes and len(set(hashes)) == len(decontam.CROPS)


def test_questions_match_on_13_words_in_a_row_whatever_the_case_punctuation_or_placeholders():
    sets = [("bench", decontam.ngrams("One two three four five six seven eight nine ten eleven twelve thirteen?", 13))]
    items = [
        {"task": "t", "question": "When does ONE two, three four five six seven eight nine ten eleven twelve thirteen happen?"},
        {"task": "t", "question": "What happens during {span0} one two three four five six seven eight nine ten eleven twelve?"},
        {"task": "t", "question": "one two three four five six {span0} seven eight nine ten eleven twelve thirteen"},
    ]
    qa, dropped = decontam.without_eval_questions(json.dumps(items), sets, 13)
    assert dropped == {"bench": 2} and json.loads(qa) == [items[1]]
    untouched = json.dumps(items[1:2])
    assert decontam.without_eval_questions(untouched, sets, 13) == (untouched, {})


def test_eval_windows_are_embedded_as_embed_embeds_a_clip():
    """With near_cosine, each window is the unit mean of the embed model's (tiny here) embeddings
    of `embed.keyframes` consecutive frames, sampled every window_s / keyframes seconds."""
    from vidcurate.stages.embed import EmbedConfig, make_encoder

    video = str(SHARED_VIDEOS / "moviepy_chaplin.mp4")
    embed = EmbedConfig(keyframes=4)
    parts = decontam.fingerprint_parts(DecontamConfig(max_hamming=None, near_cosine=0.99, window_s=2.0), embed)
    found = decontam.fingerprint_video(video, parts, embed.model_dump_json(exclude={"resources"}))
    times, frames = zip(*((t, rgb) for t, rgb, _ in decontam.sampled_frames(video, {"windows": 0.5})))
    assert np.all(np.abs(np.diff(times) - 0.5) <= 0.04 + 1e-6) and len(times) == 20  # every 0.5 s of 9.6 s, within a frame (25 fps)
    each = make_encoder(embed).encode([np.stack(frames)], [])[0]
    expected = _unit(np.stack([each[i : i + 4].mean(axis=0) for i in range(len(times) - 3)]))
    assert found.window_times.tolist() == pytest.approx(times[:-3]) and len(found.codes) == 0
    np.testing.assert_allclose(found.windows.astype(np.float32), expected, atol=2e-3)


def test_a_changed_eval_set_changes_the_stage_fingerprint(contaminated_run):
    """The config alone does not say what the eval sets hold: a question added under the same
    config must make a re-run check the clips again."""
    root, cfg, _ = contaminated_run
    runner = Runner(cfg)
    upstream = root / "run" / "ground"
    before = runner.fingerprint("decontam", upstream)
    assert before == runner.fingerprint("decontam", upstream)
    questions = Path(cfg.decontam.eval_sets[1].questions)
    original = questions.read_text()
    try:
        questions.write_text(original + json.dumps({"question": "A new question in the benchmark?"}) + "\n")
        assert runner.fingerprint("decontam", upstream) != before
    finally:
        questions.write_text(original)
