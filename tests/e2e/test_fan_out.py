"""Ensembles end to end: a real Gunicorn whose ensembles call four upstream
servers that this test starts on loopback (real HTTP/1.1 servers with
keep-alive, each answering after 250 ms; three speak our /v1 predict, one
the V2 protocol). Concurrent fan-out, a stalled member under both failure
policies, and no thread or connection leaked over 200 requests."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from tests.e2e.server import GunicornServer, wait_for
from tests.e2e.test_faults import show
from tests.e2e.upstream import Upstream

pytestmark = pytest.mark.e2e

LABELS = ["fresh", "rotten"]


def write_ensemble(root, name, members, **options) -> None:
    manifest = {"task": "text-classification", "adapter": "ensemble", "labels": LABELS,
                "options": {"members": members, **options}}
    (root / name).mkdir()
    (root / name / "model.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fan-out")
    ups = [Upstream(0.9), Upstream(0.7), Upstream(0.2), Upstream(0.6, protocol="v2")]
    stalled = Upstream(0.5, delay=3.0)
    for upstream in (*ups, stalled):
        upstream.__enter__()
    members = [{"name": f"r{i}", "model": "remote", "url": u.url, "protocol": u.protocol} for i, u in enumerate(ups)]
    root = tmp / "models"
    root.mkdir()
    write_ensemble(root, "fan", members, combine="mean", timeout_ms=1500, on_failure="fail")
    slow = {"name": "slow", "model": "remote", "url": stalled.url}
    write_ensemble(root, "fan-skip", [*members[:3], slow], combine="vote", timeout_ms=600, on_failure="skip")
    write_ensemble(root, "fan-fail", [*members[:3], slow], combine="mean", timeout_ms=600, on_failure="fail")
    server = GunicornServer(tmp, env={"SERVE_MODEL_REPOSITORY": str(root), "WORKERS": "1", "THREADS": "4",
                                      "SERVE_CACHE_BACKEND": "none"}).start()
    yield server, ups, stalled
    server.stop()
    for upstream in (*ups, stalled):
        upstream.__exit__()


def predict(server, model: str, text: str = "a warm, funny film") -> tuple[requests.Response, float]:
    started = time.perf_counter()
    r = requests.post(f"{server.url}/v1/models/{model}/predict", json={"inputs": [text]}, timeout=30)
    return r, time.perf_counter() - started


def test_four_members_are_called_concurrently(fleet, capsys):
    server, ups, _ = fleet
    predict(server, "fan")  # connections made and pooled
    timings = []
    for _ in range(5):
        r, seconds = predict(server, "fan")
        assert r.status_code == 200, r.text
        timings.append(seconds)
    # One after another the four would take 4 x 250 ms = 1 s.
    show(capsys, "fan-out", ms=[round(t * 1000) for t in timings])
    assert statistics.median(timings) < 0.45, timings
    (out,) = r.json()["outputs"]
    # The mean of the four members' probabilities (one of them over V2).
    assert out == {"category": "fresh", "scores": {"fresh": 0.6, "rotten": 0.4}, "partial": False, "failed": []}


def test_a_stalled_member_is_skipped_and_named_in_time(fleet):
    server, _, _ = fleet
    r, seconds = predict(server, "fan-skip")
    assert r.status_code == 200, r.text
    assert seconds < 1.0  # the member timeout (600 ms), not the stalled member's 3 s
    (out,) = r.json()["outputs"]
    assert out["partial"] is True and out["failed"] == ["slow"]
    assert out["category"] == "fresh" and out["scores"] == {"fresh": 0.666667, "rotten": 0.333333}  # 2 of 3 votes


def test_a_stalled_member_fails_the_request_with_504_under_fail(fleet):
    server, _, _ = fleet
    r, seconds = predict(server, "fan-fail")
    assert r.status_code == 504 and seconds < 1.0
    error = r.json()["error"]
    assert error["code"] == "deadline_exceeded" and "slow" in error["details"][0]["failed"]


def worker_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def upstream_connections(pid: int, ports: set[int]) -> int:
    """Established TCP connections of process ``pid`` to any of ``ports``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            port = int(fields[2].split(":")[1], 16)
            if fields[3] == "01" and fields[9] in inodes and port in ports:
                count += 1
    return count


def test_no_thread_or_connection_leaks_over_200_requests(fleet, capsys):
    server, ups, _ = fleet
    (pid,) = server.worker_pids()
    ports = {u.port for u in ups}

    def burst(count: int) -> None:
        with ThreadPoolExecutor(4) as pool:  # as many as the worker's threads
            for r, _ in pool.map(lambda _: predict(server, "fan"), range(count)):
                assert r.status_code == 200, r.text

    burst(40)  # the pools reach their working size
    threads, connections = worker_threads(pid), upstream_connections(pid, ports)
    accepted = sum(u.connections for u in ups)
    burst(200)
    after_threads, after_connections = worker_threads(pid), upstream_connections(pid, ports)
    show(capsys, "fan-out leaks", threads_before=threads, threads_after=after_threads, connections_before=connections,
         connections_after=after_connections, accepted_during=sum(u.connections for u in ups) - accepted)
    assert worker_threads(pid) <= threads, (threads, worker_threads(pid))
    assert upstream_connections(pid, ports) <= connections, (connections, upstream_connections(pid, ports))
    # Pooled: 800 member calls, and every upstream accepted no new connection beyond the pool's.
    assert sum(u.connections for u in ups) - accepted <= 4 * 4, [u.connections for u in ups]
    # At most one per request thread and upstream for fan, plus what the earlier
    # tests' two other ensembles (three of these upstreams each, one request at a time) keep.
    assert connections <= 4 * 4 + 2 * 3


def test_a_timed_out_members_connection_is_closed_not_kept(fleet):
    server, _, stalled = fleet
    (pid,) = server.worker_pids()
    for _ in range(3):
        r, _ = predict(server, "fan-skip")
        assert r.json()["outputs"][0]["failed"] == ["slow"]
    # The timed-out calls' sockets are dropped once their read times out.
    wait_for(lambda: upstream_connections(pid, {stalled.port}) == 0, 10, "the stalled member's sockets closed")
