"""Scrape cost of /metrics under Gunicorn's multiprocess mode.

Starts serve-http with 5 workers (sentiment only), then measures the median
time of a /metrics scrape:

1. just after start;
2. after 10,000 classification requests;
3. on a second server with ``MAX_REQUESTS`` set low, after 50 worker recycles
   (the case that leaves one set of files per dead worker without compaction).

Prints the figures, the number of files in the metrics folder and the ratios to
the first scrape. Run: ``.venv/bin/python bench/metrics_scrape.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import post_request, send_all  # noqa: E402
from bench.procs import BIN, HOST, Server, free_port  # noqa: E402
from bench.workload import REPO_ROOT  # noqa: E402


def scrape_ms(port: int, repeat: int = 21) -> tuple[float, str]:
    times, body = [], ""
    for _ in range(repeat):
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        started = time.perf_counter()
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        times.append((time.perf_counter() - started) * 1000)
        conn.close()
    return statistics.median(times), body


def counter(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def payloads(start: int, count: int, port: int) -> list[bytes]:
    return [
        post_request(HOST, port, "/v1/classify", json.dumps({"text": f"review {i}: a fine film"}).encode())
        for i in range(start, start + count)
    ]


def start(tmp: Path, label: str, extra: dict[str, str]) -> Server:
    port = free_port()
    env = {
        "HOST": HOST, "PORT": str(port), "WORKERS": "5", "THREADS": "4", "SERVE_MODELS": "sentiment",
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"), "SERVE_CACHE_BACKEND": "none", "ACCESS_LOG": "",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / label), **extra,
    }
    return Server(label, [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "serve_http:app"], env, port, tmp).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--recycles", type=int, default=50)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        server = start(tmp, "steady", {})
        try:
            base, _ = scrape_ms(server.port)
            rows.append(("5 workers, just started", base, len(list((tmp / "steady").glob("*.db"))), 0))
            statuses = send_all(HOST, server.port, payloads(0, args.requests, server.port), 16, 600)
            assert statuses == {200: args.requests}, statuses
            after, body = scrape_ms(server.port)
            assert counter(body, 'serve_http_requests_total{method="POST",route="/v1/classify",status="2xx"}') == args.requests
            rows.append((f"after {args.requests:,} requests", after, len(list((tmp / "steady").glob("*.db"))), 0))
        finally:
            server.stop()

        server = start(tmp, "recycled", {"MAX_REQUESTS": "20"})
        try:
            sent = 0
            exits = 0.0
            while exits < args.recycles:
                statuses = send_all(HOST, server.port, payloads(sent, 200, server.port), 8, 120)
                assert statuses == {200: 200}, statuses
                sent += 200
                _, body = scrape_ms(server.port, repeat=1)
                exits = counter(body, "serve_http_worker_exits_total")
            recycled, body = scrape_ms(server.port)
            counted = counter(body, 'serve_http_requests_total{method="POST",route="/v1/classify",status="2xx"}')
            assert counted == sent, (counted, sent)
            rows.append((f"after {exits:.0f} recycles ({sent:,} requests)", recycled,
                         len(list((tmp / "recycled").glob("*.db"))), exits))
        finally:
            server.stop()

    print(f"{'case':<36} {'scrape p50 ms':>14} {'files':>6} {'x start':>8}")
    for label, ms, files, _ in rows:
        print(f"{label:<36} {ms:>14.2f} {files:>6} {ms / rows[0][1]:>8.2f}")


if __name__ == "__main__":
    main()
