"""Captioning throughput per backend: clips/s and generated tokens/s.

    python benchmarks/caption_bench.py [--shape tiny|2b] [--device cpu|cuda] [--clips 8]
                                       [--frames 8] [--new-tokens 128] [--backends transformers,openai]
                                       [--batches 1,2,4,8]

Random-initialised Qwen2-VL models (no hub here): `tiny` is the CI profile's model; `2b` has
Qwen2-VL-2B's shapes (1.5k hidden, 28 layers, 675M-parameter vision tower), for GPU runs. Every
clip generates exactly `--new-tokens` tokens (EOS ignored), so tokens/s is comparable across
models and backends. Frames come from real clips of the synthetic sample videos.

`--grammar`: instead, the tiny profile's caption stage as the sample job runs it: sampled prompts
(temperature 1.0, 4 frames at 112 px) under the answer grammar, answers ending at EOS, at batch 1
and `--grammar-batch`, with the grammar run as a character automaton (`stages/grammar.py`) and,
as the anchor, by the regex engine's partial match of the text so far plus every token at every
step (the constraint before the automaton). All four runs must give identical answers.

Backends: `transformers` in-process, once per `--batches` size (greedy prompts, one `generate`
per batch; the ratio of the best to batch 1 is printed); `openai` sends the same prompts over HTTP to a local
OpenAI-compatible server wrapping the same model (the client's overhead: encoding, HTTP,
concurrency). `vllm` needs a vLLM install (not in this environment: see docs/vllm.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from vidcurate.stages.caption import CaptionConfig, build_prompt  # noqa: E402
from vidcurate.stages.captioners import Prompt, TransformersCaptioner  # noqa: E402
from vidcurate.stages.models import tiny_qwen2vl  # noqa: E402

QWEN2_VL_2B = {
    "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14},
}  # fmt: skip


def build_2b(folder: Path) -> Path:
    """Qwen2-VL-2B shapes, random bf16 weights, the tiny profile's processor and tokenizer."""
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tiny = AutoProcessor.from_pretrained(tiny_qwen2vl())
    tok = tiny.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2VLConfig(
        **QWEN2_VL_2B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tiny.save_pretrained(folder)
    return folder


def clip_frames_pool(count: int, frames: int) -> list[list[np.ndarray]]:
    """Frames of real clips: the synthetic sample videos, sampled like the caption stage."""
    import av

    videos = sorted((REPO / "sample_data" / "videos").glob("synthetic_*.mp4"))
    out = []
    for i in range(count):
        with av.open(str(videos[i % len(videos)])) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        start = (i * 37) % max(1, len(decoded) - frames * 6)
        out.append(decoded[start : start + frames * 6 : 6])
    return out


def prompts(pool, new_tokens: int) -> list[Prompt]:
    out = []
    for i, frames in enumerate(pool):
        parts = []
        for k, frame in enumerate(frames):
            parts += [("text", f"Frame at {k * 0.25:.2f} s:"), ("image", frame)]
        parts.append(("text", "Describe the clip."))
        out.append(Prompt(parts, None, new_tokens, 0.0, i))  # greedy: batched like the caption stage's first attempt
    return out


class FixedLength(TransformersCaptioner):
    """Generation of exactly max_tokens (EOS ignored), for comparable tokens/s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.generation_config.eos_token_id = None

    def _generate(self, prompts: list[Prompt]) -> list[str]:
        self.model.generation_config.min_new_tokens = max(p.max_tokens for p in prompts)
        return super()._generate(prompts)


def bench(name: str, captioner, batch: list[Prompt], warm_up: int = 1) -> dict:
    # Warm-up with a whole batch: kernels, and the GPU allocator's blocks for a batch's growing
    # KV cache (new sizes cost a cudaMalloc each the first time: 2-3x slower steps on the H100).
    captioner.generate(batch[:warm_up])
    started = time.perf_counter()
    captioner.generate(batch)
    seconds = time.perf_counter() - started
    tokens = sum(p.max_tokens for p in batch)
    return {"backend": name, "clips": len(batch), "seconds": round(seconds, 2), "clips_per_s": round(len(batch) / seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip


class PartialMatchConstraint:
    """The anchor: every token's text tried after the text so far by the regex engine's partial
    match, at every step of every row."""

    def __init__(self, pattern: str, tokenizer, prompt_len: int, eos_id: int):
        import regex

        self.pattern, self.tokenizer, self.prompt_len, self.eos_id = regex.compile(pattern), tokenizer, prompt_len, eos_id
        special = set(tokenizer.all_special_ids)
        self.texts = [(i, tokenizer.decode([i])) for i in range(len(tokenizer)) if i not in special]

    def __call__(self, _batch_id: int, input_ids) -> list[int]:
        text = self.tokenizer.decode(input_ids[self.prompt_len :], skip_special_tokens=True)
        allowed = [i for i, piece in self.texts if piece and self.pattern.fullmatch(text + piece, partial=True)]
        if self.pattern.fullmatch(text):
            allowed.append(self.eos_id)
        return allowed or [self.eos_id]


class PartialMatchCaptioner(TransformersCaptioner):
    def constraint(self, prompt: Prompt, prompt_len: int):
        if not (self.structured and prompt.regex):
            return None
        return PartialMatchConstraint(prompt.regex, self.processor.tokenizer, prompt_len, self.model.generation_config.eos_token_id)


def grammar_bench(clips: int, batch_size: int) -> None:
    """Seconds per prompt of the tiny profile's sampled, grammar-bound captioning: automaton and
    anchor, at batch 1 and `batch_size`, answers compared."""
    cfg = CaptionConfig(frames=4, frame_height=112, max_events=4, max_tokens=1024, temperature=1.0)
    pool = clip_frames_pool(clips, cfg.frames)
    batch = []
    for i, frames in enumerate(pool):
        small = [np.asarray(Image.fromarray(f).resize((round(f.shape[1] * 112 / f.shape[0]), 112), Image.Resampling.BILINEAR)) for f in frames]
        batch.append(build_prompt(f"clip-{i}", small, [k * 0.25 for k in range(len(small))], 1.0, cfg, 0))
    results, answers = [], {}
    for name, kind in (("automaton", TransformersCaptioner), ("regex partial match (anchor)", PartialMatchCaptioner)):
        captioner = kind(str(tiny_qwen2vl()), device="cpu", structured="on", batch_size=1)
        captioner.generate(batch[:1])
        for size in (1, batch_size):
            captioner.batch_size = size
            started = time.perf_counter()
            answers[name, size] = captioner.generate(batch)
            seconds = time.perf_counter() - started
            results.append({"grammar": name, "batch_size": size, "seconds": round(seconds, 2), "s_per_prompt": round(seconds / len(batch), 3)})
    print(json.dumps({"prompts": len(batch), "results": results}, indent=2))
    same = len({tuple(a) for a in answers.values()}) == 1
    ours, anchor = results[1]["seconds"], results[2]["seconds"]
    print(f"answers identical across the four runs: {same}")
    print(f"automaton at batch {batch_size} vs the anchor at batch 1 (the stage before): {anchor / ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--backends", default="transformers,openai")
    parser.add_argument("--batches", default="1,2,4,8", help="transformers backend: prompts per generate call")
    parser.add_argument("--grammar", action="store_true", help="the tiny profile's sampled captioning under the grammar instead")
    parser.add_argument("--grammar-batch", type=int, default=8)
    args = parser.parse_args()
    if args.grammar:
        return grammar_bench(args.clips, args.grammar_batch)

    model = str(tiny_qwen2vl()) if args.shape == "tiny" else str(build_2b(Path(tempfile.mkdtemp()) / "qwen2-vl-2b-shaped"))
    captioner = FixedLength(model, device=args.device, structured="off", batch_size=1)
    batch = prompts(clip_frames_pool(args.clips, args.frames), args.new_tokens)
    results = []
    if "transformers" in args.backends:
        for size in (int(b) for b in args.batches.split(",")):
            captioner.batch_size = size
            results.append({**bench("transformers", captioner, batch, warm_up=size), "batch_size": size})
        by_batch = [r for r in results if "batch_size" in r]
        best = max(by_batch, key=lambda r: r["tokens_per_s"])
        print(f"transformers: batch 1 {by_batch[0]['tokens_per_s']} tokens/s, best batch {best['batch_size']} "
              f"{best['tokens_per_s']} tokens/s: {best['tokens_per_s'] / by_batch[0]['tokens_per_s']:.2f}x")  # fmt: skip
    if "openai" in args.backends:
        from openai_server import OpenAIServer

        from vidcurate.stages.captioners import OpenAICaptioner

        captioner.batch_size = 1  # the server answers one request at a time
        with OpenAIServer(captioner) as server:
            client = OpenAICaptioner(model, server.base_url, concurrency=4, structured="off")
            results.append(bench("openai (local server, same model)", client, batch))
    if "vllm" in args.backends:
        from vidcurate.stages.captioners import VllmCaptioner

        results.append(bench("vllm", VllmCaptioner(model, max_images=args.frames), batch))
    meta = {"shape": args.shape, "device": captioner.device, "frames_per_clip": args.frames, "new_tokens": args.new_tokens}
    print(json.dumps({**meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
