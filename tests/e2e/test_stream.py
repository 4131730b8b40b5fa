"""``/v1/detect/stream`` against a real Gunicorn (default gthread worker) with a
real WebSocket client (websocket-client, as in the README)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
import websocket
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data as skdata

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

KEY = "stream-secret-key"
MAX_FRAME = 300_000
IDLE_S = 4
TIMEOUT_S = 5


def frame_640x480() -> bytes:
    """The astronaut (one face) as a 640x480 JPEG, as a webcam would send it."""
    buffer = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frame() -> bytes:
    return frame_640x480()


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn-stream")
    env = {
        "SERVE_MODEL_REPOSITORY": str(model_repo),
        "SERVE_MODELS": "faces,sentiment",
        "WORKERS": "1",
        "THREADS": "4",
        "TIMEOUT": str(TIMEOUT_S),
        "SERVE_API_KEYS": KEY,
        "SERVE_STREAM_MAX_CONNECTIONS": "2",
        "SERVE_STREAM_MAX_FRAME_BYTES": str(MAX_FRAME),
        "SERVE_STREAM_IDLE_TIMEOUT_S": str(IDLE_S),
    }
    with GunicornServer(tmp, env=env) as server:
        yield server
        # Whatever the clients did, nothing reached the log as a crash.
        assert "Traceback" not in server.log(), server.log()


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/detect/stream"


def connect(server, **options) -> websocket.WebSocket:
    options.setdefault("header", {"X-Api-Token": KEY})
    ws = websocket.create_connection(ws_url(server), timeout=60, **options)
    ready = json.loads(ws.recv())
    assert ready["type"] == "ready", ready
    ws.request_id = ready["request_id"]
    return ws


def wait_closed(server, request_id: str) -> None:
    """Until the server has logged the end of that stream (its slot is free then)."""
    deadline = time.monotonic() + 30
    while f"stream closed rid={request_id} " not in server.log():
        assert time.monotonic() < deadline, f"stream {request_id} still open"
        time.sleep(0.05)  # polling the server's log, bounded by the deadline


def close(server, ws) -> None:
    ws.close()
    wait_closed(server, ws.request_id)


def receive(ws) -> dict:
    return json.loads(ws.recv())


def close_frame(ws) -> tuple[int, str]:
    """Read until the server's close frame; its code and reason."""
    while True:
        opcode, payload = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def refused(server, url: str = "", **options) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(url or ws_url(server), timeout=30, **options)
    return info.value


def stream_metrics(server) -> dict[str, float]:
    """Frames by event and open streams, from /metrics (one worker here)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    found = {"received": 0.0, "processed": 0.0, "dropped": 0.0, "failed": 0.0, "open": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "serve_http_stream_frames_total":
                found[sample.labels["event"]] = sample.value
            elif sample.name == "serve_http_streams_open":
                found["open"] = sample.value
    return found


def test_faster_client_gets_newest_frames_in_order_with_bounded_latency(server, frame):
    """Frames sent far faster than the model runs: the server keeps at most one
    waiting, answers in order, always answers the last frame, and latency does
    not grow with the number of frames sent (a queue would make it grow)."""
    before = stream_metrics(server)
    ws = connect(server)
    total, interval = 200, 0.01  # 100 frames/s, several times what the model does
    sent_at: dict[int, float] = {}

    def send_all() -> None:
        for seq in range(1, total + 1):
            sent_at[seq] = time.monotonic()
            ws.send_binary(frame)
            time.sleep(interval)  # pacing the client, not synchronisation

    sender = threading.Thread(target=send_all)
    sender.start()
    answers, latencies = [], []
    while not answers or answers[-1]["frame"] != total:
        answer = receive(ws)
        assert answer["type"] == "detections", answer
        latencies.append(time.monotonic() - sent_at[answer["frame"]])
        answers.append(answer)
    sender.join()
    close(server, ws)

    frames = [a["frame"] for a in answers]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    for a in answers:
        assert a["pending"] <= 1
        assert a["received"] == a["processed"] + a["failed"] + a["dropped"] + a["pending"], a
        assert [o["label"] for o in a["objects"]] == ["face"]
    last = answers[-1]
    assert last["received"] == total and last["pending"] == 0
    assert last["processed"] == len(answers) and last["processed"] + last["dropped"] == total
    assert last["dropped"] > 0, "the client was not faster than the model"
    assert len(answers) >= 3
    # One frame in process plus one waiting: about two model runs, whatever the total.
    slowest_model = max(a["model_ms"] for a in answers) / 1000
    assert max(latencies) < 3 * slowest_model + 2.0, (max(latencies), slowest_model)
    after = stream_metrics(server)
    assert {event: after[event] - before.get(event, 0) for event in after} == {
        "received": total, "processed": last["processed"], "dropped": last["dropped"], "failed": 0, "open": 0,
    }
    print(
        f"\nsent {total} frames in a burst: {len(answers)} processed, {last['dropped']} dropped; "
        f"latency median {np.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"model median {np.median([a['model_ms'] for a in answers]):.0f} ms"
    )


def test_options_and_bad_messages_get_answers_and_keep_the_socket_usable(server, frame):
    ws = connect(server)
    ws.send('{"score_th": 0.5, "maxResults": 5}')
    options = receive(ws)
    assert options == {"type": "options", "options": {**options["options"], "score_th": 0.5, "maxResults": 5}}
    assert options["options"]["model"] == "faces"

    bad = {
        "not json": "invalid_input",
        "[1, 2]": "invalid_input",
        '{"score_th": 2}': "validation_failed",
        '{"scoreth": 0.1}': "validation_failed",
        '{"model": "nope"}': "model_not_found",
        '{"model": "sentiment"}': "wrong_task",
    }
    for text, code in bad.items():
        ws.send(text)
        answer = receive(ws)
        assert answer["type"] == "error" and answer["frame"] is None, answer
        assert answer["error"]["code"] == code, (text, answer)
    assert receive_detections(ws, b"\xff\xd8 not a jpeg")["error"]["code"] == "invalid_input"

    # A label the model lacks is refused, naming the field; the options in force stay.
    ws.send('{"type": "cat"}')
    answer = receive(ws)
    assert answer["type"] == "error" and answer["error"]["code"] == "validation_failed", answer
    assert answer["error"]["details"][0]["field"] == "options.type"
    ws.send('{"type": "face"}')
    options = receive(ws)["options"]
    assert options["type"] == "face" and options["score_th"] == 0.5, options
    assert [o["label"] for o in receive_detections(ws, frame)["objects"]] == ["face"]
    ws.send('{"type": null}')
    receive(ws)
    answer = receive_detections(ws, frame)
    assert answer["frame"] == 3 and [o["label"] for o in answer["objects"]] == ["face"]
    assert answer["failed"] == 1 and answer["processed"] == 2
    box = answer["objects"][0]["box"]
    assert 0 <= box["x1"] < box["x2"] <= 640 and 0 <= box["y1"] < box["y2"] <= 480
    close(server, ws)


def receive_detections(ws, data: bytes) -> dict:
    ws.send_binary(data)
    return receive(ws)


def test_authentication_is_checked_before_the_upgrade(server):
    for options in ({}, {"header": {"X-Api-Token": "wrong"}}, {"subprotocols": ["serve-http.v1", "bearer.d3Jvbmc"]}):
        error = refused(server, **options)
        assert error.status_code == 401
        assert json.loads(error.resp_body)["error"]["code"] == "unauthorized"

    close(server, connect(server, header={"Authorization": f"Bearer {KEY}"}))
    # A browser's way: the key as a subprotocol, next to the protocol the server picks.
    token = base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    ws = connect(server, header={}, subprotocols=["serve-http.v1", f"bearer.{token}"])
    assert ws.getsubprotocol() == "serve-http.v1"
    close(server, ws)
    log = server.access_log.read_text()
    assert "/v1/detect/stream" in log and token not in log and KEY not in log

    # A key in the query string is not accepted (access logs print query strings).
    error = refused(server, header={}, url=ws_url(server) + f"?token={KEY}")
    assert error.status_code == 401


def test_plain_get_and_malformed_handshakes_are_clear_400s(server):
    r = requests.get(server.url + "/v1/detect/stream", headers={"X-Api-Token": KEY}, timeout=30)
    assert r.status_code == 400 and "WebSocket" in r.json()["error"]["message"]
    upgrade = {"X-Api-Token": KEY, "Upgrade": "websocket", "Connection": "Upgrade"}
    for extra in ({}, {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "8"}):
        r = requests.get(server.url + "/v1/detect/stream", headers={**upgrade, **extra}, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == "malformed WebSocket handshake"
    # Those handshakes held no connection slot.
    close(server, connect(server))


def test_connection_limit_answers_503_and_leaves_threads_for_http(server, frame):
    first, second = connect(server), connect(server)
    error = refused(server, header={"X-Api-Token": KEY})
    assert error.status_code == 503
    assert error.resp_headers["retry-after"] == "1"
    assert [d["limit"] for d in json.loads(error.resp_body)["error"]["details"]] == [2]
    # Two threads are held by streams; HTTP requests still get the others.
    r = requests.get(server.url + "/v1/models", headers={"X-Api-Token": KEY}, timeout=30)
    assert r.status_code == 200
    assert receive_detections(second, frame)["type"] == "detections"

    close(server, first)
    deadline = time.monotonic() + 30
    while True:  # the slot frees once the server has finished the close handshake
        try:
            third = connect(server)
            break
        except websocket.WebSocketBadStatusException as exc:
            assert exc.status_code == 503 and time.monotonic() < deadline
    close(server, third)
    close(server, second)


def test_oversized_frame_closes_the_stream_with_1009(server):
    ws = connect(server)
    ws.send_binary(b"\0" * (MAX_FRAME + 1))
    code, reason = close_frame(ws)
    assert code == 1009, reason
    close(server, ws)
    # The worker is fine: the next stream works.
    close(server, connect(server))


def test_idle_stream_is_closed_by_the_server(server):
    ws = connect(server)
    started = time.monotonic()
    code, reason = close_frame(ws)
    assert (code, reason) == (1000, f"idle for {IDLE_S} s")
    assert time.monotonic() - started >= IDLE_S - 0.5
    close(server, ws)


def test_a_stream_longer_than_gunicorn_timeout_keeps_its_worker(server, frame):
    """gthread's heartbeat runs on the worker's main thread, so a stream that
    holds a pool thread past TIMEOUT does not get the worker killed."""
    pids = server.worker_pids()
    ws = connect(server)
    started, answered = time.monotonic(), 0
    while time.monotonic() - started < TIMEOUT_S + 3:
        assert receive_detections(ws, frame)["type"] == "detections"
        answered += 1
    close(server, ws)
    assert answered >= 2
    assert server.worker_pids() == pids
    assert "WORKER TIMEOUT" not in server.log()


@pytest.mark.parametrize("worker_class", ["gevent", "sync"])
def test_other_worker_classes(worker_class, model_repo, tmp_path, frame):
    """gevent holds streams too; the sync worker (one connection per process, no
    heartbeat during a request) refuses them before the upgrade."""
    env = {
        "SERVE_MODEL_REPOSITORY": str(model_repo),
        "SERVE_MODELS": "faces",
        "WORKERS": "1",
        "WORKER_CLASS": worker_class,
        # Gunicorn turns sync into gthread when THREADS > 1.
        "THREADS": "1",
    }
    with GunicornServer(tmp_path, env=env) as server:
        if worker_class == "sync":
            error = refused(server, header={})
            assert error.status_code == 503
            assert json.loads(error.resp_body)["error"]["code"] == "streaming_unavailable"
            return
        for _ in range(2):  # a second stream after the first has closed
            ws = connect(server, header={})
            for _ in range(2):
                answer = receive_detections(ws, frame)
                assert [o["label"] for o in answer["objects"]] == ["face"]
            close(server, ws)
        assert f"Using worker: {worker_class}" in server.log()
        assert "Traceback" not in server.log() and "was sent" not in server.log(), server.log()


def test_a_client_that_stops_reading_is_cut_off(server):
    """Answers pile up in the socket buffers of a client that never reads; the
    server gives up after the idle timeout instead of blocking a thread forever."""
    import socket

    ws = websocket.create_connection(
        ws_url(server), timeout=60, header={"X-Api-Token": KEY}, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
    )
    ws.request_id = request_id = json.loads(ws.recv())["request_id"]
    # A small option message with 200 unknown fields earns an error naming each
    # of them, ten times its size: the server's writes fill the buffers while
    # its reads keep up.
    message = json.dumps({f"x{i}": 0 for i in range(200)})
    deadline = time.monotonic() + 60
    while f"stream closed rid={request_id} stalled=True" not in server.log():
        assert time.monotonic() < deadline, "the server kept writing to a client that reads nothing"
        try:
            for _ in range(200):
                ws.send(message)
        except (websocket.WebSocketException, OSError):
            break  # the server has shut the socket
    wait_closed(server, request_id)
    assert f"stream closed rid={request_id} stalled=True" in server.log()
    ws.close()
    close(server, connect(server))
