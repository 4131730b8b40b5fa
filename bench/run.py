"""Benchmark of serve-http: one table of figures and ratios measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--repeat N] [--only SECTION[,SECTION]]

Sections: raw (model rate without HTTP), served (Gunicorn + wrk), fastapi (the
same models on FastAPI + uvicorn), batching (SERVE_BATCHING on vs off),
memory (PSS of Gunicorn vs one process), startup (spawn to /readyz 200),
overload (4x capacity, open loop), healthz (serve-http vs a bare WSGI app).
The table is also written to bench/results/latest.json. Servers bind
127.0.0.1 only; every load is bounded in time; every server is stopped at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, procs, rawrate  # noqa: E402
from bench.context import Config, State, log, server_env  # noqa: E402
from bench.report import Table, Target, ms, rate, ratio  # noqa: E402
from bench.served import section_served  # noqa: E402
from bench.workload import REPO_ROOT, available, body, serve_list, wire_input  # noqa: E402
from serving.settings import Settings  # noqa: E402

SECTIONS = ("raw", "served", "fastapi", "batching", "memory", "startup", "overload", "healthz")
RESULTS = Path(__file__).with_name("results") / "latest.json"


# --- sections -------------------------------------------------------------------


def section_raw(cfg: Config, state: State) -> None:
    log(f"raw: {len(cfg.models)} model(s), 1 and {os.cpu_count()} processes, {cfg.raw_s:g}s each")
    names = {m.name: serve_list(cfg.repository, [m]) for m in cfg.models}
    wires = {m.name: wire_input(m) for m in cfg.models}
    state.raw = rawrate.measure(str(cfg.repository), cfg.models, names, wires, cfg.raw_s)
    cores = os.cpu_count()
    for model in cfg.models:
        r = state.raw[model.name]
        if not r.solo:
            state.table.note(f"raw {model.name}: no result ({r.note or 'process failed'})")
            continue
        state.table.add(
            "1 raw", model.name, f"1 process {rate(r.solo)}; {cores} processes {rate(r.total)} = the limit",
            ratio(r.total, r.solo),
        )
        if r.decode_s is not None and r.predict_s:
            prep = r.preprocess_s or 0.0
            forward = r.predict_s - prep  # predict() includes the adapter's preprocessing
            state.table.add(
                "1 raw", f"{model.name} input cost",
                f"decode {ms(r.decode_s * 1e3)} + prep {ms(prep * 1e3)} ms vs model {ms(forward * 1e3)} ms",
                ratio(r.decode_s + prep, forward), Target("<=", 0.10),
            )
    state.table.data["raw"] = {k: vars(v) for k, v in state.raw.items()}


def section_memory(cfg: Config, state: State) -> None:
    rates = {m: r.solo for m, r in state.raw.items() if r.solo}
    spec = [(m.name, m.is_image, wire_input(m)) for m in cfg.models]
    serve_names = serve_list(cfg.repository, cfg.models)
    log(f"memory: one process serving {cfg.memory_requests} predictions in-process")
    plan, single = procs.in_process_pss(str(cfg.repository), serve_names, spec, cfg.memory_requests, rates, 600)
    with procs.ServerSet(cfg.logdir) as servers:
        server = servers.gunicorn("memory", server_env(cfg, cfg.models, 5)).start()
        state.startups.append(server.startup_s)
        payloads = {
            m.name: loadgen.post_request(procs.HOST, server.port, f"/v1/models/{m.name}/predict", body(m))
            for m in cfg.models
        }
        # Interleave the models, each spread evenly over the run, as mixed traffic arrives.
        order = sorted((i / count, name) for name, count in plan.items() for i in range(count))
        log(f"memory: serve-http, 5 workers, {len(order)} requests {plan}")
        statuses = loadgen.send_all(procs.HOST, server.port, (payloads[n] for _, n in order), 16, 600)
        pids = server.pids()
        served = procs.pss_mb(pids)
    failed = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    split = " / ".join(f"{name} {count}" for name, count in plan.items())
    state.table.add(
        "5 memory", f"PSS after {sum(plan.values())} requests",
        f"serve-http 5 workers {served:.0f} MB ({len(pids)} procs) · one process {single:.0f} MB · {split}"
        + (f" · {failed} non-2xx" if failed else ""),
        ratio(served, single), Target("<=", 1.25),
    )
    state.table.data["memory"] = {
        "plan": plan, "statuses": dict(statuses), "serve_http_mb": served, "one_process_mb": single
    }


def section_startup(cfg: Config, state: State) -> None:
    if not state.startups:
        for _ in range(cfg.repeat):
            with procs.ServerSet(cfg.logdir) as servers:
                server = servers.gunicorn("startup", server_env(cfg, cfg.models, cfg.workers)).start()
                state.startups.append(server.startup_s)
    state.table.add(
        "6 startup", "spawn -> /readyz 200",
        f"{serve_list(cfg.repository, cfg.models)}; median of " + ", ".join(f"{s:.1f}" for s in state.startups) + " s",
        statistics.median(state.startups), unit="s",
    )


# --- main -------------------------------------------------------------------------


def parse(argv: list[str], table: Table) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 2 minutes)")
    parser.add_argument("--repeat", type=int, default=1, help="rerun served measurements, quote medians")
    parser.add_argument("--only", default="", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--workers", type=int, help="Gunicorn/uvicorn workers (default: the server's default)")
    parser.add_argument("--threads", type=int, help="Gunicorn threads per worker (default: the server's default)")
    parser.add_argument("--models", default="sentiment,minilm,imagenet")
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--memory-requests", type=int, help="requests of the memory section (default 10000)")
    args = parser.parse_args(argv)
    sections = set(filter(None, args.only.split(","))) or set(SECTIONS)
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    models, notes = available(args.repository.resolve(), [n.strip() for n in args.models.split(",") if n.strip()])
    for text in notes:
        table.note(text)
        log(text)
    defaults = Settings()  # the documented defaults, as the server itself computes them
    return Config(
        sections=sections,
        repository=args.repository.resolve(),
        models=models,
        repeat=max(1, args.repeat),
        workers=args.workers or defaults.workers,
        threads=args.threads or defaults.threads,
        batching_models=["minilm", "imagenet"],
        overload_models=["sentiment", "minilm"],
        raw_s=0.7 if args.quick else 3.0,
        wrk_s=1 if args.quick else 5,
        warm_s=1,
        overload_s=2.0 if args.quick else 10.0,
        grace_s=1.0 if args.quick else 5.0,
        memory_requests=args.memory_requests or (1000 if args.quick else 10_000),
        logdir=Path(tempfile.mkdtemp(prefix="serve-bench-")),
    )


def main(argv: list[str]) -> int:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    state = State()
    cfg = parse(argv, state.table)
    load_before = os.getloadavg()[0]  # other tenants of the box show up here
    steps: list[tuple[set[str], Callable[[Config, State], None]]] = [
        ({"raw"}, section_raw),
        ({"served", "fastapi", "healthz", "overload", "batching"}, section_served),
        ({"memory"}, section_memory),
        ({"startup"}, section_startup),
    ]
    if cfg.models:
        for wanted, step in steps:
            if wanted & cfg.sections:
                try:
                    step(cfg, state)
                except Exception as exc:  # one broken section must not hide the others' figures
                    traceback.print_exc()
                    state.table.note(f"{step.__name__} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    else:
        state.table.note("no model to benchmark")
    state.table.note(
        "ratio: raw = all cores / 1 process; served = serve-http / FastAPI (2xx/s); batching = on / off (2xx/s);"
        " memory = serve-http / one process; overload = accepted p99 / unloaded p99; healthz = serve-http / bare"
    )
    if "fastapi" in cfg.sections:
        fast = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
        loop = ", ".join(fast) or "asyncio, h11"
        state.table.note(f"FastAPI twin: uvicorn --workers {cfg.workers}, auto loop/http ({loop})")
    elapsed = time.monotonic() - started
    state.table.note(
        f"{cfg.workers} workers x {cfg.threads} threads, repeat {cfg.repeat}, wrk {cfg.wrk_s}s per run, "
        f"total {elapsed:.0f}s; load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end;"
        f" server logs in {cfg.logdir}"
    )
    text = state.table.render()
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    document = {"argv": argv, "seconds": elapsed, "table": text, **state.table.to_json()}
    RESULTS.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
