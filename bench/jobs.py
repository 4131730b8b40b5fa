"""Background jobs: how they scale over job processes, what a shard costs,
a worker's memory on a big job, and a job against the synchronous endpoint.

    .venv/bin/python bench/jobs.py [--parts overhead,scale,memory,sync] [--texts 100000]

- overhead: in one process, each shard of a 20-shard job run by the JobRunner
  against a real redis-server and SQLite; the shard's time outside the model
  calls (claim, reading its inputs, progress, writing its part, completing it,
  and its share of the enqueue) against its time inside them (decode, model,
  encode), per shard size; medians over the shards.
- scale: one job of --texts texts to `sentiment` with 1, 2 and 4 job worker
  processes (SERVE_JOB_WORKERS), against one Redis (results on local disk) and
  the embedded default (SQLite); texts/s from the job's creation to its finish
  (the record's times) and the ratio to one process, medians of --rounds
  interleaved rounds. Beside it the model's own rate in a tight loop in one
  process (run_batch over batches of 64), for the efficiency of one process.
- memory: the peak PSS of a job process while jobs of a tenth, half, once and
  twice --texts texts are read from S3 by key (moto) and their results written
  there: it must not grow with the job.
- sync: a 10,000-text job against the same texts sent one per request at
  concurrency 16, on both backends (the table before shards).

Prints each table and writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import post_request, send_all  # noqa: E402
from bench.procs import pss_mb  # noqa: E402
from serving.settings import REPO_ROOT, Settings, default_workers  # noqa: E402
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
    job = timed_job(server, worker, {"model": "sentiment", "inputs": inputs}, interval=0.1)
    result = requests.get(f"{server.url}/v1/jobs/{job['id']}/result", timeout=300)
    lines = result.text.splitlines()
    seconds = time.perf_counter() - started
    assert len(lines) == len(inputs)
    return len(inputs) / seconds, job["run_seconds"]


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


# --- overhead: a shard's cost outside the model, in one process ------------------

SHARDS = 20
SIZES = (500, 1000, 2000, 5000, 10000)


class Timed:
    """Instrumentation: a store, result storage or queue whose calls add their time to ``spent``."""

    def __init__(self, inner, spent: list[float]) -> None:
        self.inner, self.spent = inner, spent

    def __getattr__(self, name: str):
        found = getattr(self.inner, name)
        if not callable(found):
            return found

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return found(*args, **kwargs)
            finally:
                self.spent[0] += time.perf_counter() - started

        return timed


def shard_overhead(backend: str, tmp: Path, redis_url: str, inputs: list[str]) -> list[dict]:
    import jobs.runner as runner_module
    from jobs.inference import run_batch
    from jobs.queue import JobQueue
    from jobs.records import Job, new_job_id, shard_inputs
    from jobs.redis_store import RedisJobStore
    from jobs.results import LocalResults
    from jobs.runner import JobRunner
    from jobs.sqlite_store import SqliteJobStore
    from predict import ModelRegistry, Predictor
    from serving.cache import NullCache

    registry = ModelRegistry(REPO_ROOT / "models", ["sentiment"], runs_jobs=True)
    registry.load_all()
    predictor = Predictor(registry, NullCache(), batching=False)
    gc.collect()
    gc.freeze()  # as jobs/worker.py does before its processes fork
    model_s, backend_s = [0.0], [0.0]

    def timed_batch(*args, **kwargs):
        started = time.perf_counter()
        try:
            return run_batch(*args, **kwargs)
        finally:
            model_s[0] += time.perf_counter() - started

    runner_module.run_batch = timed_batch  # instrumentation: the model calls' share of each shard
    folder = tmp / f"overhead-{backend}"
    if backend == "redis":
        store = RedisJobStore(redis_url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    else:
        store = SqliteJobStore(folder / "jobs.db")
    queue = JobQueue(redis_url if backend == "redis" else "", folder)
    results = LocalResults(folder / "results")
    runner = JobRunner(Timed(store, backend_s), Timed(results, backend_s), predictor, heartbeat_s=2.0,
                       requeue=queue.enqueue)
    rows = []
    for size in SIZES:
        total = size * SHARDS
        texts_ = (inputs * (total // len(inputs) + 1))[:total]
        job = Job(id=new_job_id(), model="sentiment", total=total, batch_size=64, shard_size=size)
        started = time.perf_counter()
        store.create(job, shard_inputs(texts_, job))  # the inputs stored with the record
        queue.enqueue_shards(job.id, job.shards)
        enqueue = (time.perf_counter() - started) / job.shards
        model, backends, other = [], [], []
        for index in range(job.shards):
            model_s[0] = backend_s[0] = 0.0
            started = time.perf_counter()
            runner(job.id, index)
            spent = time.perf_counter() - started
            if index < job.shards - 1:  # the last one also joins the parts: the job's, not the shard's
                model.append(model_s[0])
                backends.append(backend_s[0] + enqueue)
                other.append(spent - model_s[0] - backend_s[0])
        assert store.get(job.id).status == "succeeded"
        queue.huey.flush()
        rows.append({"backend": backend, "shard_size": size, "model_ms": statistics.median(model) * 1000,
                     "enqueue_ms": enqueue * 1000, "backend_ms": statistics.median(backends) * 1000,
                     "other_ms": statistics.median(other) * 1000,
                     "overhead_ratio": statistics.median(b / m for b, m in zip(backends, model)),
                     "outside_ratio": statistics.median((b + o) / m for b, o, m in zip(backends, other, model))})
    runner_module.run_batch = run_batch
    return rows


def tight_loop_rate(inputs: list[str]) -> float:
    """The model's own texts/s in one process: run_batch over batches of 64, no job around it."""
    from jobs.inference import run_batch
    from predict import ModelRegistry, Predictor
    from serving.cache import NullCache
    from serving.threads import set_compute_threads

    set_compute_threads(1)
    registry = ModelRegistry(REPO_ROOT / "models", ["sentiment"], runs_jobs=True)
    registry.load_all()
    predictor = Predictor(registry, NullCache(), batching=False)
    sample = inputs[:20_000]
    run_batch(predictor, "sentiment", sample[:64], {})
    started = time.perf_counter()
    for lo in range(0, len(sample), 64):
        run_batch(predictor, "sentiment", sample[lo : lo + 64], {})
    return len(sample) / (time.perf_counter() - started)


# --- scale: one job over 1, 2 and 4 job processes -------------------------------

PROCESSES = (1, 2, 4)


def timed_job(server: GunicornServer, worker: JobWorker, body: dict, timeout: float = 1800,
              interval: float = 0.5) -> dict:
    """The job, once it succeeded, with its ``seconds`` from creation and ``run_seconds`` from its first claim.
    Polled every ``interval`` (twice a second, as a client would: the times are the record's, not the polls')."""
    r = requests.post(f"{server.url}/v1/jobs", json=body, timeout=600)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def finished():
        worker.check_alive()
        job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for(finished, timeout, "the job", interval=interval)
    assert job["status"] == "succeeded", job
    job["seconds"] = _seconds(job["finished_at"]) - _seconds(job["created_at"])
    job["run_seconds"] = _seconds(job["finished_at"]) - _seconds(job["started_at"])  # from the first claim
    return job


def scale(backend: str, tmp: Path, redis_url: str, inputs: list[str], rounds: int) -> list[dict]:
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "sentiment",
        "SERVE_CACHE_BACKEND": "none",
        "SERVE_JOBS_DIR": str(tmp / f"scale-{backend}"),
        "SERVE_JOB_METRICS_PORT": "0",
        "ACCESS_LOG": "",
        "WORKERS": "1",  # only polls while the job runs
        **({"REDIS_URL": redis_url} if backend == "redis" else {}),
    }
    server = GunicornServer(tmp, env=env).start()
    seconds: dict[int, list[float]] = {p: [] for p in PROCESSES}
    running: dict[int, list[float]] = {p: [] for p in PROCESSES}
    try:
        for _ in range(rounds):
            for processes in PROCESSES:
                server.env["SERVE_JOB_WORKERS"] = str(processes)
                worker = JobWorker(server, name=f"worker-{backend}-{processes}").start()
                try:
                    # Warm every process (its first shard pays the imports) before timing.
                    timed_job(server, worker, {"model": "sentiment", "inputs": inputs[: 50 * processes],
                                               "shard_size": 50})
                    job = timed_job(server, worker, {"model": "sentiment", "inputs": inputs})
                    seconds[processes].append(job["seconds"])
                    running[processes].append(job["run_seconds"])
                finally:
                    worker.stop()
    finally:
        server.stop()
    rate = {p: len(inputs) / statistics.median(seconds[p]) for p in PROCESSES}
    run_rate = {p: len(inputs) / statistics.median(running[p]) for p in PROCESSES}
    return [{"backend": backend, "processes": p, "texts_per_s": rate[p], "ratio": rate[p] / rate[1],
             "run_texts_per_s": run_rate[p], "run_ratio": run_rate[p] / run_rate[1],
             "seconds": seconds[p], "run_seconds": running[p]} for p in PROCESSES]


# --- memory: a big job read from S3 ----------------------------------------------


class PeakPss:
    """Samples the PSS of each job process every 0.1 s: the peak of any one,
    and the median of the samples (the steady state while the shards run)."""

    def __init__(self, worker: JobWorker) -> None:
        self.worker, self.samples = worker, [0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak(self) -> float:
        return max(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def _sample(self) -> None:
        pids = self.worker.processes()
        while not self._stop.wait(0.1):
            for pid in pids:
                try:
                    self.samples.append(pss_mb([pid]))
                except (FileNotFoundError, ProcessLookupError):
                    pass

    def __enter__(self) -> "PeakPss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if len(self.samples) > 1:
            self.samples.pop(0)


def memory(tmp: Path, redis_url: str, inputs: list[str]) -> list[dict]:
    s3 = S3Server(tmp).start()
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": "sentiment",
        "SERVE_CACHE_BACKEND": "none",
        "SERVE_JOBS_DIR": str(tmp / "memory"),
        "SERVE_JOB_METRICS_PORT": "0",
        "SERVE_JOB_INPUT_URIS": f"s3://{s3.bucket}/inputs/",
        "SERVE_JOB_MAX_INPUTS": str(2 * len(inputs)),
        "ACCESS_LOG": "",
        "WORKERS": "1",
        "REDIS_URL": redis_url,
        **s3.settings_env(),
    }
    rows = []
    try:
        server = GunicornServer(tmp, env=env).start()
        worker = JobWorker(server, name="worker-memory").start()
        try:
            for count in (len(inputs) // 10, len(inputs) // 2, len(inputs), 2 * len(inputs)):
                key = f"inputs/texts-{count}.jsonl"
                lines = (json.dumps(inputs[i % len(inputs)] + (f" (copy {i // len(inputs)})" if i >= len(inputs) else ""))
                         for i in range(count))
                s3.client().put_object(Bucket=s3.bucket, Key=key, Body="".join(line + "\n" for line in lines).encode())
                with PeakPss(worker) as peak:
                    job = timed_job(server, worker, {"model": "sentiment", "inputs_uri": f"s3://{s3.bucket}/{key}"})
                rows.append({"texts": count, "median_pss_mb": peak.median, "peak_pss_mb": peak.peak,
                             "seconds": job["seconds"]})
        finally:
            worker.stop()
            server.stop()
    finally:
        s3.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="overhead,scale,memory,sync")
    parser.add_argument("--texts", type=int, default=100_000, help="texts of the scale and memory jobs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync-texts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    parts = args.parts.split(",")
    inputs = texts(args.texts)
    report: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    redis_server = RedisServer(tmp).start()
    try:
        if "overhead" in parts:
            rows = shard_overhead("redis", tmp, redis_server.url, inputs) + \
                shard_overhead("embedded", tmp, redis_server.url, inputs)
            report["overhead"] = rows
            print(f"\nWhat a shard costs beside its model calls, one process, {SHARDS} shards per size, medians")
            print("(model: decode, model, encode; shard overhead: its share of the enqueue (the inputs stored with"
                  " the record, the message) and its claim, inputs read, progress, part written, completion;"
                  " other: the runner's own Python, result lines and freeing them)")
            print(f"{'backend':<9} {'shard size':>10} {'model ms':>9} {'overhead ms':>12} {'other ms':>9}"
                  f" {'overhead / model':>17} {'all outside / model':>20}")
            for row in rows:
                print(f"{row['backend']:<9} {row['shard_size']:>10} {row['model_ms']:>9.1f} {row['backend_ms']:>12.2f}"
                      f" {row['other_ms']:>9.2f} {row['overhead_ratio'] * 100:>16.1f}% {row['outside_ratio'] * 100:>19.1f}%")
            fits = [size for size in SIZES
                    if all(r["overhead_ratio"] <= 0.05 for r in rows if r["shard_size"] == size)]
            print(f"smallest shard size with overhead <= 5 % of model time on both backends: "
                  f"{fits[0] if fits else 'none'} (SERVE_JOB_SHARD_SIZE default: {Settings(_env_file=None).job_shard_size})")
        if "scale" in parts:
            loop = tight_loop_rate(inputs)
            rows = scale("redis", tmp, redis_server.url, inputs, args.rounds) + \
                scale("embedded", tmp, redis_server.url, inputs, args.rounds)
            report["scale"] = {"tight_loop_texts_per_s": loop, "rows": rows}
            print(f"\nOne job of {len(inputs)} texts to `sentiment` (shard size SERVE_JOB_SHARD_SIZE, batch 64),"
                  f" medians of {args.rounds} rounds; the model in a tight loop in one process: {loop:.0f} texts/s")
            print("(texts/s from the job's creation to its finish, and from its first shard's claim to its finish)")
            print(f"{'backend':<9} {'processes':>9} {'texts/s':>9} {'vs 1 process':>13} {'from claim':>11}"
                  f" {'vs 1 process':>13} {'vs tight loop':>14}")
            for row in rows:
                print(f"{row['backend']:<9} {row['processes']:>9} {row['texts_per_s']:>9.0f} {row['ratio']:>12.2f}x"
                      f" {row['run_texts_per_s']:>11.0f} {row['run_ratio']:>12.2f}x {row['texts_per_s'] / loop:>13.2f}x")
            for backend in ("redis", "embedded"):
                by = {row["processes"]: row["ratio"] for row in rows if row["backend"] == backend}
                print(f"{backend}: 2 processes {by[2]:.2f}x one (target >= 1.8: {'PASS' if by[2] >= 1.8 else 'MISS'}),"
                      f" 4 processes {by[4] / by[2]:.2f}x two (target >= 1: {'PASS' if by[4] >= by[2] else 'MISS'})")
        if "memory" in parts:
            rows = memory(tmp, redis_server.url, inputs)
            report["memory"] = rows
            print("\nPSS of the job process while a job is read from S3 by key and written there (Redis, moto):"
                  " median of the samples (its shards running) and peak (the join's upload at the end)")
            for row in rows:
                print(f"{row['texts']:>8} texts: median {row['median_pss_mb']:.0f} MiB, peak {row['peak_pss_mb']:.0f} MiB,"
                      f" {row['seconds']:.1f} s")
            print(f"biggest / smallest job: median {rows[-1]['median_pss_mb'] / rows[0]['median_pss_mb']:.2f},"
                  f" peak {rows[-1]['peak_pss_mb'] / rows[0]['peak_pss_mb']:.2f}")
    finally:
        redis_server.stop()
    if "sync" in parts:
        sync_inputs = texts(args.sync_texts)
        rows = [run_backend(backend, sync_inputs, args.concurrency) for backend in ("embedded", "redis+s3")]
        report["sync"] = {"concurrency": args.concurrency, "rows": rows}
        print(f"\n{args.sync_texts} texts to `sentiment`; sync = one text per request at concurrency {args.concurrency}; "
              f"{WORKERS} Gunicorn workers, 1 job worker process, batch size 64, cache off")
        print(f"{'backend':<10} {'sync texts/s':>13} {'job texts/s':>12} {'job run s':>10} {'job / sync':>11}")
        for row in rows:
            print(f"{row['backend']:<10} {row['sync_texts_per_s']:>13.0f} {row['job_texts_per_s']:>12.0f} "
                  f"{row['job_worker_seconds']:>10.2f} {row['ratio']:>10.1f}x")
    out = REPO_ROOT / "bench" / "results" / "jobs.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
