"""A real Gunicorn process for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import requests

from serving.settings import REPO_ROOT

GUNICORN = Path(sys.executable).parent / "gunicorn"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py serve_http:app`` with the given environment.

    ``start`` returns once ``/readyz`` answers 200, or fails with the server's
    own output if it exits or is not ready within ``ready_timeout`` seconds.
    """

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, ready_timeout: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = tmp / "access.log"
        self.output = tmp / "gunicorn.out"
        self.ready_timeout = ready_timeout
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WORKERS": "2",
            "ACCESS_LOG": str(self.access_log),
            "SERVE_CACHE_DIR": str(tmp / "cache"),
            "SERVE_JOBS_DIR": str(tmp / "jobs"),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_seconds = 0.0

    def start(self, wait_ready: bool = True) -> "GunicornServer":
        """Start Gunicorn; unless ``wait_ready`` is false, return once ``/readyz`` is 200."""
        self.started_at = time.monotonic()
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", "serve_http:app"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_ready:
            return self
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.monotonic() - self.started_at
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)  # polling a condition, bounded by the deadline
        self.stop()
        raise RuntimeError(f"gunicorn not ready after {self.ready_timeout}s:\n{self.log()}")

    def access_records(self) -> list[dict]:
        """The access log's JSON lines (the default SERVE_LOG_FORMAT)."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def worker_pids(self) -> set[int]:
        assert self.process is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return {int(pid) for pid in out.split()}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the master (HUP reloads, TERM stops gracefully)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """The master's exit status, waiting at most ``timeout`` seconds."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def wait_for(self, condition, timeout: float, what: str):
        """``wait_for`` with the server's log tail in the failure message."""
        try:
            return wait_for(condition, timeout, what, interval=0.02)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()[-3000:]}") from None

    def access_count(self, needle: str = "") -> int:
        """Lines of the access log so far (that contain ``needle``)."""
        if not self.access_log.exists():
            return 0
        return sum(needle in line for line in self.access_log.read_text(errors="replace").splitlines())

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.process, timeout)

    def __enter__(self) -> "GunicornServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(process: subprocess.Popen | None, timeout: float) -> int:
    """SIGTERM, then SIGKILL the whole group after ``timeout`` s; the exit status."""
    if process is None or process.poll() is not None:
        return process.returncode if process else 0
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition()`` until it returns a truthy value, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling a condition, bounded by the deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Process:
    """A background process in its own session, its output in a file."""

    def __init__(self, argv: list[str], output: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.output = output
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self):
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.argv[0]} exited with {self.process.returncode}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no handler runs, nothing is cleaned up."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.process, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class JobWorker(Process):
    """``python -m jobs.worker`` with the same environment as a GunicornServer."""

    def __init__(self, server: GunicornServer, name: str = "worker") -> None:
        super().__init__([sys.executable, "-m", "jobs.worker"], server.output.parent / f"{name}.out", server.env)

    def start(self) -> "JobWorker":
        super().start()
        # Ready once it logged so (models loaded, consumer about to fork).
        wait_for(lambda: self.check_alive() or "job worker ready" in self.log(), 120, "the job worker")
        return self

    def processes(self) -> set[int]:
        """Its job processes alive now: its children that logged that they started as one."""
        started = {int(m.group(1)) for m in re.finditer(r"job worker process (\d+):", self.log())}
        found: set[int] = set()
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            found |= {int(child) for child in Path(f"/proc/{self.process.pid}/task/{task}/children").read_text().split()}
        return started & found


class RedisServer(Process):
    """A throw-away ``redis-server`` on a free loopback port, its files in ``tmp``.

    Persistent (AOF, fsync every second) unless ``volatile``: then nothing is
    kept on disk, and a restart loses every key, which the job backend refuses
    unless ``SERVE_JOBS_ALLOW_VOLATILE=true``. ``extra`` are more
    ``redis-server`` options (``--rename-command CONFIG ""``). ``start`` again
    after ``stop`` or ``kill`` restarts it on the same port and folder.
    """

    def __init__(self, tmp: Path, volatile: bool = False, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.volatile = volatile
        persistence = ["--save", "", "--appendonly", "no"] if volatile else ["--appendonly", "yes", "--appendfsync", "everysec"]
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), *persistence, "--dir", str(tmp),
                "--appenddirname", f"aof-{self.port}", "--dbfilename", f"dump-{self.port}.rdb", *(extra or [])]
        super().__init__(argv, tmp / f"redis-{self.port}.out", dict(os.environ))

    def start(self) -> "RedisServer":
        import redis

        super().start()
        client = redis.Redis.from_url(self.url)

        def ping() -> bool:
            self.check_alive()
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(ping, 30, "redis-server")
        return self


class S3Server(Process):
    """moto's S3-compatible server on a free loopback port, with one bucket."""

    ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    DEFAULT_BUCKET = "serve-jobs"

    def __init__(self, tmp: Path, bucket: str = DEFAULT_BUCKET) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        argv = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        super().__init__(argv, tmp / "moto.out", {**os.environ, **self.ENV})

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def start(self) -> "S3Server":
        super().start()

        def up() -> bool:
            self.check_alive()
            try:
                return requests.get(self.url, timeout=2).status_code < 500
            except requests.ConnectionError:
                return False

        wait_for(up, 60, "moto_server")
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def settings_env(self) -> dict[str, str]:
        """The settings that send job results to this server."""
        return {**self.ENV, "SERVE_S3_BUCKET": self.bucket, "SERVE_S3_ENDPOINT_URL": self.url}


@dataclass
class JobStack:
    """A Gunicorn and a job worker on one job backend: ``embedded`` (SQLite
    and disk under ``tmp``) or ``redis+s3`` (a redis-server and a moto S3
    server of their own). Tests may replace ``worker``; the one there at the
    end is stopped."""

    backend: str
    server: GunicornServer
    worker: JobWorker
    s3: "S3Server | None" = None
    extra: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @classmethod
    @contextmanager
    def running(cls, backend: str, tmp: Path, env: dict[str, str]) -> Iterator["JobStack"]:
        """The stack (of the subclass it is called on), stopped on exit."""
        env = {**env, "SERVE_JOBS_DIR": str(tmp / "jobs")}
        extra: list[Process] = []
        s3 = None
        if backend == "redis+s3":
            redis_server = RedisServer(tmp).start()
            s3 = S3Server(tmp).start()
            extra = [redis_server, s3]
            env.update({"REDIS_URL": redis_server.url, **s3.settings_env()})
        server = GunicornServer(tmp, env=env).start()
        stack = cls(backend, server, JobWorker(server).start(), s3, extra)
        try:
            yield stack
        finally:
            stack.worker.stop()
            server.stop()
            for process in extra:
                process.stop()
