"""Speech benchmark: real-time factor (processing seconds per second of audio) of each recogniser
on this machine's CPUs, with the stage's voice-activity splicing (ours) and without it (the
anchor: the whole clip to the recogniser, as a pipeline without a VAD does), in one run.

Audio: clips of `--clip-s` seconds, each with two phrases spoken by espeak-ng at known times over
silence (sample_data/make_spoken.py), decoded from their mp4 as the stage decodes them. Backends:
pocketsphinx (real weights), the toy Whisper (2+2 layers) through transformers and through
faster-whisper, and silero's VAD alone. Recall: the share of the phrases' words the recogniser
heard (real weights only; the toy Whisper's words are noise).

    python benchmarks/speech_bench.py --clips 4 --clip-s 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_data"))
import make_spoken  # noqa: E402

from vidcurate.stages.audio import SPEECH_RATE, speech_samples  # noqa: E402
from vidcurate.stages.speech import SpeechConfig, make_recogniser, splice, voice_activity  # noqa: E402

SENTENCES = [text for _, text in make_spoken.PHRASES] + ["good morning everyone", "one two three four five"]


def clips(count: int, clip_s: float, folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """16 kHz mono audio of `count` clips, two phrases each (at 20% and 60% of the clip), and their text."""
    out, said = [], []
    for i in range(count):
        phrases = [(clip_s * 0.2, SENTENCES[(2 * i) % len(SENTENCES)]), (clip_s * 0.6, SENTENCES[(2 * i + 1) % len(SENTENCES)])]
        track, _ = make_spoken.soundtrack(phrases, clip_s)
        path = make_spoken.write(folder / f"clip{i}.mp4", make_spoken.frames(clip_s, []), track)
        out.append(speech_samples(str(path)))
        said.append(" ".join(text for _, text in phrases))
    return out, said


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def recall(heard: list[dict], said: list[str]) -> float:
    words = [w for text in said for w in text.split()]
    got = " ".join(w["word"] for h in heard for w in h["words"]).split()
    return sum(w in got for w in words) / len(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--clip-s", type=float, default=20.0)
    parser.add_argument("--backends", default="pocketsphinx,transformers,faster-whisper")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        audio, said = clips(args.clips, args.clip_s, Path(tmp))
    seconds = sum(len(a) for a in audio) / SPEECH_RATE
    cfg = SpeechConfig(beam_size=1)
    vad_s, voices = 0.0, []
    for samples in audio:
        took, voice = timed(voice_activity, samples, cfg)
        vad_s, voices = vad_s + took, voices + [voice]
    voiced = sum(b - a for voice in voices for a, b in voice)
    print(f"{args.clips} clips, {seconds:.0f} s of audio, {voiced / seconds:.0%} voiced; {os.cpu_count()} CPUs")
    print(f"silero VAD alone: {vad_s:.2f} s, real-time factor {vad_s / seconds:.4f}")
    print("| backend | RTF ours (VAD + voiced) | RTF anchor (whole clip) | anchor / ours | recall ours | recall anchor |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        recogniser = make_recogniser(SpeechConfig(backend=backend, beam_size=1, max_new_tokens=None if backend == "pocketsphinx" else 64))
        ours_s, anchor_s, ours, anchor = vad_s, 0.0, [], []
        for samples, voice in zip(audio, voices):
            spliced, _ = splice(samples, voice)
            took, heard = timed(recogniser.transcribe, spliced, None)
            ours_s, ours = ours_s + took, ours + [heard]
            took, heard = timed(recogniser.transcribe, samples, None)
            anchor_s, anchor = anchor_s + took, anchor + [heard]
        real = backend == "pocketsphinx"
        hits = f"{recall(ours, said):.0%} | {recall(anchor, said):.0%}" if real else "noise | noise"
        print(f"| {backend} | {ours_s / seconds:.3f} | {anchor_s / seconds:.3f} | {anchor_s / ours_s:.2f} | {hits} |")


if __name__ == "__main__":
    main()
