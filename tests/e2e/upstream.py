"""A model server stand-in for ensemble tests and bench/fan_out.py: a real
HTTP/1.1 server (keep-alive) on a free loopback port that answers our /v1
predict or the V2 protocol after a fixed delay. It stands for an upstream
service outside the system, so a test can stall it or count its connections."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = 0.25


class Upstream:
    """A model server stand-in on a free loopback port: every answer after
    ``delay`` seconds, fresh with probability ``fresh`` for every input."""

    def __init__(self, fresh: float, delay: float = DELAY, protocol: str = "v1") -> None:
        self.fresh, self.delay, self.protocol = fresh, delay, protocol
        self.connections = 0
        self.requests = 0
        self.headers: list[dict[str, str]] = []  # of every request, in order
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client's pool can reuse connections

            def setup(self) -> None:
                # Headers and body are two writes: without TCP_NODELAY the body
                # waits out the client's delayed ACK (40 ms), as no real server lets it.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                super().setup()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.requests += 1
                upstream.headers.append(dict(self.headers))
                time.sleep(upstream.delay)  # the upstream model's own latency
                data = json.dumps(upstream.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the caller gave up (a timed-out member)
                    pass

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request, client_address):
                upstream.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict) -> dict:
        scores = {"fresh": self.fresh, "rotten": round(1 - self.fresh, 6)}
        label = "fresh" if self.fresh >= 0.5 else "rotten"
        if self.protocol == "v1":
            return {"outputs": [{"category": label, "scores": scores} for _ in body["inputs"]]}
        (texts,) = body["inputs"]
        n = texts["shape"][0]
        return {"model_name": "remote", "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [label] * n},
            {"name": "scores", "datatype": "FP32", "shape": [n, 2], "data": [scores["fresh"], scores["rotten"]] * n},
        ]}

    def __enter__(self) -> "Upstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
