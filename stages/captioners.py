"""Captioning backends behind one interface: `generate(prompts) -> answers`, in order.

- `transformers`: in-process model (CPU or GPU); llguidance enforces the grammar token by token
  (`stages.grammar`), at any vocabulary size.
- `vllm`: vLLM's offline `LLM` engine (one per Ray actor); grammar via structured outputs.
- `openai`: any OpenAI-compatible server (`vllm serve`, hosted APIs, llama.cpp, SGLang), with
  bounded concurrency and retries with backoff; the grammar is sent as vLLM's
  `structured_outputs` regex (`structured: vllm`), as the standard `response_format` JSON schema
  (`json_schema`), or not at all (`off`).

A prompt is a list of parts, ("text", str) or ("image", RGB uint8 array), so every backend
renders the same interleaving of frame timestamps and frames; or, for models with a native video
path (transformers backend), one ("video", (frames, times_s, duration_s)) part.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vidcurate.stages.grammar import AnswerGrammar, best_tokens

log = logging.getLogger("vidcurate")


@dataclass
class Prompt:
    parts: list[tuple[str, object]]
    regex: str | None
    max_tokens: int
    temperature: float
    seed: int
    schema: dict | None = None  # the same grammar as a JSON schema, for servers that take `response_format`

    @property
    def greedy(self) -> bool:
        """Answered by argmax (temperature 0), not drawn."""
        return self.temperature <= 0


class BackendError(RuntimeError):
    """The backend could not answer: the clip fails with this. `transient`: the server was down,
    timed out or overloaded (a later run retries); false when it refused the request itself."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def _pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(rgb))


def _jpeg_data_url(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    _pil(rgb).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(prompt: Prompt, image_part) -> list[dict]:
    """OpenAI-style chat messages; `image_part` renders a frame in the backend's own way."""
    rendered = {"text": lambda text: {"type": "text", "text": text}, "image": image_part, "video": lambda _video: {"type": "video"}}
    return [{"role": "user", "content": [rendered[kind](value) for kind, value in prompt.parts]}]


def video_metadata(times_s: list[float], duration_s: float):
    """The frames' times as transformers' video metadata, on a millisecond clock: Qwen3-VL writes
    them into the prompt; Qwen2.5-VL's absolute time encoding takes the sampling rate
    (frames / total frames x fps), which is set to the frames' own spacing."""
    from transformers.video_utils import VideoMetadata

    spacing = (times_s[-1] - times_s[0]) / (len(times_s) - 1) if len(times_s) > 1 else duration_s
    return VideoMetadata(
        total_num_frames=max(1, round(len(times_s) * spacing * 1000)), fps=1000.0, frames_indices=[round(t * 1000) for t in times_s]
    )


class FinishedRows:
    """Rows of a batch whose answer is complete: they gave an end token, or reached their own
    token limit (the answer is cut there). `generate` steps every row until the batch's last one
    ends, so the grammar and the sampler skip finished rows instead of working on tokens nobody
    reads; a finished row is given the end token, so `generate` stops once every row is done."""

    def __init__(self, prompts: list[Prompt], prompt_len: int, eos: int | list[int]):
        self.prompt_len = prompt_len
        self.limits = [prompt_len + p.max_tokens for p in prompts]
        self.eos = {eos} if isinstance(eos, int) else set(eos)
        self.end = min(self.eos)
        self.done = [False] * len(prompts)
        self.drawn: list[int] = []  # each row's token drawn at the last step (none before the first)
        self.length = prompt_len  # the step `done` and `drawn` are for

    def __call__(self, input_ids) -> list[bool]:
        """Every row's state at this step, worked out once per step for the grammar and the sampler."""
        length = input_ids.shape[1]
        if length > self.length:
            self.drawn = input_ids[:, -1].tolist()
            self.done = [done or length >= limit or self.drawn[row] in self.eos for row, (done, limit) in enumerate(zip(self.done, self.limits))]
            self.length = length
        return self.done


class RowSampler:
    """Picks each row's next token itself: the argmax for a greedy row (or the token the grammar
    led it with, `GrammarMask.led`), a draw from its own generator (seeded by its prompt) for a
    sampled one. Greedy and sampled prompts then share one batched `generate`, and a clip's answer
    never depends on which clips shared its batch; the draws equal a batch-1 `do_sample` run under
    `torch.manual_seed(seed)`. Runs last, after the grammar's mask; returns scores whose argmax is
    the chosen token."""

    def __init__(self, prompts: list[Prompt], finished: FinishedRows, led: list[int | None] | None = None):
        self.prompts = prompts
        self.finished = finished
        self.led = led or [None] * len(prompts)
        self.generators: list | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [None if p.greedy else torch.Generator(scores.device).manual_seed(p.seed) for p in self.prompts]
        done = self.finished(input_ids)
        unled = any(g is None and led is None and not d for g, led, d in zip(self.generators, self.led, done))
        best = best_tokens(scores) if unled else None
        tokens = []
        for row, (finished, prompt, generator) in enumerate(zip(done, self.prompts, self.generators)):
            if finished:
                tokens.append(self.finished.end)
            elif generator is None:
                tokens.append(best[row] if self.led[row] is None else self.led[row])
            else:
                probs = torch.softmax(scores[row : row + 1] / prompt.temperature, dim=-1)
                tokens.append(int(torch.multinomial(probs, 1, generator=generator)[0, 0]))
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens), device=scores.device), torch.tensor(tokens, device=scores.device)] = 0.0  # one write, not one per row
        return chosen


class TransformersCaptioner:
    """In-process generation: prompts are generated `batch_size` at a time (left padding, one
    `generate` per batch), greedy and sampled alike; `RowSampler` keeps each answer its own."""

    def __init__(self, model: str, device: str = "auto", structured: str = "auto", batch_size: int = 8):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = model
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row from its last token
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.structured = structured != "off"
        self.grammar = AnswerGrammar.for_model(model, self.processor.tokenizer, self.model.config, self.model.generation_config) if self.structured else None
        self.batch_size = batch_size
        self.takes_video = getattr(self.processor, "video_processor", None) is not None

    def generate(self, prompts: list[Prompt]) -> list[str]:
        return [answer for a in range(0, len(prompts), self.batch_size) for answer in self._generate(prompts[a : a + self.batch_size])]

    def logits_processors(self, prompts: list[Prompt], finished: FinishedRows) -> list:
        """The grammar's mask (when a row has a grammar), then the sampler, which takes the tokens
        the grammar led greedy rows with."""
        if self.grammar is None or not any(p.regex for p in prompts):
            return [RowSampler(prompts, finished)]
        mask = self.grammar.mask([p.regex for p in prompts], finished, [p.greedy for p in prompts])
        return [mask, RowSampler(prompts, finished, mask.led)]

    def model_inputs(self, prompts: list[Prompt]):
        """The processor's tensors for a batch: chat template, frames or videos, left padding."""
        texts = [
            self.processor.apply_chat_template(chat_messages(p, lambda _rgb: {"type": "image"}), add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
        images = [_pil(v) for p in prompts for kind, v in p.parts if kind == "image"] or None
        videos = [v for p in prompts for kind, v in p.parts if kind == "video"]
        media = {}
        if videos:
            media = {
                "videos": [np.stack(frames) for frames, _, _ in videos],
                "video_metadata": [video_metadata(times, duration) for _, times, duration in videos],
                "do_sample_frames": False,  # the stage sampled them, at the times the prompt states
                "cap_pixels_per_frame": True,  # the reference (qwen-vl-utils) per-frame pixel budget
            }
        return self.processor(text=texts, images=images, **media, return_tensors="pt", padding=True).to(self.device)

    def _generate(self, prompts: list[Prompt]) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        inputs = self.model_inputs(prompts)
        prompt_len = inputs["input_ids"].shape[1]  # padded: every row's answer starts here
        tokenizer = self.processor.tokenizer
        finished = FinishedRows(prompts, prompt_len, self.model.generation_config.eos_token_id)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max(p.max_tokens for p in prompts),
                do_sample=False,  # RowSampler draws the sampled rows
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList(self.logits_processors(prompts, finished)),
            )
        return [tokenizer.decode(row[prompt_len : prompt_len + p.max_tokens], skip_special_tokens=True) for row, p in zip(out, prompts)]


class VllmCaptioner:
    """vLLM's offline engine; frames go in as PIL images, the grammar as structured outputs."""

    def __init__(self, model: str, max_images: int, structured: str = "auto", **engine_args):
        from vllm import LLM

        self.name = model
        self.structured = structured != "off"
        self.llm = LLM(model=model, limit_mm_per_prompt={"image": max_images}, seed=0, **engine_args)

    def generate(self, prompts: list[Prompt]) -> list[str]:
        conversations = [vllm_conversation(p) for p in prompts]
        params = [vllm_sampling_params(p, self.structured) for p in prompts]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def vllm_conversation(prompt: Prompt) -> list[dict]:
    return chat_messages(prompt, lambda rgb: {"type": "image_pil", "image_pil": _pil(rgb)})


def vllm_sampling_params(prompt: Prompt, structured: bool):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    guide = StructuredOutputsParams(regex=prompt.regex) if structured and prompt.regex else None
    return SamplingParams(
        temperature=prompt.temperature, max_tokens=prompt.max_tokens, seed=prompt.seed, structured_outputs=guide
    )


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# The request itself was refused (bad or too large for this clip): final. Any other status
# (401 bad key, 404 wrong URL, ...) is the endpoint's state, which a later run may find fixed.
REQUEST_REFUSED = {400, 413, 422}


class OpenAICaptioner:
    """Chat completions over HTTP. The API key is read from an environment variable and
    never logged; retries back off exponentially (honouring Retry-After)."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 300.0,
        structured: str = "vllm",
    ):
        self.name = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.client = http_client(api_key_env, timeout_s)
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.structured = structured

    def generate(self, prompts: list[Prompt]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts))

    def request_body(self, prompt: Prompt) -> dict:
        body = {
            "model": self.name,
            "messages": chat_messages(prompt, lambda rgb: {"type": "image_url", "image_url": {"url": _jpeg_data_url(rgb)}}),
            "max_tokens": prompt.max_tokens,
            "temperature": prompt.temperature,
            "seed": prompt.seed,
        }
        if self.structured == "vllm" and prompt.regex:
            body["structured_outputs"] = {"regex": prompt.regex}
        if self.structured == "json_schema" and prompt.schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "clip_answer", "strict": True, "schema": prompt.schema}}
        return body

    def _one(self, prompt: Prompt) -> str:
        response = post_retrying(self.client, self.url, self.max_retries, self.backoff_s, json=self.request_body(prompt))
        return response.json()["choices"][0]["message"]["content"] or ""


def http_client(api_key_env: str, timeout_s: float):
    """An httpx client sending the key held in `api_key_env` (none where it is unset)."""
    import httpx

    key = os.environ.get(api_key_env, "")
    return httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=timeout_s)


def post_retrying(client, url: str, max_retries: int, backoff_s: float, **request):
    """POST `request` (httpx's arguments) until the server answers 200, backing off exponentially
    (honouring Retry-After) on transport errors and RETRY_STATUS; every other answer, and the
    last failure, raise BackendError (transient unless the server refused the request itself)."""
    import httpx

    for attempt in range(max_retries + 1):
        delay = backoff_s * 2**attempt * (0.5 + random.random())
        try:
            response = client.post(url, **request)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return response
            problem = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUS:
                transient = response.status_code not in REQUEST_REFUSED
                raise BackendError(f"{problem}: {response.text[:200]}", transient)
            delay = float(response.headers.get("retry-after") or delay)
        if attempt < max_retries:
            log.warning("openai backend: %s, retry %d/%d in %.1f s", problem, attempt + 1, max_retries, delay)
            time.sleep(delay)
    raise BackendError(f"{problem} after {max_retries} retries", transient=True)
