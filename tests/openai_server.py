"""A real OpenAI-compatible chat-completions server on loopback, answering with the tiny
Qwen2-VL through the transformers backend (as `vllm serve` would with a real model): images
arrive as data URLs and vLLM's `structured_outputs.regex` is honoured. `fail_first` requests
get HTTP 503 first, to exercise the client's retries."""

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

from stages.captioners import Prompt


def _prompt(body: dict) -> Prompt:
    parts = []
    for part in body["messages"][-1]["content"]:
        if part["type"] == "text":
            parts.append(("text", part["text"]))
        else:
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            parts.append(("image", np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
    regex = (body.get("structured_outputs") or {}).get("regex")
    return Prompt(parts, regex, body["max_tokens"], body["temperature"], body["seed"])


class OpenAIServer:
    def __init__(self, captioner, fail_first: int = 0):
        self.requests: list[dict] = []
        self.failures_left = fail_first
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request):
            body = await request.json()
            self.requests.append(body)
            if self.failures_left > 0:
                self.failures_left -= 1
                return JSONResponse({"error": "overloaded"}, status_code=503, headers={"retry-after": "0.1"})
            answer = captioner.generate([_prompt(body)])[0]
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
