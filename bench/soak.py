"""Soak test: the service as a user runs it, under steady mixed traffic for minutes.

    .venv/bin/python bench/soak.py [--minutes 10] [--report-every 30] [--check]

Starts Gunicorn (5 workers, worker recycling on: MAX_REQUESTS 2000, jitter 200)
and a job worker (``python -m jobs.worker``), then runs closed-loop clients
(each sends its next request when the last one is answered) on 127.0.0.1:

- classify: ``POST /v1/classify``, one review text (sentiment);
- detect: ``POST /v1/detect``, ``tasks/example.jpg`` (faces, Haar cascade);
- imagenet: ``POST /v1/models/imagenet/predict``, the same photo;
- embed: ``POST /v1/embeddings``, one text (minilm);
- job: ``POST /v1/jobs`` of 20 texts (sentiment), polled until it ends, its
  results fetched and counted.

The prediction cache is off (every request runs its model). Every
``--report-every`` seconds it prints the total PSS of the Gunicorn master and
its workers and of the job worker with its processes, worker recycles (the
``serve_http_worker_exits_total`` counter) and each kind's answers, errors and
503s in the interval (a job counts once, when it ends); at the end of every minute, each kind's p50/p99 latency
over that minute (2xx answers; a job from its POST to its fetched results).
PSS is sampled every 2 s; each report gives the interval's floor and median.
The summary checks two targets: the PSS floor of the last interval within 5 %
of the floor of the interval that ends minute 1 (a leak lifts every sample;
a worker's transient inference buffers, or one just forked, lift only some), and every later minute's p99 within 1.5x of minute
1's, per kind. A report, not a test: it exits 0 unless the service does not
start (1), or, with ``--check``, when a target is missed or the service died.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402
from bench.jobs import texts  # noqa: E402
from bench.loadgen import Client, percentile, post_request, run_async  # noqa: E402
from bench.metrics_scrape import counter, scrape_ms  # noqa: E402
from bench.workload import REPO_ROOT, available, serve_list  # noqa: E402

MODELS = ["sentiment", "faces", "imagenet", "minilm"]
IMAGE = base64.b64encode((REPO_ROOT / "tasks" / "example.jpg").read_bytes()).decode("ascii")
TEXTS = texts(1000)  # varied inputs, as real traffic is
JOB_MODEL, JOB_INPUTS = "sentiment", 20
JOB_POLL_S = 0.1
REQUEST_TIMEOUT_S = 30.0  # an answer later than this is an error, not a latency
JOB_TIMEOUT_S = 120.0
PSS_GROWTH_MAX = 0.05
P99_RATIO_MAX = 1.5
OK, OVERLOADED = "ok", "503"


@dataclass(frozen=True)
class Kind:
    """One kind of traffic: its route, its body for the i-th request, its closed-loop clients."""

    name: str
    clients: int
    path: str = ""
    body: Callable[[int], dict] | None = None


KINDS = [
    Kind("classify", 3, "/v1/classify", lambda i: {"text": TEXTS[i % len(TEXTS)]}),
    Kind("detect", 2, "/v1/detect",
         lambda i: {"requests": [{"image": {"content": IMAGE}, "features": [{"maxResults": 20}]}]}),
    Kind("imagenet", 2, "/v1/models/imagenet/predict", lambda i: {"inputs": [IMAGE]}),
    Kind("embed", 3, "/v1/embeddings", lambda i: {"model": "minilm", "input": TEXTS[i % len(TEXTS)]}),
    Kind("job", 2),  # its own loop: submit, poll, fetch (job_client)
]
HTTP_KINDS = [kind for kind in KINDS if kind.body is not None]


def outcome(status: int) -> str:
    if 200 <= status < 300:
        return OK
    return OVERLOADED if status == 503 else f"HTTP {status}"


class Tally:
    """Every finished request: (kind, monotonic time it ended, latency ms, outcome)."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, float, float, str]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, latency_ms: float, result: str) -> None:
        with self.lock:
            self.samples.append((kind, time.monotonic(), latency_ms, result))

    def window(self, start: float, end: float) -> list[tuple[str, float, float, str]]:
        with self.lock:
            return [s for s in self.samples if start <= s[1] < end]


# --- load -----------------------------------------------------------------------


def http_clients(port: int, tally: Tally, stop: threading.Event) -> None:
    """Every HTTP kind's closed-loop clients on one event loop (the loadgen client: little CPU)."""

    async def loop(kind: Kind, client: Client, first: int) -> None:
        assert kind.body is not None
        i = first
        while not stop.is_set():
            payload = post_request(procs.HOST, port, kind.path, json.dumps(kind.body(i)).encode())
            i += kind.clients
            started = time.perf_counter()
            try:
                result = outcome(await asyncio.wait_for(client.request(payload), REQUEST_TIMEOUT_S))
            except TimeoutError:  # before OSError: it is one
                result = "timeout"
            except (ConnectionError, OSError):
                result = "connection lost"
            tally.add(kind.name, (time.perf_counter() - started) * 1e3, result)

    async def main() -> None:
        clients = {kind.name: Client(procs.HOST, port, kind.clients) for kind in HTTP_KINDS}
        try:
            await asyncio.gather(*(loop(k, clients[k.name], n) for k in HTTP_KINDS for n in range(k.clients)))
        finally:
            for client in clients.values():
                client.close()

    run_async(main)


def run_job(session: requests.Session, url: str, inputs: list[str]) -> str:
    """Submit one job, poll it to its end, fetch its results: the outcome."""
    r = session.post(f"{url}/v1/jobs", json={"model": JOB_MODEL, "inputs": inputs}, timeout=REQUEST_TIMEOUT_S)
    if r.status_code != 202:
        return outcome(r.status_code) if r.status_code != 200 else "HTTP 200 (not 202) on submit"
    job_id = r.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        r = session.get(f"{url}/v1/jobs/{job_id}", timeout=REQUEST_TIMEOUT_S)
        if r.status_code != 200:
            return f"{outcome(r.status_code)} on poll"
        status = r.json()["status"]
        if status not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            return "job timeout"
        time.sleep(JOB_POLL_S)  # polling the job, as a client does; bounded by the deadline
    if status != "succeeded":
        return f"job {status}"
    r = session.get(f"{url}/v1/jobs/{job_id}/result", timeout=REQUEST_TIMEOUT_S)
    if r.status_code != 200:
        return f"{outcome(r.status_code)} on result"
    lines = r.text.splitlines()
    return OK if len(lines) == len(inputs) else f"{len(lines)} of {len(inputs)} results"


def job_client(url: str, first: int, clients: int, tally: Tally, stop: threading.Event) -> None:
    session = requests.Session()
    i = first
    while not stop.is_set():
        inputs = [TEXTS[(i * JOB_INPUTS + k) % len(TEXTS)] for k in range(JOB_INPUTS)]
        i += clients
        started = time.perf_counter()
        try:
            result = run_job(session, url, inputs)
        except requests.Timeout:
            result = "timeout"
        except (requests.RequestException, ValueError, KeyError) as exc:  # no answer, or not the job's JSON
            result = type(exc).__name__
        tally.add("job", (time.perf_counter() - started) * 1e3, result)


# --- the service ----------------------------------------------------------------


def service_env(args: argparse.Namespace, logdir: Path) -> dict[str, str]:
    """`make serve`'s service, with recycling on and its state in a temporary folder."""
    repository = REPO_ROOT / "models"
    models, notes = available(repository, MODELS)
    if notes:
        raise RuntimeError("; ".join(notes) + " (make models)")
    return {
        "SERVE_MODEL_REPOSITORY": str(repository),
        "SERVE_MODELS": serve_list(repository, models),
        "SERVE_CACHE_BACKEND": "none",  # every request runs its model
        "SERVE_JOBS_DIR": str(logdir / "jobs"),
        "PROMETHEUS_MULTIPROC_DIR": str(logdir / "metrics"),
        "SERVE_CONTROL_DIR": str(logdir / "control"),
        "WORKERS": str(args.workers),
        "MAX_REQUESTS": str(args.max_requests),
        "MAX_REQUESTS_JITTER": str(args.max_requests_jitter),
    }


def start_job_worker(servers: procs.ServerSet, env: dict[str, str]) -> procs.Server:
    worker = procs.Server("job-worker", [sys.executable, "-m", "jobs.worker"], env, 0, servers.logdir).launch()
    servers.servers.append(worker)  # stopped with the rest
    assert worker.process is not None
    deadline = time.monotonic() + procs.READY_TIMEOUT_S
    while "job worker ready" not in (worker.log.read_text(errors="replace") if worker.log.exists() else ""):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"job worker not ready:\n{worker.tail()}")
        time.sleep(0.05)  # polling its log, bounded by the deadline
    return worker


def probe(server: procs.Server) -> None:
    """Every kind answers once before the clock starts, or the service did not start."""
    for kind in HTTP_KINDS:
        assert kind.body is not None
        status, text = procs.post(server.port, kind.path, json.dumps(kind.body(0)).encode())
        if not 200 <= status < 300:
            raise RuntimeError(f"{kind.name}: POST {kind.path} answered {status}: {text[:300]}")
    result = run_job(requests.Session(), server.url, TEXTS[:JOB_INPUTS])
    if result != OK:
        raise RuntimeError(f"job: {result}")


def pss(server: procs.Server) -> tuple[float, int]:
    """Total PSS (MiB) of a server's process tree, and how many processes it counted."""
    for _ in range(5):
        pids = server.pids()
        try:
            return procs.pss_mb(pids), len(pids)
        except OSError:  # a recycled worker exited between the listing and the reading
            continue
    return math.nan, 0


def worker_exits(port: int) -> float:
    try:
        return counter(scrape_ms(port, repeat=1)[1], "serve_http_worker_exits_total")
    except OSError:
        return math.nan


# --- report ---------------------------------------------------------------------


@dataclass
class Sample:
    at_s: float
    gunicorn_mib: float  # the interval's floor (its lowest 2 s sample)
    gunicorn_procs: int
    jobs_mib: float
    jobs_procs: int
    exits: float
    gunicorn_median: float = math.nan
    jobs_median: float = math.nan


PSS_EVERY_S = 2.0


class PssSampler:
    """PSS of both servers every ``PSS_EVERY_S`` from a thread; ``take`` returns
    and clears the samples since the last call."""

    def __init__(self, gunicorn: procs.Server, jobs: procs.Server) -> None:
        self.servers = (gunicorn, jobs)
        self.rows: list[tuple[float, int, float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PSS_EVERY_S):
            (g, g_procs), (j, j_procs) = (pss(server) for server in self.servers)
            with self._lock:
                self.rows.append((g, g_procs, j, j_procs))

    def start(self) -> "PssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def take(self) -> list[tuple[float, int, float, int]]:
        with self._lock:
            rows, self.rows = self.rows, []
        return rows or [(*pss(self.servers[0]), *pss(self.servers[1]))]


def interval_line(rows: list[tuple[str, float, float, str]]) -> str:
    parts = []
    for kind in KINDS:
        results = Counter(r for k, _, _, r in rows if k == kind.name)
        errors = sum(n for r, n in results.items() if r not in (OK, OVERLOADED))
        text = f"{kind.name} {sum(results.values())} req {errors} err {results[OVERLOADED]} 503"
        kinds_of_error = [f"{r} x{n}" for r, n in results.items() if r not in (OK, OVERLOADED)]
        parts.append(text + (f" ({', '.join(kinds_of_error)})" if kinds_of_error else ""))
    return " · ".join(parts)


def minute_latency(rows: list[tuple[str, float, float, str]]) -> dict[str, tuple[int, float, float]]:
    """Per kind: 2xx answers, p50 and p99 ms."""
    out = {}
    for kind in KINDS:
        ok = [ms for k, _, ms, r in rows if k == kind.name and r == OK]
        out[kind.name] = (len(ok), percentile(ok, 50), percentile(ok, 99))
    return out


def fmt_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def summary(samples: list[Sample], minutes: list[dict[str, tuple[int, float, float]]], tally: Tally,
            recycles: float, died: str) -> bool:
    """Print the summary; whether every target was met."""
    print("\n=== summary ===")
    met, judged = not died, 0
    if died:
        print(f"SERVICE DIED: {died}")
    first = next((s for s in samples if s.at_s >= 60), None)
    last = samples[-1] if samples else None
    for label, attr in (("Gunicorn master + workers", "gunicorn_mib"), ("job worker", "jobs_mib")):
        if first is None or last is None or last is first:
            print(f"PSS {label}: n/a (needs samples past the end of minute 1)")
            continue
        a, b = getattr(first, attr), getattr(last, attr)
        growth = (b - a) / a
        ok = growth < PSS_GROWTH_MAX
        met, judged = met and ok, judged + 1
        later = [getattr(s, attr) for s in samples if s.at_s > first.at_s]
        median = attr.replace("_mib", "_median")
        print(f"PSS {label}: floor {a:.1f} MiB in the interval ending t={first.at_s:.0f}s (end of minute 1)"
              f" -> {b:.1f} MiB in the last (ending t={last.at_s:.0f}s) = {growth:+.1%}"
              f" [later floors {min(later):.1f}-{max(later):.1f} MiB; medians {getattr(first, median):.1f}"
              f" -> {getattr(last, median):.1f} MiB] target < +{PSS_GROWTH_MAX:.0%}: {'MET' if ok else 'MISSED'}")
    for kind in KINDS:
        if len(minutes) < 2 or math.isnan(minutes[0][kind.name][2]):
            print(f"p99 {kind.name}: n/a (needs two minutes with answers)")
            continue
        base = minutes[0][kind.name][2]
        ratios = [m[kind.name][2] / base for m in minutes[1:]]
        # A minute with no 2xx answer (NaN) is the worst of all, and a miss.
        worst = max(range(len(ratios)), key=lambda i: math.inf if math.isnan(ratios[i]) else ratios[i])
        ok = all(r <= P99_RATIO_MAX for r in ratios)
        met, judged = met and ok, judged + 1
        later = ", ".join(f"m{i + 2} {fmt_ms(m[kind.name][2])}" for i, m in enumerate(minutes[1:]))
        figure = "no 2xx answer" if math.isnan(ratios[worst]) else f"{ratios[worst]:.2f}x"
        print(f"p99 {kind.name}: minute 1 {fmt_ms(base)} ms; {later}; worst {figure} (minute {worst + 2})"
              f" target <= {P99_RATIO_MAX:g}x: {'MET' if ok else 'MISSED'}")
    results = Counter((k, r) for k, _, _, r in tally.samples)
    errors = {key: n for key, n in results.items() if key[1] not in (OK, OVERLOADED)}
    listed = ", ".join(f"{k} {r} x{n}" for (k, r), n in errors.items())
    print(f"answers: {sum(results.values())}; errors (non-2xx but 503, lost connections, timeouts):"
          f" {sum(errors.values())}" + (f" ({listed})" if errors else ""))
    print(f"503 overload: {sum(n for (_, r), n in results.items() if r == OVERLOADED)}")
    print(f"jobs completed: {results[('job', OK)]} ({JOB_INPUTS} texts each)")
    print(f"worker recycles (serve_http_worker_exits_total): {recycles:.0f}")
    verdict = "MISSED" if not met else "all met" if judged else "none judged (run at least 2 minutes)"
    print(f"targets: {verdict}")
    return met


# --- main -----------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10, help="length of the run (default 10)")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds between reports (default 30)")
    parser.add_argument("--workers", type=int, default=5, help="Gunicorn workers (default 5)")
    parser.add_argument("--max-requests", type=int, default=2000, help="MAX_REQUESTS (default 2000)")
    parser.add_argument("--max-requests-jitter", type=int, default=200, help="MAX_REQUESTS_JITTER (default 200)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.report_every <= 0:
        parser.error("--minutes must be >= 1 and --report-every > 0")
    return args


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds like Ctrl-C: the servers are stopped
    args = parse(argv)
    logdir = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    duration = args.minutes * 60
    # Report ticks, plus every minute's end (the latency windows and the PSS baseline).
    ticks = sorted({round(k * args.report_every, 3) for k in range(1, int(duration // args.report_every) + 1)}
                   | {60.0 * m for m in range(1, args.minutes + 1)})
    with procs.ServerSet(logdir) as servers:
        try:
            env = service_env(args, logdir)
            gunicorn = servers.gunicorn("gunicorn", env).start()
            jobs = start_job_worker(servers, env)
            probe(gunicorn)
        except RuntimeError as exc:
            print(f"the service did not start: {exc}\nlogs in {logdir}", file=sys.stderr)
            return 1
        print(f"Gunicorn {args.workers} workers (MAX_REQUESTS {args.max_requests}, jitter {args.max_requests_jitter}),"
              f" ready in {gunicorn.startup_s:.1f}s, + job worker; {args.minutes} min, closed loop: "
              + ", ".join(f"{k.name} x{k.clients}" for k in KINDS) + f"; logs in {logdir}", flush=True)
        tally, stop = Tally(), threading.Event()
        exits_before = worker_exits(gunicorn.port)
        threads = [threading.Thread(target=http_clients, args=(gunicorn.port, tally, stop), daemon=True)]
        clients = next(k.clients for k in KINDS if k.name == "job")
        threads += [threading.Thread(target=job_client, args=(gunicorn.url, n, clients, tally, stop), daemon=True)
                    for n in range(clients)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        sampler = PssSampler(gunicorn, jobs).start()
        samples: list[Sample] = []
        minutes: list[dict[str, tuple[int, float, float]]] = []
        died, previous, exits = "", 0.0, 0.0
        try:
            for tick in ticks:
                time.sleep(max(0.0, start + tick - time.monotonic()))  # the report schedule
                for server in (gunicorn, jobs):
                    if server.process is None or server.process.poll() is not None:
                        died = f"{server.label} exited at t={time.monotonic() - start:.0f}s:\n{server.tail()}"
                if died:
                    print(died, flush=True)
                    break
                taken = [row for row in sampler.take() if not math.isnan(row[0])]
                g_mib, g_procs = min(row[0] for row in taken), max(row[1] for row in taken)
                j_mib, j_procs = min(row[2] for row in taken), max(row[3] for row in taken)
                g_med, j_med = statistics.median(r[0] for r in taken), statistics.median(r[2] for r in taken)
                exits = worker_exits(gunicorn.port) - exits_before
                recycled = exits - (samples[-1].exits if samples else 0.0)
                samples.append(Sample(tick, g_mib, g_procs, j_mib, j_procs, exits, g_med, j_med))
                rows = tally.window(start + previous, start + tick)
                print(f"[{tick:5.0f}s] PSS floor / median of {len(taken)} samples: Gunicorn {g_mib:.1f} / {g_med:.1f} MiB"
                      f" ({g_procs} procs) · job worker {j_mib:.1f} / {j_med:.1f} MiB ({j_procs} procs)"
                      f" · recycles {recycled:.0f} (total {exits:.0f})\n        "
                      + interval_line(rows), flush=True)
                previous = tick
                if tick % 60 == 0:
                    minute = minute_latency(tally.window(start + tick - 60, start + tick))
                    minutes.append(minute)
                    print(f"        minute {len(minutes)} latency (2xx): " + " · ".join(
                        f"{name} n={n} p50 {fmt_ms(p50)} p99 {fmt_ms(p99)} ms" for name, (n, p50, p99) in minute.items()
                    ), flush=True)
        except KeyboardInterrupt:
            print("interrupted: the summary covers the run so far", flush=True)
        stop.set()
        sampler.stop()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + JOB_TIMEOUT_S)
        met = summary(samples, minutes, tally, exits, died)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
