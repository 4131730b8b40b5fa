"""What the standard protocols cost beside ``/v1``: the same model, the same
inputs, one Gunicorn (its defaults, cache off), wrk at one concurrency,
interleaved rounds, medians.

    .venv/bin/python bench/protocols.py [--rounds 3] [--seconds 5] [--concurrency 16]

Pairs: ``POST /v2/models/sentiment/infer`` (JSON tensors) against
``POST /v1/models/sentiment/predict``, and ``POST /v1/embeddings`` (OpenAI)
against ``POST /v1/models/minilm/predict``; each row prints both rates and
their ratio (protocol / v1). Binds 127.0.0.1 only; every run is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, procs  # noqa: E402
from bench.workload import REPO_ROOT, REVIEW  # noqa: E402

PAIRS = {
    "sentiment": (
        "/v2/models/sentiment/infer",
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [REVIEW]}]},
        "/v1/models/sentiment/predict",
        {"inputs": [REVIEW]},
    ),
    "minilm": ("/v1/embeddings", {"model": "minilm", "input": REVIEW}, "/v1/models/minilm/predict", {"inputs": [REVIEW]}),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="serve-bench-protocols-"))
    bodies = {}
    for name, (proto_path, proto_body, v1_path, v1_body) in PAIRS.items():
        for kind, path, body in (("protocol", proto_path, proto_body), ("v1", v1_path, v1_body)):
            file = logdir / f"{name}-{kind}.json"
            file.write_text(json.dumps(body))
            bodies[name, kind] = (path, file)
    env = {
        "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
        "SERVE_MODELS": ",".join(PAIRS),
        "SERVE_CACHE_BACKEND": "none",  # the models and the protocols, not the prediction cache
        "PROMETHEUS_MULTIPROC_DIR": str(logdir / "metrics"),
        "SERVE_CONTROL_DIR": str(logdir / "control"),
        "ACCESS_LOG": "",
    }
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in bodies}
    with procs.ServerSet(logdir) as servers:
        server = servers.gunicorn("serve-http", env).start()
        for (name, kind), (path, file) in bodies.items():  # warm-up, and a check that each answers 2xx
            warm = loadgen.wrk(f"http://{procs.HOST}:{server.port}{path}", args.concurrency, 1, file)
            if warm.non_2xx or not warm.requests:
                print(f"{name} {kind}: {warm.non_2xx} non-2xx of {warm.requests} in the warm-up", file=sys.stderr)
                return 1
        for _ in range(args.rounds):
            for key, (path, file) in bodies.items():
                result = loadgen.wrk(f"http://{procs.HOST}:{server.port}{path}", args.concurrency, args.seconds, file)
                rates[key].append(result.ok_rps)
    print(f"c{args.concurrency}, {args.rounds} interleaved rounds of {args.seconds} s, medians (2xx/s); logs in {logdir}")
    for name, (proto_path, _, v1_path, _) in PAIRS.items():
        protocol, v1 = statistics.median(rates[name, "protocol"]), statistics.median(rates[name, "v1"])
        rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rates[name, "protocol"], rates[name, "v1"]))
        print(f"{name:10s} {proto_path} {protocol:8.1f}/s  {v1_path} {v1:8.1f}/s  ratio {protocol / v1:.2f}  (rounds {rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
