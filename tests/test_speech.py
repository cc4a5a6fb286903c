"""The speech stage on real audio: videos whose phrases espeak-ng speaks at known times (over
silence or noise), cut by the real split stage, heard by silero's voice-activity detector and
pocketsphinx's bundled US-English model, both real weights from their wheels. The recogniser must
place every word inside the span its phrase was spoken in (+-0.3 s), hear no voice in the silence,
and its text must hold the planted key words. The Whisper backends run a random toy Whisper (the
real code paths); the `openai` backend talks to a real HTTP server (tests/transcription_server.py)."""

from __future__ import annotations

import json

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import make_spoken
from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.ledger import known
from vidcurate.pipelines.runner import Runner
from vidcurate.pipelines.store import StageStore, read_parts
from vidcurate.schemas.sample import build_window_sample
from vidcurate.schemas.tables import KEPT, SPEECH
from vidcurate.stages.ground import GroundConfig, windows
from vidcurate.stages.probe import ProbeConfig, probe_video
from vidcurate.stages.speech import SpeechConfig, SpeechWorker, decode_batch, splice, to_clip, transcript
from vidcurate.stages.split import SplitConfig, split_video

pytestmark = pytest.mark.skipif(not make_spoken.have_espeak(), reason="no espeak-ng on this machine: apt-get install espeak-ng")
TOLERANCE_S = 0.3
KEY_WORDS = ["weather", "hospital", "thank"]  # one a phrase, each heard in silence and in noise


def _clips(path, media) -> list[dict]:
    video = probe_video(str(path), ProbeConfig(), None)
    return [r for r in split_video(video, media, SplitConfig()) if r["status"] == KEPT]


def _hear(clips: list[dict], cfg: SpeechConfig, worker: SpeechWorker | None = None) -> list[dict]:
    """The stage's decode step and core on clip rows, as the executor runs them."""
    rows = [{"clip_audio": None, "audio_error": None, **c} for c in clips]  # as the clip table holds them
    out = (worker or SpeechWorker(cfg))(decode_batch(pa.Table.from_pylist(rows), cfg)).to_pylist()
    return [{**r, "speech": json.loads(r["speech"]) if r["speech"] else None} for r in out]


@pytest.fixture(scope="module")
def pocketsphinx() -> SpeechWorker:
    return SpeechWorker(SpeechConfig(backend="pocketsphinx"))


@pytest.fixture(scope="module", params=[0.0, 0.01], ids=["silence", "noise"])
def spoken(request, tmp_path_factory) -> tuple[list[dict], list[dict]]:
    """Clips of a video with three phrases, one a shot, and the phrases' truth."""
    root = tmp_path_factory.mktemp("spoken")
    path, truth = make_spoken.make(root / "videos", noise=request.param)
    return _clips(path, root / "media"), truth


def _phrase(clip: dict, truth: list[dict]) -> dict:
    """The phrase spoken in the clip, on the clip's clock."""
    (phrase,) = [p for p in truth if clip["start_s"] <= p["start_s"] < clip["end_s"]]
    return {**phrase, "start_s": phrase["start_s"] - clip["start_s"], "end_s": phrase["end_s"] - clip["start_s"]}


def test_pocketsphinx_hears_the_planted_words_where_they_were_spoken(spoken, pocketsphinx):
    clips, truth = spoken
    heard = _hear(clips, pocketsphinx.cfg, pocketsphinx)
    assert len(heard) == len(truth) == 3
    text = " ".join(w["word"] for r in heard for w in r["speech"]["words"])
    assert all(word in text.split() for word in KEY_WORDS), text
    for clip, row in zip(clips, heard):
        said, speech = _phrase(clip, truth), row["speech"]
        assert row["status"] == KEPT and not speech["no_speech"] and speech["language"] == "en"
        within = lambda s: said["start_s"] - TOLERANCE_S <= s["start_s"] <= s["end_s"] <= said["end_s"] + TOLERANCE_S  # noqa: E731
        assert speech["words"] and all(within(w) for w in speech["words"]), (said, speech["words"])
        assert speech["voice_activity"] and all(within(v) for v in speech["voice_activity"]), (said, speech["voice_activity"])
        assert speech["segments"] and all(within(s) for s in speech["segments"])
        assert speech["words"][0]["start_s"] < said["start_s"] + 0.5 and speech["words"][-1]["end_s"] > said["end_s"] - 0.5  # the whole phrase


def test_a_window_says_what_its_clips_say_on_its_own_clock(spoken, pocketsphinx):
    """A window over the three spoken clips carries what was heard in them on the window's clock
    (its mp4 is their frames and audio end to end): every word inside the span its phrase was
    spoken in, counted from the window's start (+-0.3 s), the phrases in order, in its sample."""
    clips, truth = spoken
    heard = _hear(clips, pocketsphinx.cfg, pocketsphinx)
    rows = [{**c, "speech": json.dumps(h["speech"]), "caption": "", "events": "[]", "qa": "[]", "model": "m"} for c, h in zip(clips, heard)]
    (window,) = windows(rows, GroundConfig())
    speech, start = window["speech"], clips[0]["start_s"]
    assert not speech["no_speech"] and speech["language"] == "en"
    assert [s["text"] for s in speech["segments"]] == [h["speech"]["segments"][0]["text"] for h in heard]
    spoken_in = [(p["start_s"] - start - TOLERANCE_S, p["end_s"] - start + TOLERANCE_S) for p in truth]
    for heard_as in ("words", "segments", "voice_activity"):
        phrase_of = [next(i for i, (a, b) in enumerate(spoken_in) if a <= w["start_s"] <= w["end_s"] <= b) for w in speech[heard_as]]
        assert phrase_of == sorted(phrase_of) and set(phrase_of) == {0, 1, 2}, (heard_as, speech[heard_as], spoken_in)
    assert [q["task"] for q in window["qa"]] == ["transcribed_speech_generation"]
    video = probe_video(clips[0]["source_uri"], ProbeConfig(), None)
    sample = build_window_sample(window, {"width": 64, "height": 64, "sha256": "0" * 64}, video, ["probe", "split", "speech", "ground"])
    assert sample["speech"] == speech


def test_a_silent_track_and_no_track_are_no_speech(tmp_path, pocketsphinx):
    video = make_spoken.frames(6.0, [3.0])
    silent = _clips(make_spoken.write(tmp_path / "silent.mp4", video, np.zeros(6 * make_spoken.RATE, np.float32)), tmp_path / "a")
    mute = _clips(make_spoken.write(tmp_path / "mute.mp4", video, None), tmp_path / "b")
    assert all(c["clip_audio"] == "aac" for c in silent) and all(c.get("clip_audio") is None for c in mute)
    for row in _hear(silent + mute, pocketsphinx.cfg, pocketsphinx):
        assert row["status"] == KEPT and row["speech"]["no_speech"] and row["speech"]["language"] is None
        assert row["speech"]["voice_activity"] == row["speech"]["words"] == row["speech"]["segments"] == []


def test_undecodable_audio_is_rejected_with_its_code(tmp_path, pocketsphinx):
    video = make_spoken.frames(6.0, [3.0])
    clips = _clips(make_spoken.write(tmp_path / "bad.mp4", video, np.zeros(6 * make_spoken.RATE, np.float32), corrupt_audio=True), tmp_path)
    assert clips and all(c["audio_error"].startswith("undecodable: InvalidDataError") for c in clips)
    with av.open(clips[0]["clip_uri"]) as clip:
        assert not clip.streams.audio  # the video is cut all the same, without the audio it could not decode
    for row in _hear(clips, pocketsphinx.cfg, pocketsphinx):
        assert row["status"] == "rejected" and row["reason"].startswith("audio: undecodable") and known("speech", "rejected", row["reason"])


@pytest.fixture(scope="module")
def spoken_inputs(tmp_path_factory):
    """A folder holding the video of three phrases spoken in silence, and their truth."""
    root = tmp_path_factory.mktemp("inputs")
    path, truth = make_spoken.make(root)
    (root / "spoken.json").unlink()
    return root, truth


@pytest.fixture(scope="module")
def quiet(spoken_inputs, tmp_path_factory) -> tuple[list[dict], list[dict]]:
    """The clips of the video spoken in silence, and the phrases' truth."""
    inputs, truth = spoken_inputs
    return _clips(inputs / "spoken.mp4", tmp_path_factory.mktemp("quiet")), truth


@pytest.mark.parametrize("backend", ["transformers", "faster-whisper"])
def test_the_whisper_backends_run_the_toy_whisper_and_keep_its_times_in_the_clip(quiet, backend):
    """A random Whisper hears noise: what it says is noise, but it comes back as a transcript on
    the clip's clock, the same on every run. faster-whisper runs it converted by CTranslate2's own converter."""
    clips, _ = quiet
    cfg = load_config(None, profile="tiny", stages=["speech"], speech={"backend": backend}).speech
    assert cfg.model is None and cfg.max_new_tokens == 16
    worker = SpeechWorker(cfg)
    first, second = _hear(clips, cfg, worker), _hear(clips, cfg, worker)
    assert first == second
    for clip, row in zip(clips, first):
        speech, duration = row["speech"], clip["end_s"] - clip["start_s"]
        assert row["status"] == KEPT and row["speech_model"].endswith("tiny-whisper" + ("-ct2" if backend == "faster-whisper" else ""))
        assert isinstance(speech["language"], str) and len(speech["language"]) <= 3
        for item in speech["words"] + speech["segments"]:
            assert 0 <= item["start_s"] <= item["end_s"] <= duration


def test_the_openai_backend_hears_through_the_server(quiet):
    from transcription_server import TranscriptionServer

    clips, truth = quiet
    with TranscriptionServer() as server:
        heard = _hear(clips, SpeechConfig(backend="openai", openai={"base_url": server.base_url}))
    assert [r["status"] for r in heard] == [KEPT] * 3 and len(server.requests) == 3  # voiced clips only, one request each
    assert server.requests[0]["response_format"] == [b"verbose_json"] and server.requests[0]["timestamp_granularities[]"] == [b"word", b"segment"]
    for clip, row in zip(clips, heard):
        said = _phrase(clip, truth)
        assert row["speech"]["language"] == "en"  # the server's "english"
        assert all(said["start_s"] - TOLERANCE_S <= w["start_s"] <= w["end_s"] <= said["end_s"] + TOLERANCE_S for w in row["speech"]["words"])


def test_splice_maps_every_time_back_to_where_it_was_said():
    samples = np.zeros(10 * 16000, np.float32)
    voice = [[1.0, 2.0], [5.0, 5.5]]
    spliced, pieces = splice(samples, voice)
    assert len(spliced) == round((1.0 + 0.3 + 0.5) * 16000)  # the voice, one pause between
    assert to_clip(0.25, pieces) == pytest.approx(1.25) and to_clip(1.3 + 0.25, pieces) == pytest.approx(5.25)
    assert to_clip(1.05, pieces) == pytest.approx(2.0) and to_clip(1.25, pieces) == pytest.approx(5.0)  # a pause: the nearer edge
    heard = {"words": [{"start_s": 0.1, "end_s": 0.4, "word": "one"}, {"start_s": 1.4, "end_s": 1.6, "word": "two"}, {"start_s": 9.0, "end_s": 9.5, "word": "after"}], "segments": None, "language": "en"}
    spoken = transcript(heard, pieces, voice, 10.0, "m")
    assert [w["word"] for w in spoken["words"]] == ["one", "two"]  # nothing after the audio it was given
    assert spoken["segments"] == [{"start_s": 1.1, "end_s": 1.4, "text": "one"}, {"start_s": 5.1, "end_s": 5.3, "text": "two"}]


SETTINGS = {"stages": ["speech"], "executor": "in_process", "split": {"max_clip_s": 10.0}}


def test_a_run_ships_each_clips_audio_and_what_is_said_in_it(tmp_path, spoken_inputs):
    """profile tiny hears with pocketsphinx: the shards carry the audio track and the transcript,
    the card says how much is speech and in which language, and a second run ships the same bytes."""
    from conftest import dataset_digests

    inputs, truth = spoken_inputs
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        stats = Runner(load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(run_dir), **SETTINGS)).run_all()
    assert dataset_digests(runs[0]) == dataset_digests(runs[1])
    dataset = runs[0] / "shard" / "dataset"
    samples = [json.loads(r["json"]) for part in sorted(dataset.glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
    assert len(samples) == stats["samples"] == 3
    for sample in samples:
        said = _phrase({"start_s": sample["provenance"]["source_start_s"], "end_s": sample["provenance"]["source_end_s"]}, truth)
        assert not sample["speech"]["no_speech"] and [s["text"] for s in sample["speech"]["segments"]] == [said["text"]]
    speech = stats["content"]["speech"]
    assert speech["clips_with_speech"] == 3 and speech["languages"] == {"en": 3} and speech["speech_hours"] > 4 / 3600
    card = (dataset / "README.md").read_text()
    assert "## Speech" in card and "| en | 3 |" in card and "| speech | pocketsphinx/en-us | pocketsphinx | tiny | no |" in card
    marker = StageStore.marker(runs[0] / "speech")
    assert marker.fields["voiced_s"] > 4 and marker.cost["cpu_s_per_video_h"] > 0


def test_a_server_outage_fails_the_clips_transiently_and_the_next_run_hears_them(tmp_path, spoken_inputs):
    from transcription_server import TranscriptionServer

    inputs, _ = spoken_inputs
    server = TranscriptionServer()  # its port held, nobody answering: the server is down
    speech = {"backend": "openai", "openai": {"base_url": server.base_url, "max_retries": 1, "backoff_s": 0.01}}
    cfg = load_config(None, profile="tiny", inputs=str(inputs), run_dir=str(tmp_path / "run"), **{**SETTINGS, "speech": speech, "failures": {"max_failed_fraction": 1.0}})
    Runner(cfg).run_all()
    rows = read_parts(tmp_path / "run" / "speech", SPEECH).to_pylist()
    assert len(rows) == 3 and all(r["status"] == "failed" and r["transient"] and r["reason"].startswith("backend: BackendError") for r in rows)
    with server:
        stats = Runner(cfg).run_all()
    rows = read_parts(tmp_path / "run" / "speech", SPEECH).to_pylist()
    assert all(r["status"] == KEPT and r["tries"] == 2 for r in rows) and stats["samples"] == 3 and len(server.requests) == 3


def test_the_caption_prompt_gives_what_is_said_with_its_times(quiet, pocketsphinx):
    from vidcurate.stages.caption import CaptionConfig, build_prompt, decode_clips

    clips, truth = quiet
    heard = _hear(clips[:1], pocketsphinx.cfg, pocketsphinx)[0]["speech"]
    clip = {**clips[0], "speech": json.dumps(heard)}
    for use_speech in (True, False):
        (item,) = decode_clips([clip], CaptionConfig(use_speech=use_speech, frames=2))
        assert (item["speech"] is not None) == use_speech
    said = heard["segments"][0]
    text = build_prompt("c", [], [0.0], 5.0, CaptionConfig(), 0, heard).parts[-1][1]
    assert f"[{said['start_s']:.2f}-{said['end_s']:.2f} s] {truth[0]['text']}" in text
    assert "Nobody speaks" in build_prompt("c", [], [0.0], 5.0, CaptionConfig(), 0, {**heard, "no_speech": True}).parts[-1][1]
    assert "speak" not in build_prompt("c", [], [0.0], 5.0, CaptionConfig(), 0).parts[-1][1].lower()
    with pytest.raises(ValueError, match="caption's settings need stage 'speech' before it"):  # when the config loads
        load_config(None, stages=["caption"], caption={"use_speech": True})
    assert load_config(None, stages=["speech", "caption"], caption={"use_speech": True}).caption.use_speech


def test_quality_scores_speech_and_rejects_clips_spoken_in_another_language(quiet, pocketsphinx, tmp_path):
    from vidcurate.stages.quality import QualityConfig, decide, score_batch

    clips, _ = quiet
    heard = _hear(clips, pocketsphinx.cfg, pocketsphinx)
    mute = {**clips[0], "clip_id": "mute", "speech": json.dumps({**heard[0]["speech"], "no_speech": True, "language": None, "voice_activity": []})}
    merged = [{**c, "speech": json.dumps(r["speech"])} for c, r in zip(clips, heard)] + [mute]
    scored = score_batch(pa.Table.from_pylist(merged), 4, None, False).to_pylist()
    fractions = [json.loads(r["scores"])["speech_fraction"] for r in scored]
    voiced = [sum(v["end_s"] - v["start_s"] for v in r["speech"]["voice_activity"]) for r in heard]
    assert fractions == pytest.approx([v / (c["end_s"] - c["start_s"]) for v, c in zip(voiced, clips)] + [0.0], abs=1e-3)
    assert [r["speech_language"] for r in scored] == ["en"] * 3 + [None]
    rules = QualityConfig(rules=[]).rules
    assert all(r["status"] == KEPT for r in decide(scored, rules, [], ["en"]))
    decided = decide(scored, rules, [], ["de", "fr"])
    assert [r["status"] for r in decided] == ["rejected"] * 3 + [KEPT]  # nobody speaks in the last: no language to refuse
    assert all(r["reason"] == "language: language=en (not de, fr)" and known("quality", "rejected", r["reason"]) for r in decided[:3])
    with pytest.raises(ValueError, match="quality's settings need stage 'speech' before it"):
        load_config(None, stages=["embed", "quality"], quality={"languages": ["en"]})
