"""A request read whole, without waiting, before a thread serves it.

Gunicorn's gthread worker hands a connection to a pool thread as soon as it
is readable, and the thread then reads the request line, headers and body
with blocking calls: a client that sends a few bytes and stalls holds a
thread for as long as it likes, and ``THREADS`` such clients stop the worker.
So ``serving/worker.py`` reads each request into a :class:`PendingRequest`
without blocking: a thread reads what the socket holds when the request
begins (most requests come whole in one read), the worker's event loop reads
the rest of one that does not, as a buffering proxy (nginx) would:

- the request line and headers must arrive within ``SERVE_HEADER_TIMEOUT_S``
  (from the connection's accept, or from the first byte of a kept-alive
  connection's next request), the body within ``SERVE_BODY_TIMEOUT_S`` of the
  headers' end, else ``408`` and the connection closes;
- Gunicorn's own header bounds (``limit_request_*``) and the body limit
  (``SERVE_MAX_BODY_BYTES``) are applied as the bytes come: ``414`` / ``431`` /
  ``413`` before the rest is read, then the connection closes (a body left
  unread cannot be skipped on a reused connection);
- a body is spooled to a temporary file past :data:`SPOOL_IN_MEMORY`, so
  many large uploads in flight do not all sit in memory.

The parsing is httptools' (llhttp, uvicorn's parser): it says where a
request ends, chunked bodies included, and rejects malformed requests
(``400``); Gunicorn's parser then reads the buffered bytes in the thread as
it would read the socket (:class:`SpoolUnreader`), so the app sees the same
request either way. Every answer made here has the service's JSON error body.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import dataclass
from typing import Any, NamedTuple

import httptools
import orjson
from gunicorn.http.unreader import SocketUnreader

from serving.errors import error_body
from serving.logs import request_id_for

#: Body bytes held in memory per request; the rest goes to a temporary file.
SPOOL_IN_MEMORY = 1024 * 1024
#: Bytes asked of the socket per read while a request is read.
READ_SIZE = 64 * 1024

_REASONS = {
    400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}


@dataclass(frozen=True)
class ReadLimits:
    """What a request must keep to while the event loop reads it."""

    header_timeout: float
    body_timeout: float
    max_body: int
    max_request_line: int
    max_fields: int
    max_field_size: int

    @property
    def max_header_bytes(self) -> int:
        # Gunicorn's bounds allow at most this much before the headers end.
        return self.max_request_line + self.max_fields * (self.max_field_size + 2) + 4


class Refusal(NamedTuple):
    """A request answered by the worker itself: status, error code, message, details."""

    status: int
    code: str
    message: str
    details: Any = None


def error_answer(status: int, code: str, message: str, details: Any = None, incoming_id: str = "",
                 extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response with the service's JSON error body; the connection closes after it."""
    request_id = request_id_for(incoming_id)
    body = orjson.dumps(error_body(code, message, details, request_id))
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Request-ID: {request_id}",
        *(f"{name}: {value}" for name, value in extra_headers),
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class PendingRequest:
    """One request being read from a non-blocking socket: fed bytes as they
    come, it says when the request is whole, or why it is refused."""

    def __init__(self, limits: ReadLimits) -> None:
        self.limits = limits
        self.data = bytearray()  # the bytes read, until they pass SPOOL_IN_MEMORY
        self.spool: Any = None  # then a temporary file holds them all
        self.received = 0  # bytes fed, this request's and any pipelined after it
        self.headers_done = False
        self.complete = False
        self.expects_continue = False
        self.request_id = ""
        self.method = "-"
        self._parser = httptools.HttpRequestParser(self)
        self._url = 0
        self._fields = 0
        self._content_length: int | None = None
        self._chunked = False
        self._body = 0
        self._refusal: Refusal | None = None

    def feed(self, data: bytes) -> Refusal | None:
        """Take the next bytes; a refusal when the request breaks a rule."""
        if self.spool is not None:
            self.spool.write(data)
        else:
            self.data += data
            if len(self.data) > SPOOL_IN_MEMORY:
                self.spool = tempfile.TemporaryFile()
                self.spool.write(self.data)
                self.data = bytearray()
        self.received += len(data)
        if self.complete:  # pipelined bytes of the next request: Gunicorn's parser keeps them
            return None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.complete = True  # a WebSocket handshake: the frames after it are the app's
        except httptools.HttpParserError as exc:
            if self._refusal is None and not self.complete:
                message = str(exc) or "malformed request"
                self._refusal = Refusal(400, "bad_request", f"malformed HTTP request: {message}")
        if self._refusal is None and not self.headers_done and self.received > self.limits.max_header_bytes:
            self._refusal = Refusal(
                431, "request_header_fields_too_large", "the request line and headers are too large",
                {"limit": self.limits.max_header_bytes},
            )
        return self._refusal

    def hand_over(self, unreader: "SpoolUnreader") -> None:
        """Give the bytes read, from the first, to the reader Gunicorn's parser uses in the thread."""
        if self.spool is not None:
            self.spool.seek(0)
            unreader.spool, self.spool = self.spool, None
        else:
            unreader.buf.write(self.data)  # read as Gunicorn reads its own read-ahead
        self.data = bytearray()

    # --- httptools' callbacks -----------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        if self._refusal is None:
            self._refusal = refusal
        raise ValueError(refusal.message)  # stops the parser; feed() reports the refusal

    def _past_end(self) -> None:
        # The same bytes may carry a pipelined next request: it is not this
        # one's to judge (Gunicorn's parser reads it after this one).
        if self.complete:
            raise ValueError("the request ended")

    def on_url(self, url: bytes) -> None:
        self._past_end()
        self._url += len(url)
        if self._url > self.limits.max_request_line:
            self._refuse(Refusal(414, "uri_too_long", "the request line is too long",
                                 {"limit": self.limits.max_request_line}))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._past_end()
        self._fields += 1
        if self._fields > self.limits.max_fields:
            self._refuse(Refusal(431, "request_header_fields_too_large", "too many request headers",
                                 {"limit": self.limits.max_fields}))
        if len(name) + len(value) + 2 > self.limits.max_field_size:
            self._refuse(Refusal(431, "request_header_fields_too_large", "a request header is too large",
                                 {"field": name.decode("latin-1")[:100], "limit": self.limits.max_field_size}))
        lowered = name.lower()
        if lowered == b"content-length" and value.strip().isdigit():
            self._content_length = int(value)
        elif lowered == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif lowered == b"expect" and value.strip().lower() == b"100-continue":
            self.expects_continue = True
        elif lowered == b"x-request-id":
            self.request_id = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._past_end()
        self.headers_done = True
        self.method = self._parser.get_method().decode("latin-1")
        if self._content_length is not None and self._content_length > self.limits.max_body:
            self._too_large()
        if not self._content_length and not self._chunked:
            self.expects_continue = False  # no body to wait for

    def on_body(self, body: bytes) -> None:
        self._past_end()
        self._body += len(body)
        if self._body > self.limits.max_body:
            self._too_large()

    def on_message_complete(self) -> None:
        self.complete = True
        self.expects_continue = False

    def _too_large(self) -> None:
        limit = self.limits.max_body
        self._refuse(Refusal(413, "payload_too_large", f"request body is larger than {limit} bytes", {"limit": limit}))


class SpoolUnreader(SocketUnreader):
    """Gunicorn's socket reader, reading a :class:`PendingRequest`'s bytes first.

    The whole request has been read already, so the socket is needed only
    when Gunicorn asks for more than that (it never should); then it waits at
    most ``timeout`` seconds instead of holding the thread."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__(sock)
        self.spool: Any = None  # a temporary file, for a request too large to hold in memory
        self.timeout = timeout

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.spool is not None:
            data = self.spool.read(max(size_hint or 0, READ_SIZE))
            if data:
                return data
            self.spool.close()
            self.spool = None
        self.sock.settimeout(self.timeout)
        try:
            return super().chunk(size_hint)
        except (socket.timeout, TimeoutError):
            return b""  # Gunicorn reads the end of its input: the request is cut short

    def leftover(self) -> bytes:
        """The bytes read past the request (a pipelined next one), taken back."""
        rest = self.take_buffered()
        if self.spool is not None:
            rest += self.spool.read()
            self.spool.close()
            self.spool = None
        return rest
