"""Sections served over HTTP: throughput and latency (2), the FastAPI twin (3),
batching on/off (4), overload (7) and /healthz against a bare WSGI app (8).

Servers compared with each other are up at the same time and measured back to
back, model by model and concurrency by concurrency, so the box's noise (other
tenants, thermal drift) hits both sides of a ratio alike.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable

from bench import loadgen, procs
from bench.context import Config, State, log, server_env
from bench.loadgen import WrkResult
from bench.report import Table, Target, ms, rate, ratio
from bench.workload import Model, body

CONCURRENCIES = (1, 16, 64)
# Open-loop connections at most. Without load shedding in-flight requests pile up
# without bound (and past the box's ports); requests over the cap wait for a
# connection, their latency still counted from their planned send time.
MAX_CONNECTIONS = 2000
# An overload run counts only if the generator sent at least this share of the offered rate.
GENERATOR_KEEPS_UP = 0.9


def median_wrk(results: list[WrkResult]) -> WrkResult:
    """Each figure's median over the repeats."""
    def med(name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in results))

    return WrkResult(
        rps=med("rps"),
        ok_rps=med("ok_rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        requests=int(med("requests")),
        non_2xx=int(med("non_2xx")),
        socket_errors=int(med("socket_errors")),
    )


def wrk_figures(r: WrkResult) -> str:
    errors = r.non_2xx + r.socket_errors
    return f"{rate(r.ok_rps)} p50 {ms(r.p50_ms)} p99 {ms(r.p99_ms)} ms" + (f" ({errors} err)" if errors else "")


class Route:
    """A model's predict route on one server, with its body file."""

    def __init__(self, servers: procs.ServerSet, server: procs.Server, path: str, body_file: Path) -> None:
        self.servers, self.server, self.path, self.body_file = servers, server, path, body_file
        self.warm_rps = 0.0  # throughput seen while warming up: sizes the first timed run

    def probe(self) -> str | None:
        """None when the route answers 2xx, else why not (so the cell is skipped, not timed)."""
        status, text = procs.post(self.server.port, self.path, self.body_file.read_bytes())
        return None if 200 <= status < 300 else f"HTTP {status}: {text[:160]}"

    def wrk(self, concurrency: int, seconds: int) -> WrkResult:
        if not self.servers.settle():
            log("servers still busy after 20 s; measuring anyway")
        return loadgen.wrk(self.server.url + self.path, concurrency, seconds, self.body_file)


def routes(
    cfg: Config, table: Table, servers: procs.ServerSet, server: procs.Server, models: list[Model],
    path: Callable[[str], str],
) -> dict[str, Route]:
    """Routes of the models this server answers, each warmed up; a note for each it does not."""
    found: dict[str, Route] = {}
    for model in models:
        body_file = cfg.logdir / f"body-{model.name}.json"
        if not body_file.exists():
            body_file.write_bytes(body(model))
        target = Route(servers, server, path(model.name), body_file)
        problem = target.probe()
        if problem:
            table.note(f"{server.label} {model.name}: {problem}; skipped")
            continue
        target.warm_rps = target.wrk(16, cfg.warm_s).ok_rps  # warm every worker: lazy init stays out
        found[model.name] = target
    return found


def section_served(cfg: Config, state: State) -> None:
    """Sections 2, 3, 4, 7 and 8, with every server they need started once.

    serve-http starts alone (its start-up time is a figure); the twin and the
    batching servers load their models while serve-http warms up, then wait idle
    for their turn.
    """
    wants = cfg.sections
    with procs.ServerSet(cfg.logdir) as servers:
        gunicorn = None
        if wants & {"served", "fastapi", "healthz", "overload"}:
            gunicorn = servers.gunicorn("serve-http", server_env(cfg, cfg.models, cfg.workers)).start()
            state.startups.append(gunicorn.startup_s)
            log(f"serve-http ready in {gunicorn.startup_s:.1f}s ({cfg.workers} workers x {cfg.threads} threads)")
        twin = None
        if "fastapi" in wants:
            env = server_env(cfg, cfg.models, cfg.workers)
            twin = servers.uvicorn("fastapi", "bench.fastapi_twin:app", cfg.workers, env).launch()
        batching = launch_batching(cfg, servers) if "batching" in wants else {}
        if "batching" in wants and not batching:
            state.table.note(f"batching: none of {', '.join(cfg.batching_models)} is served; skipped")
        sides: dict[str, dict[str, Route]] = {}
        if gunicorn:
            models = cfg.models if wants & {"served", "fastapi", "overload"} else []
            sides["serve-http"] = routes(cfg, state.table, servers, gunicorn, models, lambda n: f"/v1/models/{n}/predict")
        if twin:
            twin.wait_ready()
            log(f"fastapi twin ready in {twin.startup_s:.1f}s ({cfg.workers} uvicorn workers)")
            sides["fastapi"] = routes(cfg, state.table, servers, twin, cfg.models, lambda n: f"/predict/{n}")
        if wants & {"served", "fastapi"}:
            measure_served(cfg, state, sides, CONCURRENCIES)
        if gunicorn and "healthz" in wants:
            bare = servers.gunicorn("bare-wsgi", server_env(cfg, [], cfg.workers), app="bench.bare_wsgi:app").start()
            section_healthz(cfg, state, servers, gunicorn, bare)
        if gunicorn and "overload" in wants:
            section_overload(cfg, state, servers, gunicorn, sides["serve-http"])
        if batching:
            section_batching(cfg, state, servers, batching)


def measure_served(
    cfg: Config, state: State, sides: dict[str, dict[str, Route]], concurrencies: tuple[int, ...]
) -> None:
    runs: dict[tuple[str, str, int], list[WrkResult]] = {}
    for rep in range(cfg.repeat):
        for model in cfg.models:
            last: dict[str, float] = {}  # each side's throughput at the previous concurrency
            for conc in concurrencies:
                # The two servers back to back: the box's noise hits both alike.
                for side, targets in sides.items():
                    if model.name in targets:
                        route = targets[model.name]
                        result = route.wrk(conc, run_seconds(cfg, conc, last.get(side, route.warm_rps)))
                        last[side] = result.ok_rps
                        runs.setdefault((side, model.name, conc), []).append(result)
                        log(f"served #{rep + 1} {side} {model.name} c{conc}: {wrk_figures(result)}")
    for key, results in runs.items():
        state.served[key] = median_wrk(results)
    if not ("served" in cfg.sections or "fastapi" in cfg.sections):
        return
    for model in cfg.models:
        for conc in concurrencies:
            ours = state.served.get(("serve-http", model.name, conc))
            peer = state.served.get(("fastapi", model.name, conc))
            if ours is None and peer is None:
                continue
            figures = [f"serve-http {wrk_figures(ours)}" if ours else "serve-http n/a"]
            limit = state.raw.get(model.name)
            if ours and limit and limit.total and conc == 16:
                figures[0] += f" ({ours.ok_rps / limit.total:.0%} of limit)"
            if peer:
                figures.append(f"FastAPI {wrk_figures(peer)}")
            value = ratio(ours.ok_rps, peer.ok_rps) if ours and peer else None
            state.table.add("2-3 served", f"{model.name} c{conc}", " · ".join(figures), value)
    state.table.data["served"] = {f"{s}/{m}/c{c}": vars(r) for (s, m, c), r in state.served.items()}


def run_seconds(cfg: Config, concurrency: int, expected_rps: float) -> int:
    """wrk only counts answers that arrive within its run: a slow model at high
    concurrency needs a longer run for each connection to finish several requests."""
    if not expected_rps:
        return cfg.wrk_s
    return max(cfg.wrk_s, min(3 * cfg.wrk_s, math.ceil(4 * concurrency / expected_rps)))


def section_healthz(
    cfg: Config, state: State, servers: procs.ServerSet, gunicorn: procs.Server, bare: procs.Server
) -> None:
    runs: dict[str, list[WrkResult]] = {"serve-http": [], "bare": []}
    for _ in range(cfg.repeat):
        for side, server in (("serve-http", gunicorn), ("bare", bare)):
            servers.settle()
            runs[side].append(loadgen.wrk(server.url + "/healthz", 16, cfg.wrk_s))
            log(f"healthz {side}: {wrk_figures(runs[side][-1])}")
    ours, floor = median_wrk(runs["serve-http"]), median_wrk(runs["bare"])
    state.table.add(
        "8 healthz", "/healthz c16",
        f"serve-http {wrk_figures(ours)} · bare WSGI {wrk_figures(floor)}",
        ratio(ours.ok_rps, floor.ok_rps), Target(">=", 0.8),
    )


def section_overload(
    cfg: Config, state: State, servers: procs.ServerSet, gunicorn: procs.Server, targets: dict[str, Route]
) -> None:
    for name in cfg.overload_models:
        target = targets.get(name)
        if target is None:
            continue
        if ("serve-http", name, 16) not in state.served:  # capacity and unloaded p99, measured now
            measure_served(cfg, state, {"serve-http": {name: target}}, (1, 16))
        capacity = state.served[("serve-http", name, 16)].ok_rps
        unloaded_p99 = state.served[("serve-http", name, 1)].p99_ms
        offered = 4 * capacity
        payload = loadgen.post_request(procs.HOST, gunicorn.port, target.path, target.body_file.read_bytes())
        runs = []
        for rep in range(cfg.repeat):
            servers.settle()  # an earlier run's backlog must not count in this one
            result = loadgen.open_loop(
                procs.HOST, gunicorn.port, payload, offered, cfg.overload_s, MAX_CONNECTIONS, cfg.grace_s
            )
            runs.append(result.summary())
            log(f"overload #{rep + 1} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in runs[-1].items()))
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        # Latencies count from each request's planned send time: when the generator
        # itself falls behind (it shares the cores with the server), they measure
        # the generator, and the row says so instead of quoting them as the server's.
        measured = med["sent_rps"] >= GENERATOR_KEEPS_UP * offered
        caveat = "" if measured else (
            f"NOT MEASURED: the load generator sent {rate(med['sent_rps'])} of the {rate(offered)} offered · "
        )
        state.table.add(
            "7 overload", f"{name} 4x: accepted p99",
            caveat + f"offered {rate(offered)}, sent {rate(med['sent_rps'])} (send lag p99 {ms(med['lag_p99_ms'])} ms)"
            f" · accepted p50 {ms(med['accepted_p50_ms'])} p99 {ms(med['accepted_p99_ms'])} ms"
            f" vs unloaded (c1) p99 {ms(unloaded_p99)} ms",
            ratio(med["accepted_p99_ms"], unloaded_p99) if measured else None, Target("<=", 3.0),
        )
        state.table.add(
            "7 overload", f"{name} 4x: time to 503",
            caveat + f"503 for {med['share_503']:.0%}, unanswered in {cfg.grace_s:g}s {med['share_unanswered']:.0%},"
            f" other errors {med['share_other']:.0%} · p99 of the 503s",
            med["rejected_p99_ms"] if measured else None, Target("<=", 50.0, "ms"),
        )
        state.table.data.setdefault("overload", {})[name] = runs


def batching_models(cfg: Config) -> list[Model]:
    return [m for m in cfg.models if m.name in cfg.batching_models]


def launch_batching(cfg: Config, servers: procs.ServerSet) -> dict[str, procs.Server]:
    """One serve-http per SERVE_BATCHING value, launched (not yet ready)."""
    models = batching_models(cfg)
    if not models:
        return {}
    return {
        flag: servers.gunicorn(f"batching-{flag}", server_env(cfg, models, cfg.workers, {"SERVE_BATCHING": flag}))
        .launch()
        for flag in ("true", "false")
    }


def section_batching(
    cfg: Config, state: State, servers: procs.ServerSet, flags: dict[str, procs.Server]
) -> None:
    models = batching_models(cfg)
    sides = {
        flag: routes(cfg, state.table, servers, server.wait_ready(), models, lambda n: f"/v1/models/{n}/predict")
        for flag, server in flags.items()
    }
    runs: dict[tuple[str, str], list[WrkResult]] = {}
    for rep in range(cfg.repeat):
        for model in models:
            for flag, targets in sides.items():  # on and off back to back
                if model.name in targets:
                    route = targets[model.name]
                    result = route.wrk(32, run_seconds(cfg, 32, route.warm_rps))
                    runs.setdefault((flag, model.name), []).append(result)
                    log(f"batching #{rep + 1} {flag} {model.name}: {wrk_figures(result)}")
    for model in models:
        on, off = runs.get(("true", model.name)), runs.get(("false", model.name))
        if not (on and off):
            continue
        a, b = median_wrk(on), median_wrk(off)
        state.table.add(
            "4 batching", f"{model.name} c32 on/off",
            f"on {wrk_figures(a)} · off {wrk_figures(b)} · p99 on/off {ratio(a.p99_ms, b.p99_ms):.2f}",
            ratio(a.ok_rps, b.ok_rps),
        )
