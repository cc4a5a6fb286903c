"""Captioning throughput per backend: clips/s and generated tokens/s.

    python benchmarks/caption_bench.py [--shape tiny|2b] [--device cpu|cuda] [--clips 8]
                                       [--frames 8] [--new-tokens 128] [--backends transformers,openai]
                                       [--batches 1,2,4,8]
    python benchmarks/caption_bench.py --grammar [--clips 8] [--grammar-batch 8] [--repeats 3]
    python benchmarks/caption_bench.py --engines [--walks 16]

Random-initialised Qwen2-VL models (no hub here): `tiny` is the CI profile's model; `2b` has
Qwen2-VL-2B's shapes (1.5k hidden, 28 layers, 675M-parameter vision tower), for GPU runs. Every
clip generates exactly `--new-tokens` tokens (EOS ignored), so tokens/s is comparable across
models and backends. Frames come from real clips of the synthetic sample videos.

`--grammar`: instead, what the answer grammar costs per generated token and what it buys,
at the small and the large vocabulary: the tiny profile's Qwen2-VL (263 byte tokens) and the
Qwen2.5-VL-shaped model with a trained 32k BPE (`stages.models.bpe_qwen25vl`). The caption
stage's first attempt (its prompts as the tiny profile builds them: 4 frames at 112 px, 4 events at
most; 1536 tokens, room for the grammar's longest answer even in bytes), greedy and sampled,
`--grammar-batch` prompts per `generate`, the grammar on, then off for as many steps, `--repeats`
times in one run. Per step: the median time of a decoding step (forward pass, grammar and
sampler); the grammar's own time (building the batch's matchers, then its logits processor at
every step) and the sampler's, with the grammar on and off. The overhead is what the grammar adds
to a step over the median step with it off: its own time, less, when greedy, the sampler's time
it saves (the sampler takes the tokens the grammar led greedy rows with instead of its own
argmax). A sampled row's draw is the sampler's work either way, so nothing is taken off there
(the draws are cheaper from masked scores, by more than the grammar costs at 32k). Times are CPU
time with one torch thread: on a shared machine wall time swung tenfold between runs. Validity:
the answers that parse on the first attempt.

`--engines`: the answer grammar's mask per step, in CPU microseconds, over the same token
sequences (seeded random walks through the grammar, each token drawn uniformly from the allowed
ones, as a random model draws them), at both vocabularies: llguidance as the stage runs it (the
regex vLLM gets, slices of the answer's text characters), and, when installed (`pip install
xgrammar==0.2.8`, the version vLLM 0.33 pins), xgrammar with the regex and with its fastest
spelling of the same grammar.

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
from dataclasses import replace
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


class Timed:
    """A logits processor, run and timed: CPU time of this thread, which with one torch thread is
    all of a step's work, and which other processes on the machine do not inflate."""

    def __init__(self, processor, seconds: float = 0.0):
        self.processor, self.seconds = processor, seconds

    def __call__(self, input_ids, scores):
        started = time.thread_time()
        scores = self.processor(input_ids, scores)
        self.seconds += time.thread_time() - started
        return scores


class BatchTimes:
    """One `generate`'s steps: a stamp at every decoding step, the grammar's time (building its
    matchers, then its mask at every step) and the sampler's."""

    def __init__(self, processors: list, build_s: float):
        *grammar, sampler = processors
        self.mask, self.build_s = (grammar[0] if grammar else None), build_s
        self.grammar = Timed(self.mask, build_s) if grammar else None
        self.sampler = Timed(sampler)
        self.stamps: list[float] = []

    def processors(self) -> list:
        return [self.stamp, *([self.grammar] if self.grammar else []), self.sampler]

    def stamp(self, input_ids, scores):
        self.stamps.append(time.thread_time())
        return scores


class TimedCaptioner(TransformersCaptioner):
    """The stage's captioner (grammar on, or off with `grammar = None`), timing every batch's steps."""

    batches: list[BatchTimes]

    def logits_processors(self, prompts, finished):
        started = time.thread_time()
        processors = super().logits_processors(prompts, finished)
        self.batches.append(BatchTimes(processors, time.thread_time() - started))
        return self.batches[-1].processors()

    def timed_generate(self, prompts: list[Prompt]) -> tuple[list[str], dict]:
        """Answers, and per step over all batches: the median CPU time, the grammar's and the
        sampler's mean."""
        self.batches = []
        answers = self.generate(prompts)
        steps = sum(len(b.stamps) for b in self.batches)
        figures = {
            "steps": steps,
            "longest_batch_steps": max(len(b.stamps) for b in self.batches),
            "median_step_s": float(np.median(np.concatenate([np.diff(b.stamps) for b in self.batches]))),
            "grammar_s_per_step": sum(b.grammar.seconds for b in self.batches if b.grammar) / steps,
            "build_s_per_step": sum(b.build_s for b in self.batches if b.grammar) / steps,
            "sampler_s_per_step": sum(b.sampler.seconds for b in self.batches) / steps,
            "rows_unmasked": sum(b.mask.unmasked for b in self.batches if b.mask),
            "rows_masked": sum(b.mask.masked for b in self.batches if b.mask),
        }
        return answers, figures


def first_attempt_prompts(count: int, cfg: CaptionConfig) -> list[Prompt]:
    """The caption stage's first-attempt prompts for `count` clips of the synthetic sample videos."""
    batch = []
    for i, frames in enumerate(clip_frames_pool(count, cfg.frames)):
        small = [np.asarray(Image.fromarray(f).resize((round(f.shape[1] * 112 / f.shape[0]), 112), Image.Resampling.BILINEAR)) for f in frames]
        batch.append(build_prompt(f"clip-{i}", small, [k * 0.25 for k in range(len(small))], 1.0, cfg, 0))
    return batch


def valid_answers(answers: list[str]) -> int:
    from vidcurate.stages.answer import InvalidAnswer, parse_answer

    valid = 0
    for answer in answers:
        try:
            parse_answer(answer)
            valid += 1
        except InvalidAnswer:
            pass
    return valid


def grammar_bench(clips: int, batch_size: int, repeats: int) -> None:
    """ms per decoding step with the grammar on and off, the grammar's own ms per step, and
    first-attempt validity, per vocabulary and decoding, all in this run. Each repeat runs the
    grammar on, then off for as many steps as the grammar's answers took (steps at the same
    positions cost the same; noise never parses however long it runs)."""
    import torch

    from vidcurate.stages.models import bpe_qwen25vl

    torch.set_num_threads(1)  # the whole step in this thread, so its CPU time is the step's
    models = {"bytes (263)": tiny_qwen2vl(), "BPE 32k (32790)": bpe_qwen25vl()}
    rows = []
    for vocabulary, model in models.items():
        captioner = TimedCaptioner(str(model), device="cpu", structured="on", batch_size=batch_size)
        grammar = captioner.grammar
        for temperature in (0.0, 1.0):
            # 1536 tokens: room for the grammar's longest answer (1211 characters) even in bytes
            cfg = CaptionConfig(frames=4, frame_height=112, max_events=4, max_tokens=1536, temperature=temperature)
            batch = first_attempt_prompts(clips, cfg)
            captioner.timed_generate(batch[:1])  # warm-up
            runs = {"on": [], "off": []}
            for _ in range(repeats):
                captioner.grammar = grammar
                answers, on = captioner.timed_generate(batch)
                runs["on"].append({**on, "valid": valid_answers(answers)})
                captioner.grammar = None
                answers, off = captioner.timed_generate([replace(p, max_tokens=on["longest_batch_steps"]) for p in batch])
                runs["off"].append({**off, "valid": valid_answers(answers)})
            captioner.grammar = grammar
            off_step, on_step = (float(np.median([r["median_step_s"] for r in runs[mode]])) for mode in ("off", "on"))
            grammar_step = float(np.median([r["grammar_s_per_step"] for r in runs["on"]]))
            build_step = float(np.median([r["build_s_per_step"] for r in runs["on"]]))
            sampler_on, sampler_off = (float(np.median([r["sampler_s_per_step"] for r in runs[mode]])) for mode in ("on", "off"))
            # greedy: the sampler's argmax, which the grammar's leads replace; sampled: nothing (the
            # draw is the sampler's work either way, though it is cheaper from masked scores)
            saved = sampler_off - sampler_on if temperature == 0 else 0.0
            rows.append({
                "vocabulary": vocabulary, "decoding": "greedy" if temperature == 0 else "sampled",
                "ms_per_step_off": round(off_step * 1e3, 2), "ms_per_step_on": round(on_step * 1e3, 2),
                "grammar_ms_per_step": round(grammar_step * 1e3, 3), "grammar_share": f"{grammar_step / off_step:.1%}",
                "of_which_building_matchers_ms": round(build_step * 1e3, 3),
                "sampler_ms_per_step_off": round(sampler_off * 1e3, 3), "sampler_ms_per_step_on": round(sampler_on * 1e3, 3),
                "added_ms_per_step": round((grammar_step - saved) * 1e3, 3), "overhead": f"{(grammar_step - saved) / off_step:.1%}",
                "valid_first_attempt_on": f"{sum(r['valid'] for r in runs['on'])}/{len(batch) * repeats}",
                "valid_first_attempt_off": f"{sum(r['valid'] for r in runs['off'])}/{len(batch) * repeats}",
                "steps_per_run": runs["on"][0]["steps"],
                "greedy_rows_unmasked": f"{sum(r['rows_unmasked'] for r in runs['on'])}/{sum(r['rows_unmasked'] + r['rows_masked'] for r in runs['on'])}",
            })  # fmt: skip
    print(json.dumps({"prompts": clips, "batch_size": batch_size, "repeats": repeats, "results": rows}, indent=2))
    for r in rows:
        print(f"{r['vocabulary']:>16} {r['decoding']:>7}: {r['ms_per_step_off']:7.2f} ms/step off, {r['ms_per_step_on']:7.2f} on; "
              f"grammar {r['grammar_ms_per_step']:.3f} ms/step ({r['grammar_share']}; building matchers {r['of_which_building_matchers_ms']:.3f}), sampler {r['sampler_ms_per_step_off']:.3f} off, "
              f"{r['sampler_ms_per_step_on']:.3f} on: {r['added_ms_per_step']:.3f} ms/step added = {r['overhead']} overhead; valid on first attempt: "
              f"{r['valid_first_attempt_on']} on, {r['valid_first_attempt_off']} off; row steps left unmasked (greedy, best token allowed): "
              f"{r['greedy_rows_unmasked']}")  # fmt: skip


def xgrammar_ebnf(frame_times: list[float], duration_s: float, max_events: int, max_chars: int = 200) -> str:
    """answer_regex in xgrammar's EBNF, the spelling xgrammar checks fastest: each text's length as
    a character budget (`max_chars`) on an unbounded run, not as a counted repetition."""
    from vidcurate.stages.answer import TEXT_CHARS, time_choices

    times = " | ".join(f'"{t}"' for t in time_choices(frame_times, duration_s))
    return "\n".join([
        r'root ::= "{\"caption\": \"" text "\", \"events\": [" events "]}"',
        f'events ::= (event (", " event){{0,{max_events - 1}}})?',
        r'event ::= "{\"start_s\": " time ", \"end_s\": " time ", \"text\": \"" text "\"}"',
        f"time ::= {times}",
        f"text[max_chars={max_chars}] ::= {TEXT_CHARS} {TEXT_CHARS}*",
    ])  # fmt: skip


def token_walks(grammar, regex: str, count: int, seed: int = 0) -> list[list[int]]:
    """`count` answers as token ids, each token drawn uniformly from those the stage's grammar allows."""
    import random

    import llguidance.numpy

    rng, bitmask, walks = random.Random(seed), np.zeros((1, (grammar.vocab_rows + 31) // 32), dtype=np.int32), []
    for _ in range(count):
        matcher, walk = grammar.matcher(regex), []
        while not matcher.is_stopped():
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
            walk.append(rng.choice(np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), count=grammar.vocab_rows, bitorder="little")).tolist()))
            matcher.consume_token(walk[-1])
        walks.append(walk)
    return walks


def replay(sequences: list[list[int]], new_matcher, fill, take) -> float:
    """CPU seconds spent in `fill(matcher)` (one mask) over every token of every walk."""
    seconds = 0.0
    for walk in sequences:
        matcher = new_matcher()
        for token in walk:
            started = time.thread_time()
            fill(matcher)
            seconds += time.thread_time() - started
            assert take(matcher, token)
    return seconds


def engine_bench(walks: int) -> None:
    """CPU microseconds per mask: llguidance (the stage's engine and settings), and xgrammar with
    its fastest spelling of the grammar and with the regex, replaying the same walks."""
    import llguidance.numpy

    from vidcurate.stages.answer import answer_regex
    from vidcurate.stages.grammar import AnswerGrammar
    from vidcurate.stages.models import bpe_qwen25vl

    times, duration = [0.0, 0.25, 0.5, 0.75], 1.0
    pattern = answer_regex(times, duration, 4)
    results = []
    for vocabulary, model in {"bytes (263)": tiny_qwen2vl(), "BPE 32k (32790)": bpe_qwen25vl()}.items():
        grammar = AnswerGrammar.from_checkpoint(str(model))
        sequences = token_walks(grammar, pattern, walks)
        bitmask = np.zeros((1, (grammar.vocab_rows + 31) // 32), dtype=np.int32)
        per_engine = {
            "llguidance, regex (the stage's)": replay(
                sequences, lambda: grammar.matcher(pattern), lambda m: llguidance.numpy.fill_next_token_bitmask(m, bitmask, 0), lambda m, t: m.consume_token(t)
            )
        }
        try:
            import xgrammar as xgr
        except ImportError:
            xgr = None
        if xgr is not None:
            from transformers import AutoTokenizer

            info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(model), vocab_size=grammar.vocab_rows, stop_token_ids=grammar.stop_ids)
            compiler, xgr_bitmask = xgr.GrammarCompiler(info), xgr.allocate_token_bitmask(1, grammar.vocab_rows)
            spellings = {"xgrammar, EBNF with max_chars": compiler.compile_grammar(xgrammar_ebnf(times, duration, 4)), "xgrammar, regex": compiler.compile_regex(pattern)}
            for engine, compiled in spellings.items():
                per_engine[engine] = replay(
                    sequences, lambda c=compiled: xgr.GrammarMatcher(c), lambda m: m.fill_next_token_bitmask(xgr_bitmask), lambda m, t: m.accept_token(t)
                )
        steps = sum(map(len, sequences))
        anchor = per_engine["llguidance, regex (the stage's)"]
        for engine, seconds in per_engine.items():
            results.append({"vocabulary": vocabulary, "engine": engine, "steps": steps, "us_per_mask": round(seconds / steps * 1e6, 1),
                            "vs_stage": round(seconds / anchor, 2)})  # fmt: skip
    print(json.dumps({"walks": walks, "results": results}, indent=2))
    for r in results:
        print(f"{r['vocabulary']:>16} {r['engine']:>32}: {r['us_per_mask']:8.1f} us per mask ({r['vs_stage']}x the stage's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--backends", default="transformers,openai")
    parser.add_argument("--batches", default="1,2,4,8", help="transformers backend: prompts per generate call")
    parser.add_argument("--grammar", action="store_true", help="the grammar's cost per token and first-attempt validity instead")
    parser.add_argument("--grammar-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="--grammar: runs of each mode")
    parser.add_argument("--engines", action="store_true", help="the grammar's mask per step: llguidance, and xgrammar if installed")
    parser.add_argument("--walks", type=int, default=16, help="--engines: random answers replayed through each engine")
    args = parser.parse_args()
    if args.grammar:
        return grammar_bench(args.clips, args.grammar_batch, args.repeats)
    if args.engines:
        return engine_bench(args.walks)

    scratch = tempfile.TemporaryDirectory(prefix="caption-bench-")  # the 2b-shaped model's GBs: removed when main returns
    model = str(tiny_qwen2vl()) if args.shape == "tiny" else str(build_2b(Path(scratch.name) / "qwen2-vl-2b-shaped"))
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
