"""What traces cost: serve-http with tracing off, on at a 10 % sampler, and on
for every request, measured in one run (``make bench-tracing``).

    .venv/bin/python bench/tracing.py [--seconds 5] [--rounds 3]

Four Gunicorn servers on their defaults (``WORKERS``, ``THREADS``), serving
``sentiment`` with the prediction cache off (every request reaches the model,
so every sampled one has its decode, queue-wait and batch spans):

- ``off``: no ``OTEL_*`` variable, as shipped;
- ``0%``: tracing on, no request sampled: what every request pays (its
  server span, context, trace id) before any span is recorded or exported;
- ``10%``: ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, argument 0.1;
- ``100%``: ``OTEL_TRACES_SAMPLER=always_on``.

With ``--baseline DIR`` (a checkout of an earlier commit, e.g. ``git worktree
add /tmp/before <commit>``), a fourth server, ``before``, runs that code on
the same models with the same settings, so that ``off`` is compared with the
code before tracing existed, in the same run.

The traced servers export by OTLP/HTTP to a sink in this process that reads
each export and answers 200 (a collector elsewhere would cost these cores
nothing; the sink costs them little). wrk (one thread) posts one text at c1
and c16, ``--seconds`` each, the servers interleaved round by round; the
figures are medians over ``--rounds``, the ratios against ``off`` of the same
run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import WrkResult, wrk  # noqa: E402
from bench.procs import ServerSet  # noqa: E402
from bench.workload import REPO_ROOT  # noqa: E402

PATH = "/v1/models/sentiment/predict"
BODY = b'{"inputs": ["a warm, funny film with a clumsy ending"]}'
CONFIGS = {
    "off": {},
    "0%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
    "10%": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "100%": {"OTEL_TRACES_SAMPLER": "always_on"},
}


class Sink:
    """``POST /v1/traces``: read, count, answer 200."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                size = int(self.headers.get("Content-Length", 0))
                self.rfile.read(size)
                sink.exports += 1
                sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, served as `before`")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    sink = Sink()
    logdir = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    body = logdir / "body.json"
    body.write_bytes(BODY)
    results: dict[tuple[str, int], list[WrkResult]] = {}
    with ServerSet(logdir) as servers:
        started = {}
        base_env = {
            "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
            "SERVE_MODELS": "sentiment",
            "SERVE_CACHE_BACKEND": "none",
            "ACCESS_LOG": "",
            "SERVE_JOB_WORKER_GRACE_S": "0",
        }
        if args.baseline is not None:
            started["before"] = servers.gunicorn("tracing-before", base_env, tree=args.baseline.resolve()).launch()
        for label, otel in CONFIGS.items():
            env = dict(base_env)
            if otel:
                env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": f"bench-{label}", **otel})
            started[label] = servers.gunicorn(f"tracing-{label.rstrip('%')}", env).launch()
        for server in started.values():
            server.wait_ready()
        for label, server in started.items():  # warm-up: first requests load what is lazy
            wrk(server.url + PATH, 4, 1, body)
        for _ in range(args.rounds):
            for concurrency in levels:
                for label, server in started.items():
                    servers.settle()
                    results.setdefault((label, concurrency), []).append(wrk(server.url + PATH, concurrency, args.seconds, body))

    print(f"# tracing cost: POST {PATH}, sentiment, cache off; wrk -t1, {args.seconds} s x {args.rounds} rounds, "
          f"medians; ratio to off in the same run")
    print(f"{'traces':<7} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s / off':>12} {'p50 / off':>10}")
    for concurrency in levels:
        base = results[("off", concurrency)]
        base_rps = statistics.median(r.ok_rps for r in base)
        base_p50 = statistics.median(r.p50_ms for r in base)
        for label in [name for name in started if name == "before"] + list(CONFIGS):
            runs = results[(label, concurrency)]
            rps = statistics.median(r.ok_rps for r in runs)
            p50 = statistics.median(r.p50_ms for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            errors = sum(r.non_2xx + r.socket_errors for r in runs)
            print(f"{label:<7} {concurrency:>3} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f} {rps / base_rps:>12.3f} "
                  f"{p50 / base_p50:>10.3f}" + (f"  ({errors} errors)" if errors else ""))
    print(f"# the sink received {sink.exports} exports, {sink.bytes / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
