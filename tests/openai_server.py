"""A real OpenAI-compatible chat-completions server on loopback, answering with the tiny
Qwen2-VL through the transformers backend: images arrive as data URLs. `fail_first` requests
get HTTP 503 first, to exercise the client's retries.

Two dialects:
- `vllm` (as `vllm serve`): honours vLLM's `structured_outputs.regex`, ignores other fields.
- `openai` (as OpenAI's API and servers that copy it): a field it does not know is refused with
  HTTP 400, and `response_format` JSON schemas are enforced by lm-format-enforcer, a JSON-schema
  decoding engine of its own (not our regex), token by token.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from vidcurate.stages.captioners import Prompt, RowSampler, TransformersCaptioner

# What OpenAI's chat completions accept (the part of it this client could send).
OPENAI_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed", "response_format", "top_p", "n", "stop"}


class JsonSchemaCaptioner(TransformersCaptioner):
    """The same model and processor as `base`, constrained by a prompt's JSON schema through
    lm-format-enforcer instead of llguidance."""

    def __init__(self, base: TransformersCaptioner):
        self.__dict__.update(base.__dict__)
        tokenizer = self.processor.tokenizer
        from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData

        special = set(tokenizer.all_special_ids)
        regular = [(i, tokenizer.decode([i]), False) for i in range(len(tokenizer)) if i not in special]
        eos = self.model.generation_config.eos_token_id
        decode = lambda ids: tokenizer.decode(ids).rstrip("\ufffd")  # noqa: E731
        self.tokens = TokenEnforcerTokenizerData(regular, decode, eos, False, len(tokenizer))

    def logits_processors(self, prompts: list[Prompt], finished) -> list:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        enforcers = [TokenEnforcer(self.tokens, JsonSchemaParser(p.schema)) for p in prompts]
        return [AllowedTokensMask(enforcers, finished), RowSampler(prompts, finished)]


class AllowedTokensMask:
    """Each unfinished row's scores masked to the tokens its lm-format-enforcer allows next."""

    def __init__(self, enforcers: list, finished):
        self.enforcers, self.finished = enforcers, finished

    def __call__(self, input_ids, scores):
        import torch

        masked = scores.clone()
        for row, (enforcer, done) in enumerate(zip(self.enforcers, self.finished(input_ids))):
            if not done:
                allowed = enforcer.get_allowed_tokens(input_ids[row, self.finished.prompt_len :].tolist()).allowed_tokens
                index = torch.tensor(allowed, device=scores.device)
                masked[row] = float("-inf")
                masked[row, index] = scores[row, index]
        return masked


def _prompt(body: dict) -> Prompt:
    parts = []
    for part in body["messages"][-1]["content"]:
        if part["type"] == "text":
            parts.append(("text", part["text"]))
        else:
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            parts.append(("image", np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
    regex = (body.get("structured_outputs") or {}).get("regex")
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    return Prompt(parts, regex, body["max_tokens"], body["temperature"], body["seed"], schema)


class OpenAIServer:
    def __init__(self, captioner, fail_first: int = 0, dialect: str = "vllm"):
        self.requests: list[dict] = []
        self.failures_left = fail_first
        schema_captioner = JsonSchemaCaptioner(captioner) if dialect == "openai" else None
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request):
            body = await request.json()
            self.requests.append(body)
            if self.failures_left > 0:
                self.failures_left -= 1
                return JSONResponse({"error": "overloaded"}, status_code=503, headers={"retry-after": "0.1"})
            if dialect == "openai":
                unknown = sorted(set(body) - OPENAI_FIELDS)
                if unknown:
                    message = f"Unrecognized request argument supplied: {unknown[0]}"
                    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=400)
            prompt = _prompt(body)
            answer = (schema_captioner if dialect == "openai" and prompt.schema else captioner).generate([prompt])[0]
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}], "model": body["model"]}

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # a free port, held from now on: no race with other servers
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"

    def __enter__(self) -> OpenAIServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
