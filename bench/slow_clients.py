"""What a stalled connection costs the service, and how long real clients take
to send a request: the figures behind ``SERVE_HEADER_TIMEOUT_S`` and
``SERVE_BODY_TIMEOUT_S`` (README, "Slow clients").

    .venv/bin/python bench/slow_clients.py [--stalled 1000]

Starts Gunicorn on its defaults (2 workers x 8 threads), with read deadlines
long enough that nothing is cut during the run, then prints:

1. a normal client's latency (``/healthz`` and ``/v1/classify``, p50 / p99 of
   200 requests) with no stalled connection, then while ``--stalled``
   connections (half stalled in their headers, half in their bodies) are held
   open, and the service's private memory before and during (KiB per stalled connection);
2. how long ``requests`` takes to send bodies of 1 KiB, 1 MiB and 20 MiB (the
   body limit) over loopback, from connect to the answer's first byte, and a
   body sent at a paced 2 Mbit/s (a slow mobile uplink), so the timeouts can
   be compared with what a client needs.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench import procs  # noqa: E402


def latencies(url: str, count: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms of ``count`` requests, each on a new connection."""
    seconds = []
    body = {"text": "a warm, funny film"}
    for i in range(count):
        began = time.perf_counter()
        r = requests.post(url + "/v1/classify", json=body, timeout=30) if i % 2 else requests.get(url + "/healthz", timeout=30)
        seconds.append(time.perf_counter() - began)
        r.raise_for_status()
    seconds.sort()
    return statistics.median(seconds) * 1000, seconds[int(len(seconds) * 0.99) - 1] * 1000


def private_mb(pids: list[int]) -> float:
    """Memory only these processes hold (private pages): unlike PSS, it does not
    move when other processes on the box share or stop sharing library pages."""
    return procs.smaps_mb(pids, ("Private_Clean:", "Private_Dirty:"))


def stall(port: int, count: int) -> list[socket.socket]:
    conns = []
    for i in range(count):
        conn = socket.create_connection((procs.HOST, port), timeout=10)
        if i % 2:
            conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        else:
            conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 40\r\n\r\n{\"text\":")
        conns.append(conn)
    return conns


def send_time(url: str, size: int) -> float:
    """Seconds from connect to the answer of one POST whose body is ``size`` bytes (422 past 20,000 characters)."""
    body = json.dumps({"text": "x" * (size - 12)}).encode()
    began = time.perf_counter()
    r = requests.post(url + "/v1/classify", data=body, headers={"Content-Type": "application/json"}, timeout=120)
    assert r.status_code in (200, 422), r.status_code
    return time.perf_counter() - began


def paced_send_time(port: int, size: int, bits_per_s: float) -> tuple[float, int]:
    """Seconds to send a ``size``-byte body at ``bits_per_s``, and the status answered."""
    body = json.dumps({"text": "x" * (size - 12)}).encode()
    conn = socket.create_connection((procs.HOST, port), timeout=120)
    began = time.perf_counter()
    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    step = 16 * 1024
    for start in range(0, len(body), step):
        conn.sendall(body[start:start + step])
        due = began + (start + step) * 8 / bits_per_s
        time.sleep(max(0.0, due - time.perf_counter()))  # the link's pace, not synchronisation
    answer = conn.recv(100)
    conn.close()
    return time.perf_counter() - began, int(answer.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=1000, help="connections held stalled (default 1000)")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    env = {"SERVE_HEADER_TIMEOUT_S": "600", "SERVE_BODY_TIMEOUT_S": "600", "SERVE_CACHE_BACKEND": "none",
           "PROMETHEUS_MULTIPROC_DIR": str(logdir / "metrics"), "ACCESS_LOG": ""}
    with procs.ServerSet(logdir) as servers:
        server = servers.gunicorn("serve-http", env).start()
        latencies(server.url, 50)  # warm
        base_p50, base_p99 = latencies(server.url)
        base_mem = private_mb(server.pids())
        conns = stall(server.port, args.stalled)
        # A request still being sent after 1 s no longer counts as load for the
        # accept pause (README, "Workers, threads and load shedding"): measured
        # once every stalled connection is past that, the steady state.
        time.sleep(2)
        try:
            held_p50, held_p99 = latencies(server.url)
            held_mem = private_mb(server.pids())
        finally:
            for conn in conns:
                conn.close()
        per_conn_kib = (held_mem - base_mem) * 1024 / args.stalled
        print(f"normal client, no stalled connection:  p50 {base_p50:.1f} ms  p99 {base_p99:.1f} ms  private memory {base_mem:.1f} MiB")
        print(f"normal client, {args.stalled} stalled connections: p50 {held_p50:.1f} ms  p99 {held_p99:.1f} ms  "
              f"private memory {held_mem:.1f} MiB ({per_conn_kib:.1f} KiB per stalled connection)")
        print(f"p99 ratio held / none: {held_p99 / base_p99:.2f}")
        for size in (1024, 1024 * 1024, 20 * 1024 * 1024 - 64):
            times = sorted(send_time(server.url, size) for _ in range(5))
            print(f"loopback POST of {size / 1024:,.0f} KiB: median {statistics.median(times) * 1000:.1f} ms (5 runs)")
        seconds, status = paced_send_time(server.port, 1024 * 1024, 2e6)
        print(f"1 MiB body paced at 2 Mbit/s: sent and answered in {seconds:.2f} s (status {status})")


if __name__ == "__main__":
    main()
