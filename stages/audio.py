"""Audio shared by split (each clip's track), window media (a window's track) and speech (what
the recogniser hears).

A clip's audio is the source's samples over the clip's span, on the clip's clock: the clip's
time 0 is its first video frame, so sample 0 of its track is the source's audio at that frame's
time. The track is exactly as long as the clip (silence where the source has no audio there) and
is encoded as AAC, which every mp4 player and trainer decodes; FFmpeg's AAC encoder has no
threads and no randomness, so the same samples give the same bytes on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import fsspec
import numpy as np

SPEECH_RATE = 16000  # what every recogniser and the voice-activity detector take (mono float32)
AAC_OPTIONS = {"aac_coder": "fast"}  # FFmpeg's default coder took 1.8x as long for the same bytes (30 s stereo noise: 0.55 s vs 0.31 s)
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class AudioUndecodable(ValueError):
    """The source's audio track is there but does not decode: the clips it should cover carry no
    audio, and their row says why (speech rejects them)."""


@dataclass(frozen=True)
class AudioFormat:
    """What a clip's audio track holds: its sample rate and channel layout (mono or stereo)."""

    rate: int
    layout: str

    @property
    def channels(self) -> int:
        return 1 if self.layout == "mono" else 2


def track_format(stream: av.audio.stream.AudioStream) -> AudioFormat:
    """The source track's rate where AAC takes it (else 48 kHz), mono or stereo (more channels
    are mixed down to two)."""
    rate = stream.codec_context.sample_rate or 48000
    channels = stream.codec_context.channels or 2
    return AudioFormat(rate if rate in AAC_RATES else 48000, "mono" if channels == 1 else "stereo")


def samples_at(seconds: float, rate: int) -> int:
    """The sample index of a time: spans that share an edge share that sample, so the tracks of
    contiguous clips tile the source's audio with no sample lost or repeated."""
    return round(seconds * rate)


class SourceAudio:
    """A video's audio track, read forward once while its clips are cut: `take(start_s, end_s)`
    gives the samples of one span (times on the video's clock: seconds from its first video
    frame, which is at `origin_s` on the container's clock), spans asked in time order."""

    def __init__(self, path: str, origin_s: float):
        self.container = av.open(path)
        stream = self.container.streams.audio[0]
        self.format = track_format(stream)
        self.origin_s = origin_s
        self._resampler = av.AudioResampler(format="fltp", layout=self.format.layout, rate=self.format.rate)
        self._frames = self._decoded(stream)
        self._buffer = np.zeros((self.format.channels, 0), np.float32)
        self._start = None  # sample index (video clock) of the buffer's first sample (None: no sample yet)
        self._error: str | None = None

    def _decoded(self, stream):
        """Resampled blocks of samples, in order; the first says where the track starts."""
        try:
            for packet in self.container.demux(stream):
                for frame in packet.decode():
                    if self._start is None:  # where the track starts (no time: with the video)
                        at = float(frame.pts * frame.time_base) - self.origin_s if frame.pts is not None else 0.0
                        self._start = samples_at(at, self.format.rate)
                    for block in self._resampler.resample(frame):
                        yield block.to_ndarray()
            for block in self._resampler.resample(None):
                yield block.to_ndarray()
        except av.FFmpegError as exc:
            self._error = f"{type(exc).__name__}: {exc}"

    def take(self, start_s: float, end_s: float) -> np.ndarray:
        """(channels, samples) of the span: exactly its length, silence where the track has none."""
        rate = self.format.rate
        first, last = samples_at(start_s, rate), samples_at(end_s, rate)
        blocks, held = [self._buffer], self._buffer.shape[1]
        while (self._start is None or self._start + held < last) and self._error is None:
            block = next(self._frames, None)
            if block is None:
                break
            blocks.append(block.astype(np.float32))
            held += block.shape[1]
        self._buffer = np.concatenate(blocks, axis=1)
        if self._error is not None:
            raise AudioUndecodable(self._error)
        out = np.zeros((self.format.channels, last - first), np.float32)
        if self._start is not None:
            lo, hi = max(first, self._start), min(last, self._start + self._buffer.shape[1])
            if hi > lo:
                out[:, lo - first : hi - first] = self._buffer[:, lo - self._start : hi - self._start]
            drop = max(0, last - self._start)  # later spans start at or after this one's end
            self._buffer, self._start = self._buffer[:, drop:], self._start + min(drop, self._buffer.shape[1])
        return out

    def close(self) -> None:
        self.container.close()


def audio_frame(samples: np.ndarray, fmt: AudioFormat) -> av.AudioFrame:
    """(channels, n) float32 samples as one frame starting at time 0."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=fmt.layout)
    frame.sample_rate, frame.pts, frame.time_base = fmt.rate, 0, Fraction(1, fmt.rate)
    return frame


def read_track(uri: str, layout: str | None = None, rate: int | None = None) -> tuple[np.ndarray, AudioFormat] | None:
    """A file's first audio track decoded whole: ((channels, n) float32, its format), converted to
    `layout` and `rate` where given; None where the file has no audio track."""
    with fsspec.open(uri, "rb") as f, av.open(f) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        own = track_format(stream)
        fmt = AudioFormat(rate or own.rate, layout or own.layout)
        resampler = av.AudioResampler(format="fltp", layout=fmt.layout, rate=fmt.rate)
        blocks = [b.to_ndarray() for frame in container.decode(stream) for b in resampler.resample(frame)]
        blocks += [b.to_ndarray() for b in resampler.resample(None)]
        # the encoder's last frame is padded to its full size; the track's own length says where it ends
        length = round(stream.duration * stream.time_base * fmt.rate) if stream.duration else None
    samples = np.concatenate(blocks, axis=1) if blocks else np.zeros((fmt.channels, 0), np.float32)
    return samples[:, :length].astype(np.float32), fmt


def speech_samples(uri: str) -> np.ndarray | None:
    """A clip's audio as the recognisers take it: 16 kHz mono float32; None without a track."""
    track = read_track(uri, "mono", SPEECH_RATE)
    return None if track is None else track[0][0]
