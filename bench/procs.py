"""Server processes: start, wait until ready, stop (always), and measure memory.

Every server runs in its own session (process group), so stopping it kills the
master and all its workers even if the master dies first; ``ServerSet`` stops
every server it started when its ``with`` block ends, error or not.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from bench.workload import REPO_ROOT

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def post(port: int, path: str, body: bytes) -> tuple[int, str]:
    """One JSON POST: status and the start of the answer."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(2000).decode(errors="replace")
    finally:
        conn.close()


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


class Server:
    """One server command in its own process group, its output in a log file."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], port: int, logdir: Path,
                 cwd: Path = REPO_ROOT) -> None:
        self.label, self.argv, self.port, self.cwd = label, argv, port, cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log = logdir / f"{label}.log"
        self.ready_dir: Path | None = None  # set for servers whose workers report readiness by file
        self.expected_ready = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.launched_at = 0.0
        self.startup_s = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Server:
        return self.launch().wait_ready()

    def launch(self) -> Server:
        """Spawn the server without waiting, so another can be warmed meanwhile."""
        self.launched_at = time.monotonic()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self) -> Server:
        """Block until ready; ``startup_s`` is then the time since the spawn."""
        assert self.process is not None
        deadline = self.launched_at + READY_TIMEOUT_S
        while True:  # checked at least once: a server launched long ago is ready by now
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.tail()}")
            if self._ready():
                self.startup_s = time.monotonic() - self.launched_at
                return self
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polling a condition, bounded by the deadline
        raise RuntimeError(f"{self.label} not ready after {READY_TIMEOUT_S:.0f}s:\n{self.tail()}")

    def _ready(self) -> bool:
        if self.ready_dir is not None:  # every worker, not just the first to accept
            return len(list(self.ready_dir.iterdir())) >= self.expected_ready
        try:
            return _get(self.port, "/readyz") == 200
        except OSError:
            return False

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def pids(self) -> list[int]:
        """The master and every descendant."""
        if self.process is None:
            return []
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return found

    def interrupt(self) -> None:
        """Ask the whole group to quit now. SIGINT is a quick shutdown for
        Gunicorn and uvicorn alike: a graceful one would first serve whatever
        backlog an overload run left."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)  # the session leader's pid is the group id
            except ProcessLookupError:
                pass

    def stop(self, deadline: float | None = None) -> None:
        """Interrupt, wait until ``deadline`` at most, then kill whatever is left of the group."""
        if self.process is None:
            return
        self.interrupt()
        try:
            self.process.wait(max(0.0, (deadline or time.monotonic() + STOP_TIMEOUT_S) - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # stragglers of the group (workers whose master is gone), always
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None


class ServerSet:
    """Starts servers and guarantees they are all stopped at the end of the block."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.servers: list[Server] = []

    def __enter__(self) -> ServerSet:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for server in self.servers:  # all at once: stopping one by one adds up the waits
            server.interrupt()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for server in self.servers:
            server.stop(deadline)

    def settle(self, timeout_s: float = 20.0, interval_s: float = 0.2, busy_share: float = 0.15) -> bool:
        """Wait until no server of the set still works off an earlier load (wrk stops
        sending, not the server computing: 64 queued image requests are ~2 s of CPU)
        or loads its models; False if still busy at the timeout."""
        deadline = time.monotonic() + timeout_s
        pids = [pid for server in self.servers for pid in server.pids()]
        before = _cpu_seconds(pids)
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            after = _cpu_seconds(pids)
            if after - before < interval_s * busy_share:
                return True
            before = after
        return False

    def _add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def gunicorn(self, label: str, env: dict[str, str], app: str = "serve_http:app", tree: Path = REPO_ROOT) -> Server:
        """Gunicorn on the code of ``tree`` (another checkout: an earlier commit), with this venv."""
        port = free_port()
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", app]
        return self._add(Server(label, argv, {"HOST": HOST, "PORT": str(port), **env}, port, self.logdir, tree))

    def uvicorn(self, label: str, app: str, workers: int, env: dict[str, str]) -> Server:
        port = free_port()
        ready_dir = Path(tempfile.mkdtemp(prefix=f"{label}-ready-", dir=self.logdir))
        argv = [str(BIN / "uvicorn"), app, "--host", HOST, "--port", str(port), "--workers", str(workers)]
        server = Server(label, argv, {"BENCH_READY_DIR": str(ready_dir), **env}, port, self.logdir)
        server.ready_dir, server.expected_ready = ready_dir, workers
        return self._add(server)


# --- memory --------------------------------------------------------------------


def pss_mb(pids: list[int]) -> float:
    """Sum of proportional set sizes: shared pages count once across the processes."""
    return smaps_mb(pids, ("Pss:",))


def smaps_mb(pids: list[int], fields: tuple[str, ...]) -> float:
    """MiB the processes' ``smaps_rollup`` gives for ``fields``, summed."""
    total_kb = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(fields):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def split(total: int, rates: dict[str, float]) -> dict[str, int]:
    """``total`` requests over the models in proportion to their speed: each model
    gets about the same compute time, so the slow image model does not dominate
    the run time and the fast text model still sees thousands of requests."""
    speed = sum(rates.values())
    return {name: max(1, round(total * rate / speed)) for name, rate in rates.items()}


def _in_process(
    repository: str, serve_names: str, models: list[tuple[str, bool, str]], total: int,
    rates: dict[str, float], out: Any,
) -> None:
    from bench.rawrate import calls_per_second
    from bench.workload import limit_threads

    limit_threads()
    from predict import ModelRegistry
    from serving.settings import Settings
    from utils_serve import ImageLimits, decode_image

    settings = Settings()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, tuple(settings.image_formats))
    registry = ModelRegistry(repository, serve_names.split(","))
    registry.load_all()

    def request(name: str, is_image: bool, wire: str) -> Callable[[], Any]:
        adapter = registry.get(name)
        # What a worker does per request: decode, then predict.
        return lambda: adapter.predict([decode_image(wire, limits).image if is_image else wire])

    calls = {name: request(name, is_image, wire) for name, is_image, wire in models}
    for name, call in calls.items():
        speed = calls_per_second(call, 0.5)  # also the warm-up
        rates.setdefault(name, speed)
    plan = split(total, rates)
    out.put(plan)
    for name, count in plan.items():
        for _ in range(count):
            calls[name]()
    out.put(pss_mb([os.getpid()]))


def in_process_pss(
    repository: str, serve_names: str, models: list[tuple[str, bool, str]], total: int,
    rates: dict[str, float], timeout_s: float,
) -> tuple[dict[str, int], float]:
    """A fresh process loads the models and serves ``total`` predictions split over
    them (by ``rates``, else by its own warm-up speed); returns the split and its PSS (MB)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_in_process, args=(repository, serve_names, models, total, rates, out), daemon=True)
    child.start()
    try:
        plan = out.get(timeout=timeout_s)
        return plan, float(out.get(timeout=timeout_s))
    finally:
        child.join(5)
        if child.is_alive():
            child.terminate()
            child.join(5)
