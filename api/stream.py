"""``/v1/detect/stream``: real-time detection over a WebSocket.

The client sends JPEG frames (binary messages) and, when it likes, option
messages (JSON text); the server answers each processed frame with its objects.
A client faster than the model loses frames, never time: while one frame is
being processed, only the newest frame that arrived meanwhile is kept
(``serving.streaming.FrameInbox``), and every answer reports how many were
dropped. The protocol is described in the README ("Real-time detection").

Two threads per connection: the request thread Gunicorn gave us processes
frames and is the only one that writes to the socket; a reader thread moves
every incoming message out of the WebSocket library's unbounded buffer into the
inbox at once. The handshake goes through the app's ``before_request`` hooks
like any GET, so authentication and request ids are the HTTP ones; a refused
connection is an HTTP error before the upgrade.

Worker classes: gthread (one pool thread per open stream; the worker's
heartbeat runs on its main thread, so a long stream does not trip ``TIMEOUT``)
and gevent. The sync worker serves one connection at a time and would be killed
after ``TIMEOUT``: there the route answers 503.
"""

from __future__ import annotations

import base64
import binascii
import logging
import select
import socket
import threading
import time
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, g, request
from pydantic import ValidationError
from simple_websocket import ConnectionClosed, Server

from api.context import Services, services
from api.schemas import StreamOptions
from tasks.base import validation_details
from serving.errors import InvalidInput, Overloaded, ServeError, StreamingUnavailable, ValidationFailed
from serving.streaming import ConnectionGate, Frame, FrameInbox, StreamStats
from tasks import OBJECT_DETECTION

log = logging.getLogger(__name__)

stream = Blueprint("stream", __name__)

#: The subprotocol the server speaks; browsers must offer it next to their token.
SUBPROTOCOL = "serve-http.v1"
#: Browsers cannot set headers on a WebSocket: they offer ``bearer.<base64url(key)>``
#: as a subprotocol instead, which no access log prints (a query string would be).
TOKEN_PREFIX = "bearer."

_GATE = "serve_http.stream_gate"
# Seconds the client gets to answer our close frame before the socket is shut.
_CLOSE_WAIT = 2.0
# Read size of the library's socket reader; also bounds how much one read can
# inflate to under permessage-deflate before the frame-size limit is checked.
_RECEIVE_BYTES = 16 * 1024


def subprotocol_token(header: str) -> str:
    """The API key offered in ``Sec-WebSocket-Protocol`` as ``bearer.<base64url>``, or ``""``."""
    for item in header.split(","):
        item = item.strip()
        if item.startswith(TOKEN_PREFIX):
            encoded = item[len(TOKEN_PREFIX):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
            except (binascii.Error, ValueError):
                return ""
    return ""


def is_websocket_handshake() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@stream.record_once
def _create_gate(state) -> None:
    settings = state.app.extensions["serve_http"].settings
    state.app.extensions[_GATE] = ConnectionGate(settings.stream_max_connections)
    if settings.worker_class == "gthread" and settings.stream_max_connections >= settings.threads:
        log.warning(
            "SERVE_STREAM_MAX_CONNECTIONS=%d >= THREADS=%d: open streams can take every thread of a worker",
            settings.stream_max_connections,
            settings.threads,
        )


class _Stalled(Exception):
    """The client has read nothing for the idle timeout: our next write would block."""


class _SocketTakenOver(Response):
    """The WebSocket session wrote to the socket itself: the server must write nothing.

    Gunicorn's workers close the connection, silently, on ``StopIteration``
    (what flask-sock does too).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def __call__(self, environ, start_response):
        if self.mode == "gunicorn":
            raise StopIteration()
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


@stream.get("/v1/detect/stream")
def not_a_websocket():
    """A plain GET: Werkzeug routes WebSocket handshakes to the rule below only."""
    raise InvalidInput("this route speaks WebSocket: connect with a WebSocket client (Upgrade: websocket)")


@stream.route("/v1/detect/stream", websocket=True)
def detect_stream():
    """Open a detection stream (WebSocket; not in the OpenAPI document)."""
    if "gunicorn.socket" in request.environ and not request.environ.get("wsgi.multithread"):
        raise StreamingUnavailable("streaming needs the gthread or gevent worker class, not sync")
    gate: ConnectionGate = current_app.extensions[_GATE]
    if not gate.try_enter():
        raise Overloaded(
            f"this worker already holds {gate.limit} detection streams; retry later",
            details={"limit": gate.limit},
        )
    try:
        svc = services()
        try:
            ws = Server.accept(
                request.environ,
                subprotocols=[SUBPROTOCOL],
                receive_bytes=_RECEIVE_BYTES,
                max_message_size=svc.settings.stream_max_frame_bytes,
            )
        except Exception:  # the library reports a malformed handshake in several ways
            raise InvalidInput("malformed WebSocket handshake") from None
        StreamSession(ws, svc, g.get("request_id", "")).run()
    finally:
        gate.leave()
    return _SocketTakenOver(ws.mode)


class StreamSession:
    """One open stream: reader thread in, processing loop out."""

    def __init__(self, ws: Server, svc: Services, request_id: str) -> None:
        self.ws = ws
        self.services = svc
        self.request_id = request_id
        self.stats = StreamStats()
        self.inbox = FrameInbox(self.stats)
        self.options = StreamOptions()
        self.opened = time.monotonic()
        self.stalled = False

    # --- the request thread: process and answer ----------------------------

    def run(self) -> None:
        reader = threading.Thread(target=self._read, name=f"stream-reader-{self.request_id[:8]}", daemon=True)
        reader.start()
        try:
            self._send(self._ready())
            while True:
                taken = self.inbox.take()
                for notice in taken.notices:
                    self._send(notice)
                if taken.frame is not None:
                    self._send(self._answer(taken.frame))
                if taken.closed:
                    break
        except (ConnectionClosed, OSError):
            pass
        except _Stalled:
            self.stalled = True
        finally:
            self.inbox.close()
            self._close(self.inbox.close_reason)
            reader.join(timeout=_CLOSE_WAIT)
            counts = self.inbox.counts()
            log.info(
                "stream closed rid=%s stalled=%s seconds=%.1f received=%d processed=%d dropped=%d failed=%d",
                self.request_id,
                self.stalled,
                time.monotonic() - self.opened,
                counts["received"],
                counts["processed"],
                counts["dropped"],
                counts["failed"],
            )

    def _ready(self) -> dict[str, Any]:
        settings = self.services.settings
        return {
            "type": "ready",
            "request_id": self.request_id,
            "options": self._current_options(),
            "max_frame_bytes": settings.stream_max_frame_bytes,
            "idle_timeout_s": settings.stream_idle_timeout_s,
        }

    def _answer(self, frame: Frame) -> dict[str, Any]:
        options = self.options
        name = options.model or self.services.settings.default_detector
        predictor = self.services.predictor
        try:
            inputs = predictor.decode(name, [frame.data], options.parameters(), task=OBJECT_DETECTION, field="frame")
            started = time.perf_counter()
            # Frames never repeat: the prediction cache would only pay for writes.
            outcome = predictor.run(inputs, cached=False)
            model_seconds = time.perf_counter() - started
        except ServeError as error:
            self.stats.frame_failed(error.code)
            return self._error(error, frame.seq)
        except Exception:
            log.exception("stream frame failed rid=%s frame=%d", self.request_id, frame.seq)
            self.stats.frame_failed("internal_error")
            return self._error(ServeError("internal server error"), frame.seq)
        self.stats.frame_processed(model_seconds)
        return {
            "type": "detections",
            "frame": frame.seq,
            "model": name,
            **outcome.outputs()[0],
            "model_ms": round(model_seconds * 1000, 2),
            "server_ms": round((time.monotonic() - frame.received_at) * 1000, 2),
            **self.inbox.counts(),
        }

    def _error(self, error: ServeError, frame: int | None = None) -> dict[str, Any]:
        return {
            "type": "error",
            "frame": frame,
            "error": {
                "code": error.code,
                "message": error.message,
                "details": error.details,
                "request_id": self.request_id,
            },
        }

    def _send(self, message: dict[str, Any]) -> None:
        # A client that stops reading would block this thread in send forever
        # (and keep its connection slot): wait for room, up to the idle timeout.
        if self.ws.connected and not self._writable(self.services.settings.stream_idle_timeout_s):
            raise _Stalled()
        self.ws.send(orjson.dumps(message).decode())

    def _writable(self, timeout: float) -> bool:
        """Whether the socket takes a write within ``timeout`` seconds.

        One-shot poll: a registration held across the close would outlive the
        socket, which gevent's event loop aborts the process over.
        """
        try:
            poller = select.poll()
            poller.register(self.ws.sock, select.POLLOUT)
            return bool(poller.poll(timeout * 1000))
        except (OSError, ValueError):  # the library has closed the socket meanwhile
            return False

    def _close(self, reason: tuple[int, str] | None) -> None:
        code, text = reason or (1000, "")
        # No close frame to a client that closed first (the library has closed
        # the socket then), nor to one that reads nothing: it would block here.
        if self.ws.connected and not self.stalled and self._writable(_CLOSE_WAIT):
            try:
                self.ws.close(reason=code, message=text)
            except (ConnectionClosed, OSError):  # the client closed first
                pass
        self.ws.event.set()  # wake the reader if it waits for a message
        # The library's reader thread ends when the client answers our close; a
        # client that never does must not keep that thread and the socket.
        self.ws.thread.join(timeout=_CLOSE_WAIT)
        if self.ws.thread.is_alive():
            try:
                self.ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- the reader thread: move messages into the inbox --------------------

    def _read(self) -> None:
        idle = self.services.settings.stream_idle_timeout_s
        try:
            while True:
                message = self.ws.receive(timeout=idle)
                if message is None:
                    if self.ws.connected:
                        self.inbox.close((1000, f"idle for {idle:g} s"))
                    break
                if isinstance(message, (bytes, bytearray)):
                    self.inbox.put_frame(bytes(message))
                else:
                    self.inbox.put_notice(self._apply_options(message))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("stream reader failed rid=%s", self.request_id)
            self.inbox.close((1011, "internal error"))
        finally:
            self.inbox.close()

    def _apply_options(self, text: str) -> dict[str, Any]:
        """Validate an option message and merge it into the current options;
        a bad one changes nothing and gets an error answer."""
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._error(InvalidInput("text messages must be JSON option objects"))
        if not isinstance(payload, dict):
            return self._error(InvalidInput("an option message is a JSON object"))
        try:
            incoming = StreamOptions.model_validate(payload)
        except ValidationError as error:
            details = validation_details(error)
            return self._error(ValidationFailed("option message does not match the schema", details=details))
        merged = self.options.model_copy(update=incoming.model_dump(exclude_unset=True))
        try:
            _, task = self.services.predictor.model(
                merged.model or self.services.settings.default_detector, task=OBJECT_DETECTION
            )
            task.parameters(merged.parameters(), field="options")  # e.g. a type the model has no label for
        except ServeError as error:
            return self._error(error)
        self.options = merged
        return {"type": "options", "options": self._current_options()}

    def _current_options(self) -> dict[str, Any]:
        options = self.options.model_dump()
        options["model"] = options["model"] or self.services.settings.default_detector
        return options
