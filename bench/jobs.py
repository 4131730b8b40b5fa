"""Background jobs vs the synchronous endpoint, on both job backends.

    .venv/bin/python bench/jobs.py [--texts 10000] [--concurrency 16]

For each backend (embedded: SQLite + local disk; scale-out: Redis + S3 on a
loopback moto server) it starts Gunicorn (the `make serve` defaults, prediction
cache off so every text is computed) and one job worker, then times

- sync: every text as its own `POST /v1/models/sentiment/predict`, closed loop
  at the given concurrency (bench.loadgen.send_all, asyncio client);
- job: one `POST /v1/jobs` with all the texts, polled until it succeeded, and
  its results downloaded (through the pre-signed URL on S3).

The two phases run one after the other, never together. Prints texts/s and the
ratio; writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import post_request, send_all  # noqa: E402
from serving.settings import REPO_ROOT, default_workers  # noqa: E402
from tests.e2e.server import GunicornServer, JobWorker, RedisServer, S3Server, wait_for  # noqa: E402

WORKERS = default_workers()  # as `make serve` runs it
ADJECTIVES = ["warm", "dull", "brilliant", "tedious", "moving", "clumsy", "sharp", "lifeless", "funny", "bland"]
NOUNS = ["film", "script", "cast", "ending", "score", "plot", "comedy", "thriller", "sequel", "debut"]


def texts(count: int) -> list[str]:
    return [
        f"a {ADJECTIVES[i % 10]} {NOUNS[(i * 7) % 10]}, {ADJECTIVES[(i * 3) % 10]} from start to finish ({i})"
        for i in range(count)
    ]


def sync_rate(server: GunicornServer, inputs: list[str], concurrency: int) -> float:
    payloads = [
        post_request("127.0.0.1", server.port, "/v1/models/sentiment/predict", json.dumps({"inputs": [t]}).encode())
        for t in inputs
    ]
    started = time.perf_counter()
    statuses = send_all("127.0.0.1", server.port, payloads, concurrency, timeout_s=1800)
    seconds = time.perf_counter() - started
    assert statuses == {200: len(inputs)}, statuses
    return len(inputs) / seconds


def job_rate(server: GunicornServer, worker: JobWorker, inputs: list[str]) -> tuple[float, float]:
    """(texts/s from POST to results downloaded, seconds the worker ran the job)."""
    started = time.perf_counter()
    r = requests.post(f"{server.url}/v1/jobs", json={"model": "sentiment", "inputs": inputs}, timeout=120)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def finished():
        worker.check_alive()
        job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for(finished, 1800, "the job", interval=0.1)
    assert job["status"] == "succeeded", job
    result = requests.get(f"{server.url}/v1/jobs/{job_id}/result", timeout=300)
    lines = result.text.splitlines()
    seconds = time.perf_counter() - started
    assert len(lines) == len(inputs)
    ran = _seconds(job["finished_at"]) - _seconds(job["started_at"])
    return len(inputs) / seconds, ran


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_backend(backend: str, inputs: list[str], concurrency: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-jobs-{backend}-"))
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "sentiment",
        "SERVE_CACHE_BACKEND": "none",
        "SERVE_JOBS_DIR": str(tmp / "jobs"),
        "ACCESS_LOG": "",
    }
    extra = []
    try:
        if backend == "redis+s3":
            redis_server = RedisServer(tmp).start()
            extra.append(redis_server)
            s3 = S3Server(tmp).start()
            extra.append(s3)
            env.update({"REDIS_URL": redis_server.url, **s3.settings_env()})
        server = GunicornServer(tmp, env={**env, "WORKERS": str(WORKERS)}).start()
        extra.append(server)
        worker = JobWorker(server).start()
        extra.append(worker)
        # Warm both paths (first requests, first job) before timing.
        sync_rate(server, inputs[:200], concurrency)
        job_rate(server, worker, inputs[:200])
        sync = sync_rate(server, inputs, concurrency)
        job, ran = job_rate(server, worker, inputs)
        return {"backend": backend, "texts": len(inputs), "sync_texts_per_s": sync,
                "job_texts_per_s": job, "job_worker_seconds": ran, "ratio": job / sync}
    finally:
        for process in reversed(extra):
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    inputs = texts(args.texts)
    rows = [run_backend(backend, inputs, args.concurrency) for backend in ("embedded", "redis+s3")]
    print(f"\n{args.texts} texts to `sentiment`; sync = one text per request at concurrency {args.concurrency}; "
          f"{WORKERS} Gunicorn workers, 1 job worker process, batch size 64, cache off")
    print(f"{'backend':<10} {'sync texts/s':>13} {'job texts/s':>12} {'job run s':>10} {'job / sync':>11}")
    for row in rows:
        print(f"{row['backend']:<10} {row['sync_texts_per_s']:>13.0f} {row['job_texts_per_s']:>12.0f} "
              f"{row['job_worker_seconds']:>10.2f} {row['ratio']:>10.1f}x")
    out = REPO_ROOT / "bench" / "results" / "jobs.json"
    out.write_text(json.dumps({"concurrency": args.concurrency, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
