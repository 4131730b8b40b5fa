"""Slow, stalled and malformed clients against a real Gunicorn: the worker's
event loop reads each request whole before a thread takes it
(serving/reading.py), so none of them holds a thread or gets a non-JSON answer."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
import weakref

import pytest
import requests

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
MAX_BODY = 100_000
STALLED = 200


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    """The default worker shape (2 workers x 8 threads), short read deadlines."""
    tmp = tmp_path_factory.mktemp("slow-clients")
    env = {
        "SERVE_MODEL_REPOSITORY": str(model_repo),
        "SERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "SERVE_MAX_BODY_BYTES": str(MAX_BODY),
        "KEEPALIVE": "30",
    }
    with GunicornServer(tmp, env=env) as server:
        yield server


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


# Bytes a recv() brought past the answer read_answer() returned: the start of
# the next one (answers to pipelined requests can come in one read).
_read_ahead: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_answer(conn: socket.socket) -> tuple[bytes, dict, bytes]:
    """One whole response (status line, headers, Content-Length body); what
    was read past it is kept for the next call on the same connection."""
    data = _read_ahead.pop(conn, b"")
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before an answer: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError(f"closed in an answer's body: {head!r}")
        body += chunk
    if len(body) > length:
        _read_ahead[conn] = body[length:]
    return lines[0].encode(), headers, body[:length]


def closed_by_server(conn: socket.socket) -> bool:
    if _read_ahead.get(conn):
        return False  # more came after the last answer read
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


class Trickler:
    """Sends one byte of each connection's remaining bytes every ``interval``
    seconds, from one thread; records when each connection gets an answer."""

    def __init__(self, conns: list[socket.socket], rest: bytes, interval: float) -> None:
        self.conns, self.rest, self.interval = conns, rest, interval
        self.answers: dict[int, tuple[float, bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sent = 0
        selector = selectors.DefaultSelector()
        for i, conn in enumerate(self.conns):
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, i)
        while not self._stop.is_set() and len(self.answers) < len(self.conns):
            for i, conn in enumerate(self.conns):
                if i not in self.answers and sent < len(self.rest):
                    try:
                        conn.send(self.rest[sent:sent + 1])
                    except OSError:
                        pass
            sent += 1
            deadline = time.monotonic() + self.interval
            while (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    i = key.data
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b"<reset>"
                    if i not in self.answers:
                        self.answers[i] = (time.monotonic(), data)
                    selector.unregister(key.fileobj)

    def __enter__(self) -> "Trickler":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self.conns:
            conn.close()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)


def normal_client_latencies(server, count: int = 20) -> list[float]:
    """A well-behaved client's requests, each on a new connection, one after another: seconds each."""
    seconds = []
    for i in range(count):
        began = time.perf_counter()
        if i % 2:
            r = requests.post(server.url + "/v1/classify", json={"text": "a warm, funny film"}, timeout=10)
        else:
            r = requests.get(server.url + "/healthz", timeout=10)
        seconds.append(time.perf_counter() - began)
        assert r.status_code == 200, r.text
    return seconds


@pytest.mark.parametrize(
    ("opening", "rest", "part", "timeout"),
    [
        # The request line, then the headers one byte at a time; a tenth of
        # them a WebSocket handshake (the stream route is cut off the same way).
        (b"POST /v1/classify HTTP/1.1\r\n", b"Host: x\r\nContent-Type: application/json\r\n" * 10, "headers",
         HEADER_TIMEOUT_S),
        # Whole headers announcing 40 bytes, 8 of them, then a byte at a time.
        (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
         b'{"text":', b'"slowly, one byte at a time..."}', "body", BODY_TIMEOUT_S),
    ],
    ids=["headers-trickled", "body-trickled"],
)
def test_stalled_connections_hold_no_thread_and_get_408(server, capsys, opening, rest, part, timeout):
    conns = []
    for i in range(STALLED):
        conn = connect(server)
        if part == "headers" and i % 10 == 0:
            conn.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        else:
            conn.sendall(opening)
        conns.append(conn)
    with Trickler(conns, rest, interval=0.5) as trickler:
        latencies = normal_client_latencies(server)
        trickler.wait(timeout + 5)
        answers = dict(trickler.answers)
        started = trickler.started
    with capsys.disabled():
        print(f"\n[slow clients: {part}] stalled={STALLED} normal requests={len(latencies)} "
              f"slowest={max(latencies) * 1000:.0f} ms median={sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms "
              f"408 after {min(t for t, _ in answers.values()) - started:.2f}-{max(t for t, _ in answers.values()) - started:.2f} s")
    # A normal client is answered at once while 200 connections stall.
    assert max(latencies) < 0.2, latencies
    # Every stalled connection got a JSON 408 once its deadline passed (the sweep runs every 0.1 s).
    assert len(answers) == STALLED
    for at, data in answers.values():
        assert timeout - 0.1 <= at - started <= timeout + 1.5, at - started
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408 Request Timeout"), data[:200]
        assert b"Connection: close" in head
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["details"][0]["part"] == part
    # The service is whole afterwards.
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_the_408_is_closed_after(server):
    conn = connect(server)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    status, headers, body = read_answer(conn)
    assert status == b"HTTP/1.1 408 Request Timeout" and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["request_id"] == headers["x-request-id"]
    assert closed_by_server(conn)


def test_idle_keep_alive_connections_hold_no_thread(server):
    """60 clients that made a request each and keep their connections open
    (far more than the 16 threads): a new client is answered at once, and each
    of them can still use its connection."""
    sessions = [requests.Session() for _ in range(60)]
    try:
        for session in sessions:
            assert session.get(server.url + "/healthz", timeout=10).status_code == 200
        assert max(normal_client_latencies(server, 10)) < 0.2
        for session in sessions[::10]:
            r = session.post(server.url + "/v1/classify", json={"text": "fine"}, timeout=10)
            assert r.status_code == 200 and r.headers.get("Connection") != "close"
    finally:
        for session in sessions:
            session.close()


def test_answers_that_come_in_one_read_are_each_read():
    # Two answers in one segment: the second is not lost with the first read.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(1)
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n")
        assert read_answer(ours) == (b"HTTP/1.1 200 OK", {"content-length": "2"}, b"hi")
        assert read_answer(ours) == (b"HTTP/1.1 204 No Content", {}, b"")
        theirs.shutdown(socket.SHUT_WR)
        assert closed_by_server(ours)


@pytest.mark.parametrize("read_when", ["as-they-come", "all-sent"])
def test_pipelined_requests_are_each_answered(server, read_when):
    body = b'{"text": "a warm, funny film"}'
    request = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    logged = server.access_count()
    conn = connect(server)
    conn.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    if read_when == "all-sent":
        # As a loaded client sees it: every answer is in before the first read
        # (a request is logged once its answer is written), so one recv gets them all.
        server.wait_for(lambda: server.access_count() >= logged + 4, 10, "the 4 answers")
    answers = [read_answer(conn) for _ in range(4)]
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK"] * 4
    assert json.loads(answers[-1][2]) == {"status": "ok"}
    assert len({json.loads(b)["category"] for _, _, b in answers[:3]}) == 1


def test_expect_100_continue_gets_one_continue_then_the_answer(server):
    body = json.dumps({"text": "a warm, funny film " * 50}).encode()
    conn = connect(server)
    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before the body is
    conn.sendall(body)
    status, _, answer = read_answer(conn)
    assert status == b"HTTP/1.1 200 OK" and "category" in json.loads(answer)


def test_a_body_over_the_limit_is_413_before_it_is_read_and_the_connection_closes(server):
    conn = connect(server)
    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    status, headers, body = read_answer(conn)  # no body byte sent yet
    assert status == b"HTTP/1.1 413 Content Too Large" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and error["details"][0]["limit"] == MAX_BODY
    assert closed_by_server(conn)
    # Chunked, with no length to check first: refused once the limit is passed.
    conn = connect(server)
    conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 50_000
    try:
        for _ in range(3):
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass  # the server closed while this was still sending: still read its answer
    status, headers, _ = read_answer(conn)
    assert status == b"HTTP/1.1 413 Content Too Large" and headers["connection"] == "close"


MALFORMED = {
    "control-byte-in-header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400, "bad_request"),
    "garbage-request-line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "http-2.0-over-http-1": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "length-and-chunked": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    "two-lengths": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                    400, "bad_request"),
    "bad-chunk-size": (b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                       400, "bad_request"),
    "unknown-expectation": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n", 417, "expectation_failed"),
    "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header-too-large": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n",
                         431, "request_header_fields_too_large"),
    "too-many-headers": (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
                         431, "request_header_fields_too_large"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests_get_the_json_error_body_and_a_closed_connection(server, name):
    raw, status, code = MALFORMED[name]
    conn = connect(server)
    try:
        conn.sendall(raw)
    except OSError:
        pass  # closed while a huge request was still being sent
    line, headers, body = read_answer(conn)
    assert int(line.split()[1]) == status, line
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == headers["x-request-id"]
    assert closed_by_server(conn)
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}


def test_connections_past_the_bound_are_503_and_closed(model_repo, tmp_path):
    env = {"SERVE_MODEL_REPOSITORY": str(model_repo), "WORKERS": "1", "SERVE_WORKER_CONNECTIONS": "20",
           "SERVE_HEADER_TIMEOUT_S": "30"}
    with GunicornServer(tmp_path, env=env) as server:
        held = [connect(server) for _ in range(20)]
        for conn in held:
            conn.sendall(b"GET /healthz HTTP/1.1\r\n")  # each holds its place, reading
        # The 21st is answered at once: 503, Retry-After, the JSON body, closed.
        extra = connect(server)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_answer(extra)
        assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "1"
        error = json.loads(body)["error"]
        assert error["code"] == "overloaded" and error["details"][0]["limit"] == 20
        assert closed_by_server(extra)
        # The held ones are served when they finish their requests, and then there is room again.
        for conn in held:
            conn.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
            assert read_answer(conn)[0] == b"HTTP/1.1 200 OK"
            conn.close()
        server.wait_for(lambda: requests.get(server.url + "/healthz", timeout=5).status_code == 200, 10, "room again")


def test_a_burst_of_first_bytes_takes_no_place_in_the_backlog(model_repo, tmp_path):
    """One worker, one thread, a backlog of 4: 60 connections send the start
    of a request line at once. Past half the backlog their first bytes are
    read on the event loop, so the backlog is left to whole requests, and a
    normal client right after the burst is answered, not refused with 503."""
    env = {"SERVE_MODEL_REPOSITORY": str(model_repo), "WORKERS": "1", "THREADS": "1", "SERVE_WORKER_BACKLOG": "4",
           "SERVE_HEADER_TIMEOUT_S": "5"}
    with GunicornServer(tmp_path, env=env) as server:
        for _ in range(2):
            conns = [connect(server) for _ in range(60)]
            for conn in conns:
                conn.sendall(b"GET /healthz HT")
            r = requests.get(server.url + "/healthz", timeout=10)
            assert r.status_code == 200, r.text
            for conn in conns:
                conn.sendall(b"TP/1.1\r\nHost: x\r\n\r\n")
            # Each stalled request was kept and is answered once whole: 60 whole
            # requests at once against a backlog of 4, so 200 or the backlog's 503.
            statuses = [read_answer(conn)[0] for conn in conns]
            assert set(statuses) <= {b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable"}, statuses
            assert b"HTTP/1.1 200 OK" in statuses
            for conn in conns:
                conn.close()
