"""The gthread worker (serving/worker.py) against a real Gunicorn: its bounded
backlog, and how it leaves new connections to less busy workers."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer
from tests.faulty_adapter import write_faulty_model_folder

pytestmark = pytest.mark.e2e


def test_a_full_backlog_answers_503_at_once_and_the_admitted_requests_still_finish(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models" / "sentiment", repo / "sentiment")
    write_faulty_model_folder(repo)
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "1", "THREADS": "1", "SERVE_WORKER_BACKLOG": "2"}
    with GunicornServer(tmp_path, env=env) as server:

        def classify(text: str, rid: str) -> tuple[requests.Response, float]:
            started = time.monotonic()
            r = requests.post(server.url + "/v1/classify", json={"text": text, "model": "faulty"},
                              headers={"X-Request-ID": rid, "Connection": "close"}, timeout=60)
            return r, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            # The worker's one thread is held inside the model until the gate opens.
            holder = pool.submit(classify, f"gate:{gate}", "holder")
            deadline = time.monotonic() + 30
            while not (gate / "entered").exists():
                assert time.monotonic() < deadline and not holder.done(), "the model never started"
                time.sleep(0.01)  # polling a condition, bounded by the deadline
            others = [pool.submit(classify, "a short text", f"extra-{i}") for i in range(6)]
            # While the gate is shut nothing admitted can finish: whatever answers now was shed.
            early: list[tuple[requests.Response, float]] = []
            deadline = time.monotonic() + 30
            while len(early) < 4:
                assert time.monotonic() < deadline, f"only {len(early)} answered while the thread was busy"
                early = [f.result() for f in others if f.done()]
                time.sleep(0.01)  # polling a condition, bounded by the deadline
            assert len(early) == 4
            (gate / "release").touch()
            answers = [f.result(timeout=60) for f in others]
            held, _ = holder.result(timeout=60)

        assert held.status_code == 200
        statuses = sorted(r.status_code for r, _ in answers)
        assert statuses == [200, 200, 503, 503, 503, 503]
        for r, seconds in early:
            assert r.status_code == 503
            assert r.headers["Retry-After"] == "1"
            assert r.headers["Connection"] == "close"
            error = r.json()["error"]
            assert error["code"] == "overloaded"
            assert error["details"] == [{"field": None, "message": error["message"], "type": "overloaded",
                                         "waiting": 2, "limit": 2}]
            assert error["request_id"] == r.headers["X-Request-ID"]
            assert r.headers["X-Request-ID"].startswith("extra-")
        print(f"\nshed 4 of 6 while the thread was busy; slowest 503 in {max(s for _, s in early) * 1000:.0f} ms")

        # The worker is healthy afterwards, and the metrics count the shed requests.
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert 'serve_http_rejected_requests_total{reason="overloaded",route="<worker backlog>"} 4.0' in metrics


def _hold_model(server: GunicornServer, gate: Path) -> http.client.HTTPConnection:
    """A request held inside the faulty model until the gate opens (its worker's one thread is busy)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/classify", body=f'{{"text": "gate:{gate}", "model": "faulty"}}',
                 headers={"Content-Type": "application/json"})
    server.wait_for(lambda: (gate / "entered").exists(), 30, "the held request to enter the model")
    return conn


def test_a_busy_worker_leaves_new_connections_to_an_idle_one(tmp_path):
    repo = tmp_path / "models"
    write_faulty_model_folder(repo)
    gate = tmp_path / "gate"
    gate.mkdir()
    # One thread per worker and a delay far longer than an answer takes: a
    # connection the busy worker took would wait for the gate, past the timeout.
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "2", "THREADS": "1",
           "SERVE_WORKER_ACCEPT_DELAY_MS": "3000", "SERVE_CACHE_BACKEND": "none"}
    with GunicornServer(tmp_path, env=env) as server:
        server.wait_for(lambda: server.log().count("compute thread(s)") == 2, 30, "both workers to start")
        held = _hold_model(server, gate)
        try:
            for i in range(20):  # a new connection each: each is accepted anew
                assert _get_until_closed(server.port, "/healthz").startswith(b"HTTP/1.1 200 "), i
            # The busy worker paused; when its pause ends with nothing left to
            # accept, it sleeps in its poll again, as does the other.
            workers = server.worker_pids()
            before = sum(_cpu_seconds(pid) for pid in workers)
            time.sleep(3.5)  # a window to measure CPU in (the last pause ends inside it)
            assert sum(_cpu_seconds(pid) for pid in workers) - before < 0.4, "a worker spins while idle"
        finally:
            (gate / "release").touch()
        response = held.getresponse()
        assert response.status == 200
        held.close()
    pids = {record["pid"] for record in server.access_records() if record["path"] == "/healthz"}
    held_pid = next(record["pid"] for record in server.access_records() if record["path"] == "/v1/classify")
    assert held_pid not in pids and len(pids) == 1


def test_when_every_worker_is_busy_a_new_connection_is_taken_after_the_delay(tmp_path):
    repo = tmp_path / "models"
    write_faulty_model_folder(repo)
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "1", "THREADS": "2",
           "SERVE_WORKER_ACCEPT_DELAY_MS": "400", "SERVE_CACHE_BACKEND": "none", "KEEPALIVE": "30"}
    with GunicornServer(tmp_path, env=env) as server:
        # Two idle keep-alive connections: the one worker holds THREADS connections.
        idle = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(2)]
        for conn in idle:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
        started = time.monotonic()
        r = requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=10)
        waited = time.monotonic() - started
        assert r.status_code == 200
        assert 0.4 <= waited < 5, waited
        # Ten at once: when the pause ends the worker takes all that wait, not one
        # per pause (that would take 10 x 0.4 s).
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            burst = list(pool.map(lambda _: _get_until_closed(server.port, "/healthz"), range(10)))
        burst_s = time.monotonic() - started
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in burst)
        assert burst_s < 2.0, burst_s
        # Once the pause is over and nothing waits, the idle worker sleeps in its poll.
        (worker,) = server.worker_pids()
        before = _cpu_seconds(worker)
        time.sleep(1.0)  # a window to measure CPU in, not a synchronisation
        assert _cpu_seconds(worker) - before < 0.2, "the worker spins while idle"
        # The kept connections still work, and a connection closed frees room: no delay then.
        for conn in idle:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            conn.close()
        server.wait_for(lambda: _answers_within(server, 0.3), 10, "an undelayed answer once the connections closed")
    print(f"\nbusy worker took the connection after {waited * 1000:.0f} ms, 10 more in {burst_s * 1000:.0f} ms (delay 400 ms)")


def _get_until_closed(port: int, path: str) -> bytes:
    """GET on a new connection, read until the server closes it: by then the
    server no longer counts the connection, so the next one meets an idle worker."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answers_within(server: GunicornServer, seconds: float) -> bool:
    started = time.monotonic()
    r = requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=10)
    return r.status_code == 200 and time.monotonic() - started < seconds


def test_a_request_that_would_wait_too_long_for_a_thread_is_refused_at_once(tmp_path):
    repo = tmp_path / "models"
    (repo / "slow").mkdir(parents=True)
    (repo / "slow" / "model.yaml").write_text(
        'task: text-classification\nadapter: "tests.slow_adapter:SlowClassifier"\nversion: "1"\n'
    )
    calls = tmp_path / "calls.log"
    env = {"SERVE_MODEL_REPOSITORY": str(repo), "WORKERS": "1", "THREADS": "1", "SERVE_CACHE_BACKEND": "none",
           "SERVE_WORKER_MAX_WAIT_MS": "100", "SERVE_WORKER_ACCEPT_DELAY_MS": "0", "SLOW_ADAPTER_LOG": str(calls)}

    def classify(text: str) -> tuple[requests.Response, float]:
        started = time.monotonic()
        r = requests.post(server.url + "/v1/classify", json={"text": text, "model": "slow"}, timeout=60)
        return r, time.monotonic() - started

    with GunicornServer(tmp_path, env=env) as server, requests.Session() as calibration:
        # Requests of 0.25 s each: the worker learns its time per request (at
        # least 0.25 x (1 - 0.8^6) = 0.18 s after six of them). One kept-alive
        # connection: a closed one would be read (its end) by the one thread,
        # and the next request would count it as waiting ahead.
        for _ in range(6):
            r = calibration.post(server.url + "/v1/classify", json={"text": "sleep:0.25", "model": "slow"}, timeout=60)
            assert r.status_code == 200
        with ThreadPoolExecutor(3) as pool:
            holder = pool.submit(classify, "sleep:3")
            server.wait_for(lambda: calls.exists() and "3.0" in calls.read_text(), 10, "the long request to start")
            # The one thread is busy: the first of these waits for it, the second
            # would wait behind the first (about 0.18 s or more > 100 ms).
            pair = [pool.submit(classify, "quick"), pool.submit(classify, "quick")]
            answers = [f.result(timeout=60) for f in pair]
            assert holder.result(timeout=60)[0].status_code == 200
    statuses = sorted(r.status_code for r, _ in answers)
    assert statuses == [200, 503], statuses
    refused, seconds = next((r, s) for r, s in answers if r.status_code == 503)
    assert seconds < 1.0  # at once, not after the long request
    assert refused.headers["Retry-After"] == "1"
    [details] = refused.json()["error"]["details"]
    assert details["waiting"] == 1 and details["limit_ms"] == 100 and details["expected_wait_ms"] >= 150
