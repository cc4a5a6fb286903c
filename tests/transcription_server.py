"""A real OpenAI-compatible `/v1/audio/transcriptions` server on loopback, the one boundary the
speech tests put a stand-in at: where vLLM would serve Whisper, it hears the uploaded WAV with
pocketsphinx (a real recogniser) and answers in OpenAI's `verbose_json` shape (words and
segments with `start`/`end`, `language` as a name). `fail_first` requests get HTTP 503 first;
until it is entered, its port is held and nobody answers: the server is down.
"""

from __future__ import annotations

import email.parser
import io
import json
import socket
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from vidcurate.stages.speech import Pocketsphinx, SpeechConfig


def form_fields(content_type: str, body: bytes) -> dict[str, list[bytes]]:
    """A multipart/form-data body's fields, by name, each value as sent."""
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, list[bytes]] = {}
    for part in message.get_payload():
        fields.setdefault(part.get_param("name", header="content-disposition"), []).append(part.get_payload(decode=True))
    return fields


def wav_samples(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32767


class TranscriptionServer:
    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.failures_left = fail_first
        self.recogniser = Pocketsphinx(SpeechConfig(backend="pocketsphinx"))
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                fields = form_fields(self.headers["content-type"], body)
                with lock:
                    server.requests.append({k: v for k, v in fields.items() if k != "file"})
                    failing = server.failures_left > 0
                    server.failures_left -= failing
                    heard = None if failing or self.path != "/v1/audio/transcriptions" else server.recogniser.transcribe(wav_samples(fields["file"][0]), None)
                if heard is None:
                    self._answer(503 if failing else 404, {"error": "overloaded" if failing else "not found"})
                    return
                words = [{"word": w["word"], "start": w["start_s"], "end": w["end_s"]} for w in heard["words"]]
                segment = {"id": 0, "start": words[0]["start"], "end": words[-1]["end"], "text": " ".join(w["word"] for w in words)} if words else None
                self._answer(200, {"task": "transcribe", "language": "english", "text": segment["text"] if segment else "", "words": words, "segments": [segment] if segment else []})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 503:
                    self.send_header("retry-after", "0.05")
                self.end_headers()
                self.wfile.write(data)

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # held from now on: down (refusing nothing, answering nothing) until entered
        self.base_url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        self.server = ThreadingHTTPServer(self.socket.getsockname(), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = self.socket
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TranscriptionServer:
        self.socket.listen()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.socket.close()
