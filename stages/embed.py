"""Embed stage: open_clip image embeddings of each clip's keyframes, text embeddings of its
caption, the frame-caption CLIP score, and a perceptual hash for near-duplicate search; for the
ground stage's span checks, the embeddings of frames at `span_fps` with their times and of each
caption event's text (`stages.spans.span_verification` compares them). The same frames and texts
score the (frame, text) pairs of interleaved documents (`Evidence.shown`, `similarity`).

Frames are resized, cropped and normalised with torch on the model's device (the GPU when
present), so preprocessing does not bottleneck a fast encoder. Embeddings are stored as
L2-normalised float16 bytes: what dedup indexes and trainers may reuse.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import Field

from vidcurate.schemas.tables import EMBEDDED, FAILED, KEPT, to_table
from vidcurate.stages.contract import Stage
from vidcurate.stages.failures import failed, is_transient
from vidcurate.stages.frame_store import FrameNeed, read_frames
from vidcurate.stages.media import pack_frames, unpack_frames
from vidcurate.stages.models import DEFAULT_CLIP_MODEL, TINY_CLIP_MODEL, cache_dir, tiny_clip_config
from vidcurate.stages.settings import StageResources, StrictModel, real_model_by_default


class EmbedConfig(StrictModel):
    model: str | None = Field(
        None, description="open_clip model (ViT-B-32, ViT-L-14, ViT-B-16-SigLIP, ...); unset: the profile's (default: "
        "ViT-B-32; tiny: a random toy ViT built locally)"
    )
    pretrained: str | None = Field("laion2b_s34b_b79k", description="open_clip pretrained tag or a checkpoint path")
    tokenizer: str | None = Field(
        None, description="hub id or local folder of the model's Hugging Face tokenizer (SigLIP's lives on the hub); "
        "None: the model's own"
    )
    keyframes: int = Field(4, ge=1, le=64, description="evenly spaced frames per clip")
    span_fps: float = Field(2.0, ge=0, description="frames a second embedded with their times, for ground's span verification (0: none)")
    max_span_frames: int = Field(64, ge=2, description="at most this many of them per clip")
    device: str = "auto"
    resources: StageResources = StageResources(batch_size=16)


log = logging.getLogger("vidcurate")
STAGE = "embed"


def tiny_clip_checkpoint() -> str:
    """Register the tiny open_clip config and save seeded random weights once, so every worker
    and every machine loads the same model."""
    import open_clip
    import torch

    folder = cache_dir() / TINY_CLIP_MODEL
    config, weights = folder / f"{TINY_CLIP_MODEL}.json", folder / "open_clip_model.pt"
    if not config.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = config.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(tiny_clip_config()))
        os.replace(tmp, config)
    open_clip.add_model_config(str(config))
    if not weights.is_file():
        torch.manual_seed(0)
        model = open_clip.create_model(TINY_CLIP_MODEL, pretrained=None)
        tmp = weights.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)
    return str(weights)


def phash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a grayscale frame (the classic pHash: 32x32 -> 8x8 low DCT)."""
    from PIL import Image

    small = np.asarray(Image.fromarray(gray).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    n = np.arange(32)
    basis = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)  # DCT-II rows
    low = (basis @ small @ basis.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">i8")[0])


def _hf_tokenizer(model: str, name_or_folder: str):
    """The model's Hugging Face tokenizer loaded from elsewhere, with its config's settings."""
    import open_clip

    text = open_clip.get_model_config(model)["text_cfg"]
    return open_clip.tokenizer.HFTokenizer(name_or_folder, context_length=text.get("context_length", 77), **text.get("tokenizer_kwargs", {}))


class ClipEncoder:
    """open_clip model + tokenizer on one device, with batched GPU-side preprocessing."""

    def __init__(self, model: str, pretrained: str | None, device: str = "auto", precision: str = "auto", tokenizer: str | None = None):
        import open_clip
        import torch

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.model = open_clip.create_model(model, pretrained=pretrained, precision=precision, device=self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model) if tokenizer is None else _hf_tokenizer(model, tokenizer)
        cfg = self.model.visual.preprocess_cfg
        self.size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        # open_clip's fp16/bf16 keep some parameters (embeddings, norms) in float32: the input
        # dtype is the precision's, not the first parameter's
        self.dtype = {"fp16": torch.float16, "pure_fp16": torch.float16, "bf16": torch.bfloat16, "pure_bf16": torch.bfloat16}.get(
            precision, torch.float32
        )
        self.name = f"{model}/{pretrained or 'random'}"
        self.text_graphs: dict[int, tuple] | None = {}  # None: captured graphs are off

    def preprocess(self, frames):
        """uint8 (n, h, w, 3) on the device -> normalised (n, 3, size, size): short side resize +
        centre crop (no resize for frames decoded at the model's size, `decode_keyframes(side=...)`)."""
        import torch.nn.functional as F

        x = frames.permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        if min(h, w) != self.size:
            scale = self.size / min(h, w)
            size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        return ((x - self.mean) / self.std).to(self.dtype)

    def model_input(self, clips: list[np.ndarray]):
        """All clips' frames, preprocessed. Frames of one size (as decoded at the model's side) go
        to the device in one copy and are preprocessed as one batch; mixed sizes clip by clip."""
        import torch

        if len({clip.shape[1:] for clip in clips}) > 1:
            return torch.cat([self.preprocess(self.on_device([clip])) for clip in clips])
        return self.preprocess(self.on_device(clips))

    def on_device(self, clips: list[np.ndarray]):
        """Frames of the same size as one tensor on the device. To a GPU they go through
        page-locked memory in one asynchronous copy."""
        import torch

        host = torch.empty((sum(len(c) for c in clips), *clips[0].shape[1:]), dtype=torch.uint8, pin_memory=self.device.startswith("cuda"))
        start = 0
        with warnings.catch_warnings():  # frames may be read-only views of packed bytes: only read here
            warnings.simplefilter("ignore", UserWarning)
            for clip in clips:
                host[start : start + len(clip)].copy_(torch.as_tensor(clip))
                start += len(clip)
        return host.to(self.device, non_blocking=True)

    def encode_text(self, tokens):
        """Normalised text embeddings. On a GPU they are replayed from a CUDA graph per batch-size
        bucket: the text tower is small, and launching its ~170 kernels one by one took the CPU
        longer (9 ms for 16 captions on an H100) than the GPU took to encode 128 frames."""
        if not self.device.startswith("cuda") or self.text_graphs is None:
            return self.model.encode_text(tokens.to(self.device), normalize=True)
        bucket = 1 << (len(tokens) - 1).bit_length()
        if bucket not in self.text_graphs:
            try:
                self.text_graphs[bucket] = self._capture_text(bucket, tokens)
            except RuntimeError as exc:  # a text tower that cannot be captured runs eagerly
                log.warning("embed: text encoder not captured as a CUDA graph (%s); running it eagerly", exc)
                self.text_graphs = None
                return self.encode_text(tokens)
        graph, static_in, static_out = self.text_graphs[bucket]
        static_in.zero_()
        static_in[: len(tokens)].copy_(tokens.pin_memory(), non_blocking=True)  # no wait for the image encode
        graph.replay()
        return static_out[: len(tokens)].clone()

    def _capture_text(self, rows: int, tokens):
        import torch

        static_in = torch.zeros((rows, tokens.shape[1]), dtype=tokens.dtype, device=self.device)
        side = torch.cuda.Stream()  # warm-up off the default stream, as CUDA graph capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.encode_text(static_in, normalize=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model.encode_text(static_in, normalize=True)
        return graph, static_in, static_out

    def encode(self, clips: list[np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Frames of several clips (each (n, h, w, 3), sizes may differ) in one image-encoder call,
        and texts in one text-encoder call. The texts are tokenised while the GPU encodes the
        images, and results are fetched once at the end, so the device never waits on Python."""
        import torch

        with torch.inference_mode():
            images = self.model.encode_image(self.model_input(clips), normalize=True) if clips else None
            text = self.encode_text(self.tokenizer(texts)) if texts else None
            return tuple(np.zeros((0, 0), np.float32) if out is None else out.float().cpu().numpy() for out in (images, text))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def input_side(cfg: EmbedConfig) -> int:
    """The side of the square the model's image encoder takes, from its config (no weights)."""
    import open_clip

    vision = (tiny_clip_config() if cfg.model is None else open_clip.get_model_config(cfg.model))["vision_cfg"]
    size = vision["image_size"]
    return size if isinstance(size, int) else min(size)


def centre_square(rgb: np.ndarray, side: int) -> np.ndarray:
    """The centre side x side crop (the whole frame where it is smaller), as the encoder crops."""
    top, left = max(0, (rgb.shape[1] - side) // 2), max(0, (rgb.shape[2] - side) // 2)
    return rgb[:, top : top + side, left : left + side]


def span_need(cfg: EmbedConfig) -> FrameNeed | None:
    """The frames ground's span verification compares with each event's text (split keeps them)."""
    return FrameNeed(cfg.max_span_frames, cfg.span_fps, cfg.max_span_frames) if cfg.span_fps > 0 else None


def decode_keyframes(clips: list[dict], keyframes: int, side: int | None = None, span: FrameNeed | None = None) -> list[dict]:
    """CPU half of the stage: evenly spaced keyframes and their pHashes; with `span`,
    also those frames with their times. With `side` (the encoder's input), frames are decoded
    straight to that short side and sent as the centre square the encoder crops, so the object
    store and the GPU's bus carry 3-5x fewer bytes."""
    square = (lambda rgb: centre_square(rgb, side)) if side else (lambda rgb: rgb)  # noqa: E731
    out = []
    for clip in clips:
        item = {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "caption": clip.get("caption"), "events": clip.get("events")}
        try:
            rgb, _ = read_frames(clip, keyframes, side)
            hashes = [phash(frame.mean(axis=2).astype(np.uint8)) for frame in rgb]
            item.update(frames=pack_frames(square(rgb)), phash=hashes[len(rgb) // 2], phashes=hashes, span_frames=None, span_times=None, error=None)
            if span is not None:
                frames, times = read_frames(clip, span.count_for(clip["end_s"] - clip["start_s"]), side)
                item.update(span_frames=pack_frames(square(frames)), span_times=[round(float(t), 3) for t in times])
        except Exception as exc:  # noqa: BLE001 - one unreadable clip fails alone
            item.update(frames=None, phash=None, phashes=None, span_frames=None, span_times=None, error=failed("frames", exc))
        out.append(item)
    return out


def embed_clips(clips: list[dict], encoder: ClipEncoder, keyframes: int, span: FrameNeed | None = None) -> list[dict]:
    """Clips (clip_id, video_id, clip_uri, start_s, end_s, caption, events) -> EMBEDDED rows."""
    return embed_decoded(decode_keyframes(clips, keyframes, encoder.size, span), encoder)


def embed_decoded(decoded: list[dict], encoder: ClipEncoder) -> list[dict]:
    """Model half: all frames of the batch go through the image encoder together. A transient
    model failure (out of memory) fails the batch's clips for the next run to retry."""
    try:
        return _embed_decoded(decoded, encoder)
    except Exception as exc:
        if not is_transient(exc):
            raise
        return [{**_row(clip, encoder), **(clip["error"] or failed("embed", exc))} for clip in decoded]


def _row(clip: dict, encoder: ClipEncoder) -> dict:
    return {"clip_id": clip["clip_id"], "video_id": clip["video_id"], "stage": STAGE, "embed_model": encoder.name}


def _embed_decoded(decoded: list[dict], encoder: ClipEncoder) -> list[dict]:
    rows, frames, owners, texts = {}, [], [], []
    for clip in decoded:
        row = _row(clip, encoder)
        if clip["error"]:
            rows[clip["clip_id"]] = {**row, **clip["error"]}
            continue
        rows[clip["clip_id"]] = {**row, "status": KEPT, "reason": None, "phash": clip["phash"], "phashes": clip["phashes"]}
        for kind in ("frames", "span_frames"):
            if clip.get(kind) is not None:
                rgb = unpack_frames(clip[kind])
                frames.append(rgb)
                owners.extend([(clip["clip_id"], kind)] * len(rgb))
        if clip.get("caption"):
            texts.append((clip["clip_id"], "caption", clip["caption"]))
        texts += [(clip["clip_id"], "event", e["text"]) for e in json.loads(clip.get("events") or "[]")]
    embs, text_embs = encoder.encode(frames, [text for *_, text in texts])
    per_clip: dict[tuple[str, str], list[np.ndarray]] = {}
    for owner, emb in zip(owners, embs):
        per_clip.setdefault(owner, []).append(emb)
    for (clip_id, kind, _), emb in zip(texts, text_embs):
        per_clip.setdefault((clip_id, kind), []).append(emb)
    for clip in decoded:
        row, key = rows[clip["clip_id"]], clip["clip_id"]
        if row["status"] != KEPT:
            continue
        row["image_emb"] = _unit(np.mean(per_clip[key, "frames"], axis=0)).astype(np.float16).tobytes()
        if (key, "caption") in per_clip:
            text = per_clip[key, "caption"][0]
            row["text_emb"] = text.astype(np.float16).tobytes()
            row["clip_score"] = round(float(np.mean(np.stack(per_clip[key, "frames"]) @ text)), 6)
        if (key, "span_frames") in per_clip:
            row["span_frame_embs"] = np.stack(per_clip[key, "span_frames"]).astype(np.float16).tobytes()
            row["span_frame_times"] = clip["span_times"]
        if (key, "event") in per_clip:
            row["event_embs"] = np.stack(per_clip[key, "event"]).astype(np.float16).tobytes()
    return [rows[c["clip_id"]] for c in decoded]


def make_encoder(cfg: EmbedConfig) -> ClipEncoder:
    """The open_clip `model`; none named: profile tiny's random toy ViT, built locally."""
    if cfg.model is None:
        return ClipEncoder(TINY_CLIP_MODEL, tiny_clip_checkpoint(), cfg.device)
    return ClipEncoder(cfg.model, cfg.pretrained, cfg.device, tokenizer=cfg.tokenizer)


class EmbedWorker:
    """The stage core (an actor on Ray): one encoder per actor, batches of decoded clips in."""

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.encoder = make_encoder(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table(embed_decoded(batch.to_pylist(), self.encoder), EMBEDDED)


def decode_batch(batch: pa.Table, keyframes: int, side: int, span: FrameNeed | None) -> pa.Table:
    """The decode step: clips to the frames the model takes (in the actor on CPU, in tasks ahead of a GPU)."""
    return pa.Table.from_pylist(decode_keyframes(batch.to_pylist(), keyframes, side, span))


def unpack(blob: bytes | None) -> np.ndarray | None:
    """A stored embedding back to float32."""
    return None if blob is None else np.frombuffer(blob, dtype=np.float16).astype(np.float32)


@dataclass(frozen=True)
class Evidence:
    """A sample's frames as the embed stage saw them: unit embeddings (n, d) and times (n,) in seconds."""

    embs: np.ndarray
    times: np.ndarray

    def shown(self, start_s: float, end_s: float) -> tuple[float, np.ndarray]:
        """The frame that stands for a span in an interleaved document, with its time: the one
        nearest the span's middle, among those inside it where any is (so its similarity is the
        similarity of the very frame a document shows)."""
        inside = np.flatnonzero((self.times >= start_s - 1e-6) & (self.times <= end_s + 1e-6))
        pool = inside if len(inside) else np.arange(len(self.times))
        i = pool[np.argmin(np.abs(self.times[pool] - (start_s + end_s) / 2))]
        return float(self.times[i]), self.embs[i]


def similarity(frame: np.ndarray | None, texts: list[np.ndarray]) -> float | None:
    """The embed model's cosine between a frame and a text made of `texts` (their embeddings):
    the mean over its sentences, as the CLIP score is a mean over frames; None without both."""
    if frame is None or not texts:
        return None
    return round(min(1.0, max(-1.0, float(np.mean(np.stack(texts) @ frame)))), 4)  # float16 rounding may leave [-1, 1]


def frame_evidence(row: dict) -> Evidence | None:
    """A clip row's span frames (`span_frame_embs`, `span_frame_times`); None where embed did not make them."""
    blob, times = row.get("span_frame_embs"), row.get("span_frame_times")
    if not blob or not times:
        return None
    return Evidence(unpack(blob).reshape(len(times), -1), np.asarray(times, dtype=np.float64))


def event_embeddings(row: dict, count: int) -> list[np.ndarray | None]:
    """The text embedding of each of a clip row's `count` caption events, in their order (None each without them)."""
    blob = row.get("event_embs")
    if not blob or not count:
        return [None] * count
    return list(unpack(blob).reshape(count, -1))


REASONS = {
    "frames": (FAILED, "the clip's keyframes could not be read (split's stored frames, else the clip decoded)"),
    "embed": (FAILED, "the encoder failed"),
}

SPEC = Stage(
    name=STAGE,
    config_model=EmbedConfig,
    table=EMBEDDED,
    columns=("clip_id", "video_id", "clip_uri", "start_s", "end_s"),
    optional=("caption", "events", "frames_uri"),
    run_fields=("profile",),
    reasons=REASONS,
    resolve_profile=real_model_by_default(DEFAULT_CLIP_MODEL),
    core=EmbedWorker,
    arguments=lambda ctx: {"cfg": ctx.config},
    decode=decode_batch,
    decode_arguments=lambda ctx: {"keyframes": ctx.config.keyframes, "side": input_side(ctx.config), "span": span_need(ctx.config)},
    frames=lambda cfg: (FrameNeed(cfg.keyframes), *filter(None, [span_need(cfg)])),
)
