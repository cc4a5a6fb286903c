"""Speech stage: each clip's audio -> voice activity, a transcript with segment and word times on
the clip's clock, its language and a no-speech flag.

Silero's voice-activity detector (weights in its wheel) finds where someone speaks; only those
stretches, laid end to end with a short pause between them, go to the recogniser, and every time
it answers is mapped back to the clip's clock. Silence and music are never transcribed, so a
recogniser cannot hallucinate words into them, and a clip with no voice costs no recognition.

Recognisers (`speech.backend`): `faster-whisper` (CTranslate2; the default), `transformers`
(Whisper), `openai` (an OpenAI-compatible `/v1/audio/transcriptions` server, as vLLM serves
Whisper) and `pocketsphinx` (US English; its acoustic and language models ship in its wheel).

A clip without an audio track, or with no voice in it, gets `no_speech: true` and is kept. Audio
that does not decode is rejected (`audio`); a server that cannot be reached fails the clip
transiently (`backend`), for the next run to retry.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import wave
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Literal

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from vidcurate.schemas.tables import FAILED, KEPT, REJECTED, SPEECH, to_table
from vidcurate.stages.audio import SPEECH_RATE, speech_samples
from vidcurate.stages.caption import EndpointConfig
from vidcurate.stages.contract import Stage
from vidcurate.stages.failures import failed
from vidcurate.stages.models import DEFAULT_SPEECH_MODELS, tiny_whisper, tiny_whisper_ct2
from vidcurate.stages.settings import StageResources, StrictModel

Backend = Literal["faster-whisper", "transformers", "openai", "pocketsphinx"]


class SpeechConfig(StrictModel):
    backend: Backend = Field("faster-whisper", description="the recogniser (profile tiny: pocketsphinx, real and offline)")
    model: str | None = Field(
        None, description="Whisper backends: a model name, hub id or local folder; unset: the profile's (default: "
        "large-v3-turbo; tiny: a random toy Whisper built locally). pocketsphinx: its bundled US-English model"
    )
    language: str | None = Field(None, description="the spoken language's code (en, de, ...); unset: detected (pocketsphinx: en)")
    device: str = Field("auto", description="Whisper backends: auto, cpu, cuda, cuda:1")
    compute_type: str = Field("auto", description="faster-whisper: auto (float16 on a GPU, int8 on a CPU), float32, ...")
    beam_size: int = Field(5, ge=1, description="Whisper backends: beams of the decoder")
    max_new_tokens: int | None = Field(None, ge=1, description="Whisper backends: tokens per 30 s window at most; unset: the model's")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="silero: speech probability above which a 32 ms frame is voice")
    min_speech_s: float = Field(0.25, ge=0, description="shorter voice is ignored")
    min_silence_s: float = Field(0.5, ge=0, description="shorter pauses do not split a stretch of voice")
    speech_pad_s: float = Field(0.1, ge=0, description="each stretch of voice is widened by this on both sides")
    openai: EndpointConfig = EndpointConfig()
    resources: StageResources = StageResources(batch_size=8)

    @model_validator(mode="after")
    def _backend(self) -> SpeechConfig:
        if self.backend == "pocketsphinx" and self.model is not None:
            raise ValueError("speech.backend pocketsphinx uses its bundled US-English model: leave speech.model unset")
        if self.backend == "pocketsphinx" and self.language not in (None, "en"):
            raise ValueError(f"speech.backend pocketsphinx recognises English only, not {self.language!r}")
        return self


STAGE = "speech"
WHISPER_WINDOW_S = 30  # Whisper hears 30 s at a time: longer audio goes through the pipeline's chunking
PAUSE_S = 0.3  # silence between two stretches of voice laid end to end: the recogniser hears a pause


def no_speech(model: str, voice: list[list[float]] | None = None) -> dict:
    """The transcript of a clip nobody speaks in (no track, no voice, or no word recognised)."""
    return {"model": model, "language": None, "no_speech": True, "voice_activity": _spans(voice or []), "segments": [], "words": []}


def _spans(pairs) -> list[dict]:
    return [{"start_s": round(a, 3), "end_s": round(b, 3)} for a, b in pairs]


# Voice activity

@lru_cache(maxsize=1)
def _silero():
    """Silero VAD's ONNX model from its wheel, once per process. Importing silero_vad sets torch to
    one thread for the whole process: the setting is put back."""
    import torch

    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad

    torch.set_num_threads(threads)
    return load_silero_vad(onnx=True)


def voice_activity(samples: np.ndarray, cfg: SpeechConfig) -> list[list[float]]:
    """[start_s, end_s] of each stretch of voice in 16 kHz mono samples."""
    import torch
    from silero_vad import get_speech_timestamps

    found = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), _silero(), threshold=cfg.vad_threshold,
        sampling_rate=SPEECH_RATE, min_speech_duration_ms=round(cfg.min_speech_s * 1000),
        min_silence_duration_ms=round(cfg.min_silence_s * 1000), speech_pad_ms=round(cfg.speech_pad_s * 1000),
    )  # fmt: skip
    return [[s["start"] / SPEECH_RATE, s["end"] / SPEECH_RATE] for s in found]


def splice(samples: np.ndarray, voice: list[list[float]]) -> tuple[np.ndarray, list[list[float]]]:
    """The voiced stretches end to end, PAUSE_S of silence between them, and where each piece
    came from: [its start on the clip's clock, its start in the splice, its length]."""
    pause = np.zeros(round(PAUSE_S * SPEECH_RATE), np.float32)
    parts, pieces, at = [], [], 0
    for start, end in voice:
        piece = samples[round(start * SPEECH_RATE) : round(end * SPEECH_RATE)]
        pieces.append([start, at / SPEECH_RATE, len(piece) / SPEECH_RATE])
        parts += [piece, pause]
        at += len(piece) + len(pause)
    return (np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)), pieces


def to_clip(t: float, pieces: list[list[float]]) -> float:
    """A time in the splice on the clip's clock: inside a piece, where it was said; in a pause,
    the nearer edge of the pieces around it."""
    for i, (start, at, length) in enumerate(pieces):
        last = i == len(pieces) - 1
        if last or t < at + length + PAUSE_S / 2:
            return start + min(max(t - at, 0.0), length)
    return 0.0


# Recognisers: transcribe(16 kHz mono float32, language) -> {"words", "segments" (None: not
# given), "language"}, times in the samples given.

class Pocketsphinx:
    """CMU PocketSphinx with the US-English acoustic model, dictionary and language model in its wheel."""

    name = "pocketsphinx/en-us"
    FILLERS = re.compile(r"^(<s>|</s>|<sil>|\[[A-Z]+\])$")  # utterance marks, silence, noise
    FRAMES_PER_S = 100

    def __init__(self, _cfg: SpeechConfig):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SPEECH_RATE, loglevel="FATAL")

    def transcribe(self, samples: np.ndarray, _language: str | None) -> dict:
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        words = [
            {"start_s": s.start_frame / self.FRAMES_PER_S, "end_s": (s.end_frame + 1) / self.FRAMES_PER_S, "word": re.sub(r"\(\d+\)$", "", s.word)}
            for s in self.decoder.seg()
            if not self.FILLERS.match(s.word)
        ]
        return {"words": words, "segments": None, "language": "en"}


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersWhisper:
    """Whisper through transformers' speech-recognition pipeline: word times from its
    cross-attention alignment, the language from its language token."""

    def __init__(self, cfg: SpeechConfig):
        from transformers import pipeline

        self.cfg = cfg
        self.name = cfg.model or str(tiny_whisper())
        device = _device(cfg.device)
        dtype = "float16" if device.startswith("cuda") else "float32"
        self.pipe = pipeline("automatic-speech-recognition", model=self.name, device=device, dtype=dtype)

    def transcribe(self, samples: np.ndarray, language: str | None) -> dict:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        generate = {"task": "transcribe", "language": language, "num_beams": self.cfg.beam_size}
        if self.cfg.max_new_tokens:
            generate["max_new_tokens"] = self.cfg.max_new_tokens
        longer = {"chunk_length_s": WHISPER_WINDOW_S} if len(samples) > WHISPER_WINDOW_S * SPEECH_RATE else {}
        heard = self.pipe(
            {"raw": samples, "sampling_rate": SPEECH_RATE}, return_timestamps="word", return_language=True,
            generate_kwargs=generate, **longer,
        )  # fmt: skip
        words = [{"start_s": c["timestamp"][0], "end_s": c["timestamp"][1], "word": c["text"]} for c in heard["chunks"] if c["timestamp"][0] is not None]
        spoken = next((c.get("language") for c in heard["chunks"] if c.get("language")), None)
        return {"words": words, "segments": None, "language": TO_LANGUAGE_CODE.get(spoken, spoken)}


class FasterWhisper:
    """Whisper on CTranslate2 (faster-whisper): segments, and word times from its alignment heads."""

    def __init__(self, cfg: SpeechConfig):
        from faster_whisper import WhisperModel

        self.cfg = cfg
        self.name = cfg.model or str(tiny_whisper_ct2())
        device = _device(cfg.device)
        compute = cfg.compute_type if cfg.compute_type != "auto" else "float16" if device.startswith("cuda") else "int8"
        where, _, index = device.partition(":")
        self.model = WhisperModel(self.name, device=where, device_index=int(index or 0), compute_type=compute, cpu_threads=_threads(cfg))

    def transcribe(self, samples: np.ndarray, language: str | None) -> dict:
        options = {"max_new_tokens": self.cfg.max_new_tokens} if self.cfg.max_new_tokens else {}
        found, info = self.model.transcribe(
            samples, language=language, beam_size=self.cfg.beam_size, word_timestamps=True, vad_filter=False,
            condition_on_previous_text=False, temperature=0.0, **options,  # no sampled fallback: re-runs hear the same
        )  # fmt: skip
        segments, words = [], []
        for segment in found:
            segments.append({"start_s": segment.start, "end_s": segment.end, "text": segment.text})
            words += [{"start_s": w.start, "end_s": w.end, "word": w.word} for w in segment.words or []]
        return {"words": words, "segments": segments, "language": info.language}


def _threads(cfg: SpeechConfig) -> int:
    """CTranslate2's CPU threads: the CPUs the stage's actor holds (0: its own default)."""
    return int(cfg.resources.num_cpus or 0)


class OpenAITranscriptions:
    """An OpenAI-compatible `/audio/transcriptions` server (vLLM serving Whisper, OpenAI's API):
    the clip's voiced audio as a WAV upload, `verbose_json` with word and segment times back.
    Retries back off as the captioner's do; an outage after them fails the clip transiently."""

    def __init__(self, cfg: SpeechConfig):
        from vidcurate.stages.captioners import http_client

        self.cfg = cfg
        self.name = cfg.model or DEFAULT_SPEECH_MODELS["openai"]
        self.url = cfg.openai.base_url.rstrip("/") + "/audio/transcriptions"
        self.client = http_client(cfg.openai.api_key_env, cfg.openai.timeout_s)

    def transcribe(self, samples: np.ndarray, language: str | None) -> dict:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        from vidcurate.stages.captioners import post_retrying

        form = {"model": self.name, "response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"], "temperature": "0"}
        if language:
            form["language"] = language
        endpoint = self.cfg.openai
        answer = post_retrying(self.client, self.url, endpoint.max_retries, endpoint.backoff_s, data=form, files={"file": ("clip.wav", wav_bytes(samples), "audio/wav")}).json()
        words = [{"start_s": w["start"], "end_s": w["end"], "word": w["word"]} for w in answer.get("words") or []]
        segments = [{"start_s": s["start"], "end_s": s["end"], "text": s["text"]} for s in answer.get("segments") or []]
        if not segments and answer.get("text", "").strip() and not words:
            segments = [{"start_s": 0.0, "end_s": len(samples) / SPEECH_RATE, "text": answer["text"]}]  # a server that gives text only
        spoken = answer.get("language")
        return {"words": words, "segments": segments or None, "language": TO_LANGUAGE_CODE.get(spoken, spoken)}


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM WAV: what every transcription server accepts."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


RECOGNISERS = {"faster-whisper": FasterWhisper, "transformers": TransformersWhisper, "openai": OpenAITranscriptions, "pocketsphinx": Pocketsphinx}


def make_recogniser(cfg: SpeechConfig):
    return RECOGNISERS[cfg.backend](cfg)


# The transcript on the clip's clock

def transcript(heard: dict, pieces: list[list[float]], voice: list[list[float]], duration_s: float, model: str) -> dict:
    """What the recogniser heard in the splice, on the clip's clock: words and segments that start
    inside the audio it was given, mapped back and kept within the clip; segments, where the
    recogniser gives none, are the words of each stretch of voice."""
    spliced_s = pieces[-1][1] + pieces[-1][2]

    def placed(items: list[dict], text: str) -> list[dict]:
        out = []
        for item in items:
            start, end = item["start_s"], item["end_s"] if item["end_s"] is not None else item["start_s"]
            if start >= spliced_s or not str(item[text]).strip():
                continue
            a, b = (min(max(to_clip(t, pieces), 0.0), duration_s) for t in (start, max(start, end)))
            out.append({"start_s": round(a, 3), "end_s": round(b, 3), text: str(item[text]).strip()})
        return out

    words = placed(heard["words"], "word")
    segments = placed(heard["segments"], "text") if heard["segments"] is not None else _by_voice(words, voice)
    if not words and not segments:
        return no_speech(model, voice)
    return {"model": model, "language": heard["language"], "no_speech": False, "voice_activity": _spans(voice), "segments": segments, "words": words}


def _by_voice(words: list[dict], voice: list[list[float]]) -> list[dict]:
    """One segment per stretch of voice, of the words that start in it."""
    groups: dict[int, list[dict]] = {}
    for word in words:
        index = next((i for i, (_, end) in enumerate(voice) if word["start_s"] < end), len(voice) - 1)
        groups.setdefault(index, []).append(word)
    return [
        {"start_s": group[0]["start_s"], "end_s": max(w["end_s"] for w in group), "text": " ".join(w["word"] for w in group)}
        for _, group in sorted(groups.items())
    ]


# The stage: a CPU decode step (audio, voice activity, splice) ahead of the recogniser

def decode_clip(clip: dict, cfg: SpeechConfig) -> dict:
    """One clip's voiced audio, spliced, and where its pieces came from; or the row's outcome where
    there is nothing to recognise (no track, no voice, audio that does not decode)."""
    item = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "duration_s": clip["end_s"] - clip["start_s"]}
    item |= {"voiced": None, "pieces": None, "voice": None, "outcome": None}
    if clip.get("audio_error"):
        return item | {"outcome": {"status": REJECTED, "reason": f"audio: {clip['audio_error']}"}}
    if not clip.get("clip_audio"):
        return item | {"voice": "[]"}  # no track: nobody speaks
    try:
        samples = speech_samples(clip["clip_uri"])
    except av.FFmpegError as exc:
        return item | {"outcome": {"status": REJECTED, "reason": f"audio: undecodable: {type(exc).__name__}: {exc}"}}
    except Exception as exc:  # noqa: BLE001 - an unreadable clip fails alone
        return item | {"outcome": failed("read", exc)}
    voice = voice_activity(samples, cfg) if samples is not None and len(samples) else []
    voiced, pieces = splice(samples, voice) if voice else (None, None)
    return item | {"voiced": None if voiced is None else voiced.tobytes(), "pieces": json.dumps(pieces), "voice": json.dumps(voice)}


def decode_batch(batch: pa.Table, cfg: SpeechConfig) -> pa.Table:
    """The decode step (in the actor on CPU, in tasks ahead of a GPU)."""
    return pa.Table.from_pylist([decode_clip(clip, cfg) for clip in batch.to_pylist()])


class SpeechWorker:
    """The stage core (an actor on Ray): the recogniser loads once, then hears batches of decoded clips."""

    def __init__(self, cfg: SpeechConfig):
        self.cfg = cfg
        self.recogniser = make_recogniser(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = batch.to_pylist()
        workers = self.cfg.openai.concurrency if self.cfg.backend == "openai" else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(self.row, decoded))
        return to_table(rows, SPEECH)

    def row(self, clip: dict) -> dict:
        name = self.recogniser.name
        row = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE, "speech_model": name}
        if clip["outcome"] is not None:
            return row | clip["outcome"]
        voice = json.loads(clip["voice"])
        if clip["voiced"] is None:
            return row | {"status": KEPT, "reason": None, "speech": json.dumps(no_speech(name, voice))}
        try:
            heard = self.recogniser.transcribe(np.frombuffer(clip["voiced"], np.float32), self.cfg.language)
        except Exception as exc:  # noqa: BLE001 - the clip fails alone: a server outage is transient
            return row | failed("backend" if self.cfg.backend == "openai" else "speech", exc)
        spoken = transcript(heard, json.loads(clip["pieces"]), voice, clip["duration_s"], name)
        return row | {"status": KEPT, "reason": None, "speech": json.dumps(spoken)}


def speech_seconds(done: pa.Table) -> dict:
    """What the marker adds: seconds of voice in this run's clips (the log: how much was heard)."""
    voiced = 0.0
    for text in pc.drop_null(done.column("speech")).to_pylist():
        voiced += sum(s["end_s"] - s["start_s"] for s in json.loads(text)["voice_activity"])
    return {"voiced_s": round(voiced, 3)}


MODULES = {"faster-whisper": "faster_whisper", "transformers": "transformers", "openai": "httpx", "pocketsphinx": "pocketsphinx"}


def installed(ctx) -> None:
    """Fail before any work starts when the voice-activity detector or the recogniser is missing."""
    for module in ("silero_vad", MODULES[ctx.config.backend]):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"speech (backend {ctx.config.backend}) needs the module {module}: pip install 'vidcurate[speech]'")


def real_model(cfg: SpeechConfig, profile: str) -> SpeechConfig:
    """Under profile `default` an unnamed Whisper is large-v3-turbo (each backend's name for it);
    under `tiny` it stays unnamed: the random toy Whisper, built locally."""
    if profile == "default" and cfg.model is None and cfg.backend in DEFAULT_SPEECH_MODELS:
        return cfg.model_copy(update={"model": DEFAULT_SPEECH_MODELS[cfg.backend]})
    return cfg


REASONS = {
    "audio": (REJECTED, "the clip's audio does not decode (the source's track, or the clip's own)"),
    "read": (FAILED, "the clip's file could not be read"),
    "speech": (FAILED, "the recogniser failed (out of memory: transient)"),
    "backend": (FAILED, "the transcription server failed (unreachable, 5xx: transient)"),
}

SPEC = Stage(
    name=STAGE,
    config_model=SpeechConfig,
    by_default=False,  # runs when named in `stages:`
    table=SPEECH,
    columns=("clip_id", "video_id", "clip_uri", "start_s", "end_s"),
    optional=("clip_audio", "audio_error"),
    run_fields=("profile",),
    reasons=REASONS,
    tiny_defaults={"backend": "pocketsphinx", "beam_size": 1, "max_new_tokens": 16},
    resolve_profile=real_model,
    marker_fields={"voiced_s": "sum"},
    measure=speech_seconds,
    core=SpeechWorker,
    arguments=lambda ctx: {"cfg": ctx.config},
    decode=decode_batch,
    decode_arguments=lambda ctx: {"cfg": ctx.config},
    check=installed,
)
