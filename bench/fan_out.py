"""Fan-out latency: one request answered by four upstream models, each taking
250 ms, called one after another, concurrently by serve-http's ensemble, and
concurrently by the peer the seed used (asyncio + aiohttp, here under FastAPI
and uvicorn with uvloop and httptools: bench/fanout_peer.py).

    .venv/bin/python bench/fan_out.py [--requests 40] [--concurrency 8] [--rounds 3]

The upstreams are real HTTP/1.1 servers on loopback (tests/e2e/upstream.py).
Rows: the median and p95 latency of one request at a time, and the rate at
``--concurrency`` clients (each ensemble request makes four upstream calls);
rounds interleave serve-http and the peer, and the figures are medians over
rounds. Binds 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402
from tests.e2e.upstream import Upstream  # noqa: E402

TEXT = "a warm, funny, beautifully acted film"


def timed(session: requests.Session, url: str, body: dict) -> float:
    started = time.perf_counter()
    r = session.post(url, json=body, timeout=30)
    r.raise_for_status()
    return time.perf_counter() - started


def sequential(session: requests.Session, ups: list[Upstream]) -> float:
    started = time.perf_counter()
    for upstream in ups:
        session.post(f"{upstream.url}/v1/models/remote/predict", json={"inputs": [TEXT]}, timeout=30).raise_for_status()
    return time.perf_counter() - started


def one_at_a_time(call, count: int) -> tuple[float, float]:
    timings = sorted(call() for _ in range(count))
    return statistics.median(timings), timings[int(0.95 * (len(timings) - 1))]


def rate(url: str, body: dict, count: int, concurrency: int) -> float:
    local = threading.local()  # a session (its pooled connection) per client thread

    def one(_):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        timed(local.session, url, body)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="serve-bench-fanout-"))
    ups = [Upstream(p) for p in (0.9, 0.7, 0.2, 0.6)]
    for upstream in ups:
        upstream.__enter__()
    repo = logdir / "models"
    (repo / "fan").mkdir(parents=True)
    members = [{"name": f"r{i}", "model": "remote", "url": u.url} for i, u in enumerate(ups)]
    (repo / "fan" / "model.yaml").write_text(yaml.safe_dump({
        "task": "text-classification", "adapter": "ensemble", "labels": ["fresh", "rotten"],
        "options": {"members": members, "combine": "mean", "timeout_ms": 2000, "on_failure": "fail"},
    }))
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "SERVE_CACHE_BACKEND": "none", "WORKERS": "2", "THREADS": "8",
           "PROMETHEUS_MULTIPROC_DIR": str(logdir / "metrics"), "SERVE_CONTROL_DIR": str(logdir / "control"),
           "SERVE_JOBS_DIR": str(logdir / "jobs"), "ACCESS_LOG": ""}
    figures: dict[str, list[tuple[float, float, float]]] = {"serve-http": [], "fastapi+aiohttp": [], "sequential": []}
    body = {"inputs": [TEXT]}
    try:
        with procs.ServerSet(logdir) as servers:
            ours = servers.gunicorn("serve-http", env).start()
            peer = servers.uvicorn("fastapi+aiohttp", "bench.fanout_peer:app", 2,
                                   {"FANOUT_UPSTREAMS": ",".join(u.url for u in ups)}).start()
            targets = {"serve-http": f"{ours.url}/v1/models/fan/predict", "fastapi+aiohttp": f"{peer.url}/fusion"}
            session = requests.Session()
            for url in targets.values():  # pools warmed, answers checked
                for _ in range(5):
                    timed(session, url, body)
            for _ in range(args.rounds):
                for name, url in targets.items():
                    median, p95 = one_at_a_time(lambda: timed(session, url, body), args.requests)
                    figures[name].append((median, p95, rate(url, body, args.requests * 2, args.concurrency)))
                median, p95 = one_at_a_time(lambda: sequential(session, ups), max(5, args.requests // 4))
                figures["sequential"].append((median, p95, 0.0))
    finally:
        for upstream in ups:
            upstream.__exit__()
    print(f"four upstreams x 250 ms; {args.rounds} rounds, medians; rate at {args.concurrency} clients")
    print(f"{'':18} {'median ms':>10} {'p95 ms':>8} {'req/s':>7}")
    summary = {}
    for name, rows in figures.items():
        median = statistics.median(r[0] for r in rows) * 1000
        p95 = statistics.median(r[1] for r in rows) * 1000
        per_s = statistics.median(r[2] for r in rows)
        summary[name] = {"median_ms": round(median, 1), "p95_ms": round(p95, 1), "rate": round(per_s, 1)}
        print(f"{name:18} {median:10.1f} {p95:8.1f} {per_s:7.1f}" if per_s else f"{name:18} {median:10.1f} {p95:8.1f} {'-':>7}")
    ours_, peer_ = summary["serve-http"], summary["fastapi+aiohttp"]
    print(f"serve-http / sequential latency: {ours_['median_ms'] / summary['sequential']['median_ms']:.2f}")
    print(f"serve-http / peer latency: {ours_['median_ms'] / peer_['median_ms']:.2f}; rate: {ours_['rate'] / peer_['rate']:.2f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
