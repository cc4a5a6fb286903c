"""A real HTTP reverse proxy on loopback that can suffer an outage: while `failing` is set, for
the next `fail_next` requests, or for writes (PUT, POST) to a path containing `fail_writes_to`,
it answers 503 instead of forwarding. Put in front of the
moto S3 server, it makes the object store error for a while during a publish."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FlakyProxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.failing = False
        self.fail_next = 0
        self.fail_writes_to: str | None = None
        self.forwarded = 0
        self.refused = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with lock:
                    writes_to = self.command in ("PUT", "POST") and bool(proxy.fail_writes_to and proxy.fail_writes_to in self.path)
                    refuse = proxy.failing or proxy.fail_next > 0 or writes_to
                    proxy.fail_next -= proxy.fail_next > 0
                    proxy.refused += refuse
                if refuse:
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>outage</Message></Error>"
                    self.send_response(503)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                headers["content-length"] = str(len(body))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                finally:
                    conn.close()
                with lock:
                    proxy.forwarded += 1
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                length = response.getheader("content-length", "0") if self.command == "HEAD" else str(len(payload))
                self.send_header("content-length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
