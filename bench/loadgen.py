"""Load generators: wrk for closed-loop throughput, a small asyncio client for the rest.

wrk (a C program, its own process) measures throughput and latency at a fixed
concurrency. The asyncio client covers what wrk cannot: exactly N requests
(memory section) and an open-loop schedule (overload section), where requests
are fired at their planned times whether or not earlier answers came back, and
latency counts from the planned time, so a slow server cannot slow the
offered load down (no coordinated omission).

The client speaks just enough HTTP/1.1 for our own servers (Content-Length
bodies, keep-alive) over asyncio protocols: an HTTP library would cost several
times more CPU per request, and the client shares the box's two cores with the
server it measures. uvloop is used when installed.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, TypeVar

POST_LUA = Path(__file__).with_name("post.lua")
WRK = "wrk"
WRK_TIMEOUT_S = 10  # well above any latency we expect; a timeout is an error, not a sample
T = TypeVar("T")


# --- wrk ---------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    ok_rps: float  # 2xx (and 3xx) answers per second: error pages are not throughput
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    statuses: dict[int, int] = field(default_factory=dict)


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    def number(pattern: str, default: str = "0") -> str:
        found = re.search(pattern, output)
        return found.group(1) if found else default

    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    statuses = {int(k): int(v) for k, v in re.findall(r"(\d{3})=(\d+)", number(r"statuses: (.*)", ""))}
    rps = float(number(r"Requests/sec:\s+([\d.]+)"))
    requests = int(number(r"(\d+) requests in"))
    non_2xx = int(number(r"Non-2xx or 3xx responses: (\d+)"))
    return WrkResult(
        rps=rps,
        ok_rps=rps * (requests - non_2xx) / requests if requests else 0.0,
        p50_ms=_ms(number(r"\n\s+50%\s+(\S+)", "0ms")),
        p99_ms=_ms(number(r"\n\s+99%\s+(\S+)", "0ms")),
        requests=requests,
        non_2xx=non_2xx,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
        statuses=statuses,
    )


def wrk(url: str, concurrency: int, seconds: int, body_file: Path | None = None) -> WrkResult:
    """One wrk run: POST ``body_file`` as JSON, or GET when there is none."""
    argv = [WRK, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", f"--timeout={WRK_TIMEOUT_S}s"]
    env = dict(os.environ)
    if body_file is not None:
        argv += ["-s", str(POST_LUA)]
        env["BENCH_BODY"] = str(body_file)
    done = subprocess.run(
        argv + [url], capture_output=True, text=True, env=env, timeout=seconds + WRK_TIMEOUT_S + 20, check=True
    )
    return parse_wrk(done.stdout)


# --- asyncio HTTP/1.1 client --------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed before the answer"))

    def send(self, payload: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        lines = bytes(self.buffer[:end]).split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                self.keep_alive = value.strip().lower() != b"close"
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(int(lines[0].split()[1]))


class Client:
    """Requests over a pool of at most ``max_connections`` keep-alive connections."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host, self.port = host, port
        self.slots = asyncio.Semaphore(max_connections)
        self.idle: list[_Connection] = []

    async def request(self, payload: bytes, on_sent: Callable[[], None] | None = None) -> int:
        """The status of one request; ``payload`` is the complete request bytes."""
        async with self.slots:
            conn = None
            while self.idle and conn is None:
                candidate = self.idle.pop()
                conn = None if candidate.closed else candidate
            if conn is None:
                _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            try:
                future = conn.send(payload)
                if on_sent:
                    on_sent()
                status = await future
            except BaseException:
                if conn.transport:
                    conn.transport.close()
                raise
            if conn.keep_alive and not conn.closed:
                self.idle.append(conn)
            elif conn.transport:
                conn.transport.close()
            return status

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport:
                conn.transport.close()
        self.idle.clear()


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when installed (less client CPU), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(make())
    return uvloop.run(make())


def send_all(host: str, port: int, payloads: Iterable[bytes], concurrency: int, timeout_s: float) -> Counter[int]:
    """Closed loop: every payload once, ``concurrency`` at a time; statuses counted (0 = failed)."""

    async def main() -> Counter[int]:
        client = Client(host, port, concurrency)
        statuses: Counter[int] = Counter()
        todo = iter(payloads)

        async def worker() -> None:
            for payload in todo:  # one shared iterator: each payload goes out once
                try:
                    statuses[await client.request(payload)] += 1
                except (ConnectionError, OSError):
                    statuses[0] += 1

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout_s)
        finally:
            client.close()
        return statuses

    return run_async(main)


@dataclass
class OpenLoopResult:
    offered_rps: float  # the schedule
    sent_rps: float  # what the client managed to put on the wire
    planned: int
    statuses: Counter[int]
    ok_ms: list[float]  # latency of 2xx answers, from the planned send time
    rejected_ms: list[float]  # latency of 503 answers, from the planned send time
    lag_ms: list[float]  # planned -> written: client lag and waiting for a free connection
    unfinished: int  # no answer within the grace period (cancelled)

    def summary(self) -> dict[str, float]:
        """Figures of the run. Accepted means not rejected: 2xx answers plus
        requests never answered, which count as infinitely slow (so a server
        that queues without bound cannot look fast by not answering)."""
        accepted = self.ok_ms + [math.inf] * self.unfinished
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        planned = self.planned or 1
        return {
            "offered_rps": self.offered_rps,
            "sent_rps": self.sent_rps,
            "lag_p99_ms": percentile(self.lag_ms, 99),
            "accepted_p50_ms": percentile(accepted, 50),
            "accepted_p99_ms": percentile(accepted, 99),
            "rejected_p99_ms": percentile(self.rejected_ms, 99),
            "share_2xx": ok / planned,
            "share_503": self.statuses.get(503, 0) / planned,
            "share_unanswered": self.unfinished / planned,
            "share_other": (planned - ok - self.statuses.get(503, 0) - self.unfinished) / planned,
        }


def open_loop(
    host: str, port: int, payload: bytes, rate: float, seconds: float, max_connections: int, grace_s: float
) -> OpenLoopResult:
    """Fire ``rate`` requests/s for ``seconds`` on a fixed schedule, then wait ``grace_s`` for stragglers."""

    async def main() -> OpenLoopResult:
        client = Client(host, port, max_connections)
        statuses: Counter[int] = Counter()
        ok: list[float] = []
        rejected: list[float] = []
        lag: list[float] = []
        sent_at: list[float] = []

        async def one(planned: float) -> None:
            def on_sent() -> None:
                now = time.perf_counter()
                sent_at.append(now)
                lag.append((now - planned) * 1e3)

            try:
                status = await client.request(payload, on_sent)
            except (ConnectionError, OSError):
                statuses[0] += 1
                return
            latency = (time.perf_counter() - planned) * 1e3
            statuses[status] += 1
            if 200 <= status < 300:
                ok.append(latency)
            elif status == 503:
                rejected.append(latency)

        total = int(rate * seconds)
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter() + 0.01
        while len(tasks) < total:
            # Fire everything due by now, each stamped with its own planned time:
            # sleeping per request would drift at thousands of requests per second.
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while len(tasks) < due:
                tasks.append(asyncio.create_task(one(start + len(tasks) / rate)))
            await asyncio.sleep(0.001)
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        client.close()
        window = (max(sent_at) - min(sent_at)) if len(sent_at) > 1 else 0.0
        return OpenLoopResult(
            offered_rps=rate,
            sent_rps=(len(sent_at) - 1) / window if window else 0.0,
            planned=total,
            statuses=statuses,
            ok_ms=ok,
            rejected_ms=rejected,
            lag_ms=lag,
            unfinished=len(pending),
        )

    return run_async(main)
