"""Videos whose audio is speech spoken at known times: phrases synthesised by espeak-ng (a Debian
package) and placed over silence or noise, beside shots joined by hard cuts at known times.

The truth of each phrase is the span of its voiced samples (espeak-ng's own lead-in and tail
of silence cut off), so a recogniser that hears the words must place them inside it. The
`en-us+f2` voice at 160 words a minute is the one pocketsphinx's bundled US-English model
recognises best (29 of 34 words of eight test sentences; the default voice: 9).

    python sample_data/make_spoken.py --out /tmp/spoken
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
SIZE = (128, 96)
RATE = 44100  # the source's audio rate: split keeps it, speech resamples to 16 kHz
VOICE, WORDS_PER_MINUTE = "en-us+f2", 160
SILENT = 1e-3  # a sample below this (of full scale) is silence when a phrase's edges are trimmed
PHRASES = [(1.0, "the weather is nice today"), (6.5, "we are going to the hospital"), (11.0, "thank you very much")]
CUTS_S = [5.0, 10.0]  # hard cuts: one phrase a shot
DURATION_S = 14.0


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, mono float32 at RATE, voiced part only."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "phrase.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(wav), text], check=True, capture_output=True)
        samples = _decode(wav)
    voiced = np.flatnonzero(np.abs(samples) > SILENT)
    return samples[voiced[0] : voiced[-1] + 1]


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        blocks = [b.to_ndarray().ravel() for frame in container.decode(audio=0) for b in resampler.resample(frame)]
        blocks += [b.to_ndarray().ravel() for b in resampler.resample(None)]
    return np.concatenate(blocks).astype(np.float32)


def soundtrack(phrases: list[tuple[float, str]], duration_s: float, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Mono samples of `duration_s` with each (start, text) phrase spoken from `start`, over white
    noise of RMS `noise`; and the truth: each phrase's text and voiced span."""
    track = np.random.default_rng(seed).normal(0, noise, round(duration_s * RATE)).astype(np.float32) if noise else np.zeros(round(duration_s * RATE), np.float32)
    truth = []
    for start, text in phrases:
        voice = speak(text)
        at = round(start * RATE)
        track[at : at + len(voice)] += voice[: len(track) - at]
        truth.append({"text": text, "start_s": start, "end_s": round(start + len(voice) / RATE, 3)})
    return np.clip(track, -1, 1), truth


def frames(duration_s: float, cuts_s: list[float]) -> list[np.ndarray]:
    """A flat colour per shot (hard cuts at `cuts_s`) with a square sliding across it."""
    rng = np.random.default_rng(len(cuts_s))
    colours = rng.integers(40, 200, size=(len(cuts_s) + 1, 3))
    out = []
    for i in range(round(duration_s * FPS)):
        t = i / FPS
        img = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
        img[:] = colours[sum(t >= c for c in cuts_s)]
        x = int(t * 20) % (SIZE[0] - 16)
        img[40:56, x : x + 16] = 255
        out.append(img)
    return out


BEEPS_S = [0.5, 2.2, 3.1, 4.9, 7.3]  # tone onsets for audio tests that need no speech


def onsets(samples: np.ndarray, rate: int) -> list[float]:
    """Where each tone of (channels, n) samples starts: its first loud sample after a silence."""
    loud = np.abs(samples[0]) > 0.05
    starts = np.flatnonzero(loud & ~np.concatenate([[False], loud[:-1]]))
    return [round(s / rate, 3) for i, s in enumerate(starts) if i == 0 or s - starts[i - 1] > rate * 0.1]


def beeps(duration_s: float, at_s: list[float], length_s: float = 0.2) -> np.ndarray:
    """Silence with a 440 Hz tone of `length_s` from each of `at_s`: audio whose every onset is known."""
    track = np.zeros(round(duration_s * RATE), np.float32)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(round(length_s * RATE)) / RATE).astype(np.float32)
    for t in at_s:
        track[round(t * RATE) : round(t * RATE) + len(tone)] = tone[: len(track) - round(t * RATE)]
    return track


def write(path: Path, video: list[np.ndarray], audio: np.ndarray | None, corrupt_audio: bool = False, audio_start_s: float = 0.0) -> Path:
    """An mp4 of H.264 frames and, where given, an AAC track of `audio` starting `audio_start_s`
    after the first frame; `corrupt_audio` writes the track's packets as random bytes (the
    container is whole, the audio does not decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        track = out.add_stream("aac", rate=RATE, layout="mono") if audio is not None else None
        for frame in video:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
        if track is not None:
            frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, round(audio_start_s * RATE), Fraction(1, RATE)
            packets = track.encode(frame) + track.encode(None)
            rng = np.random.default_rng(0)
            for packet in packets:
                if corrupt_audio:
                    garbage = av.Packet(rng.bytes(packet.size))
                    garbage.pts, garbage.dts, garbage.duration, garbage.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
                    packet = garbage
                packet.stream = track
                out.mux(packet)
    return path


def make(out: Path, noise: float = 0.0, name: str = "spoken") -> tuple[Path, list[dict]]:
    """<out>/<name>.mp4 with PHRASES spoken over its shots, and <out>/<name>.json, its truth."""
    audio, truth = soundtrack(PHRASES, DURATION_S, noise)
    path = write(Path(out) / f"{name}.mp4", frames(DURATION_S, CUTS_S), audio)
    (Path(out) / f"{name}.json").write_text(json.dumps({"cuts_s": CUTS_S, "phrases": truth}, indent=1))
    return path, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--noise", type=float, default=0.0, help="RMS of white noise under the speech (full scale 1)")
    args = parser.parse_args()
    path, truth = make(args.out, args.noise)
    print(path, json.dumps(truth))


if __name__ == "__main__":
    main()
