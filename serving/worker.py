"""Gunicorn's gthread worker with a bounded backlog: past it, 503 at once.

A gthread worker hands every ready connection to a pool of ``THREADS`` threads.
When they are all busy, Gunicorn queues the rest in the pool without bound, so
under overload requests wait longer and longer and every client times out
together; the model queues' own bounds (``batching.max_queue``) never fire,
because at most ``THREADS`` requests per worker reach them.

This worker counts the requests waiting for a thread. When ``SERVE_WORKER_BACKLOG``
of them wait, or (with ``SERVE_WORKER_MAX_WAIT_MS``) when those waiting would keep
the next one from a thread longer than that, at the recent time per request, the
next one is answered by a separate small thread, right away:
``503`` with ``Retry-After: 1`` and the service's JSON error body, then the
connection is closed (so a client that retries may land on a less busy worker).
It reads the request first: closing a socket with unread bytes would make the
client see a reset instead of the 503.

It also spreads connections over the workers. All workers wait on the same
listening socket and Gunicorn's gthread worker accepts whatever it is woken
for, busy or not (benoitc/gunicorn#3433): a burst of keep-alive clients often
lands on one worker while the others idle, and stays there. This worker, once it
holds ``THREADS`` connections, stops accepting for ``SERVE_WORKER_ACCEPT_DELAY_MS``
so that a worker with room takes the connection; when the pause ends it takes
every connection still waiting (no other worker had room), and the next one
that comes while it is busy starts another pause. New connections are delayed
only when every worker is busy, and by one pause at most.

And it serves a request only once it is whole (``serving/reading.py``): a
thread reads what a request sends at once and never waits for more; the
event loop reads the rest of one that does not come whole. A slow sender, a
stalled one or an idle keep-alive connection holds no thread; the request line and headers must come
within ``SERVE_HEADER_TIMEOUT_S``, the body within ``SERVE_BODY_TIMEOUT_S``, else
``408`` and close. A worker holds at most ``SERVE_WORKER_CONNECTIONS``
connections: past that a new one is answered ``503`` and closed. A connection
is closed the way RFC 9112 section 9.6 asks (FIN, then what the client still
sends is read and dropped for a moment), without blocking the event loop.
Gunicorn's own error answers (a malformed request its parser refuses) carry
the service's JSON error body too. Over TLS (Gunicorn's ``certfile``) the
reading stays Gunicorn's: the handshake happens in the thread.

``WORKER_CLASS=gthread`` selects it (``gunicorn.conf.py``); a backlog of 0 keeps
Gunicorn's unbounded queue, a delay of 0 its accept-at-once.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import ssl
import sys
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn.http import errors as http_errors
from gunicorn.http.parser import RequestParser
from gunicorn.workers import gthread

from serving import metrics
from serving.errors import Overloaded
from serving.reading import READ_SIZE, PendingRequest, ReadLimits, Refusal, SpoolUnreader, error_answer

#: WSGI environ key of Gunicorn's response object for the request (``close_connection``).
RESPONSE_ENV = "serve_http.gunicorn_response"

# A body larger than this is not drained before the 503: the connection is cut.
_DRAIN_LIMIT = 1024 * 1024
BACKLOG_ROUTE = "<worker backlog>"
READING_ROUTE = "<worker reading>"  # metric label of the answers made while reading a request
# A closing connection: what the client still sends is read and dropped this
# long, this much at most, so that it reads our last answer instead of a reset.
_LINGER_S = 2.0
_LINGER_BYTES = 64 * 1024
_SWEEP_EVERY_S = 0.1  # how often read deadlines are checked
_FULL_PAUSE_S = 0.5  # no accepts this long when the process is out of file descriptors
# A request still being sent after this long is a slow sender's, not load the
# worker has taken on (a new connection's first request comes within a moment).
_SLOW_SENDER_S = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_UNFINISHED = object()  # a thread's answer: part of a request read, the event loop reads the rest
_REFUSED = object()  # a thread's answer: the request is refused (``conn.refusal``)

# Gunicorn's parser errors, as the status its own error page gives them.
_GUNICORN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    # A header the app tried to send is the app's fault, not the client's.
    (http_errors.InvalidResponseHeader, 500, "internal_error"),
    (http_errors.InvalidResponseHeaderName, 500, "internal_error"),
    (ssl.SSLError, 403, "forbidden"),
    (http_errors.LimitRequestLine, 414, "uri_too_long"),
    (http_errors.LimitRequestHeaders, 431, "request_header_fields_too_large"),
    (http_errors.UnsupportedTransferCoding, 501, "not_implemented"),
    (http_errors.ExpectationFailed, 417, "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden"),
    (http_errors.ConfigurationProblem, 500, "internal_error"),
    (http_errors.ParseException, 400, "bad_request"),
)
_SMOOTHING = 0.2  # weight of the newest request in the moving average
_ACCEPT_AT_ONCE = 64  # connections taken in one go after a pause
_LONGEST_SAMPLE_S = 10.0  # longer "requests" (streams, uploads) say nothing of the next one


class SheddingThreadWorker(gthread.ThreadWorker):
    """gthread that spreads connections over the workers and bounds the requests waiting for a thread."""

    backlog = 0  # set by gunicorn.conf.py from SERVE_WORKER_BACKLOG
    max_wait = 0.0  # seconds, from SERVE_WORKER_MAX_WAIT_MS
    accept_delay = 0.0  # seconds, from SERVE_WORKER_ACCEPT_DELAY_MS
    read_limits: ReadLimits | None = None  # from SERVE_HEADER_TIMEOUT_S ...; None: threads read, as Gunicorn's

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Gunicorn stops accepting at worker_connections; this worker answers
        # the connections past it (503) instead of leaving them queued unseen.
        self.max_connections = self.worker_connections
        self.worker_connections = sys.maxsize

    def load_wsgi(self) -> None:
        # Gunicorn decides keep-alive before the app runs; a handler that learns
        # during the request that its connection must not be reused (a live
        # model change: this worker is being replaced) needs the response.
        super().load_wsgi()
        app = self.wsgi

        def with_response(environ, start_response):
            environ[RESPONSE_ENV] = getattr(start_response, "__self__", None)
            return app(environ, start_response)

        self.wsgi = with_response

    def init_process(self) -> None:
        self._accept_paused_until = 0.0  # monotonic time; 0 when not paused
        self._waiting = 0
        self._seconds_per_request = 0.0  # moving average of the handled requests' time
        self._waiting_lock = threading.Lock()
        self._rejecter = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shed")
        self._buffering = self.read_limits is not None and not self.cfg.is_ssl
        self._reading: dict[gthread.TConn, float] = {}  # connection sending a request -> its deadline
        self._idle: dict[gthread.TConn, float] = {}  # kept-alive connection -> when it is closed
        self._lingering: dict[gthread.TConn, float] = {}  # closing connection -> when it is closed anyway
        self._next_sweep = 0.0
        self._stopping_since = 0.0
        self._slow_senders = 0  # connections sending a request for over _SLOW_SENDER_S, as of the last sweep
        super().init_process()

    # --- spreading connections over the workers ------------------------------------

    def accept(self, listener) -> None:
        # Runs on the main thread when the listening socket is readable.
        if self.accept_delay and self._holding() >= self.cfg.threads:
            # Busy: leave the connection queued in the kernel for another worker.
            self._accept_paused_until = time.monotonic() + self.accept_delay
            super().set_accept_enabled(False)
            return
        self._take(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        # Gunicorn's loop re-enables accepting on every turn; not while paused.
        if enabled and time.monotonic() < self._accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._accept_paused_until:
            left = self._accept_paused_until - time.monotonic()
            if left > 0:  # wake up when the pause ends
                timeout = min(timeout, left)
            else:
                # What still waits now, no other worker took during the pause:
                # all are busy. Take it all (each gets an answer or a fast 503).
                self._accept_paused_until = 0.0
                for listener in self.sockets:
                    self._accept_waiting(listener)
        if self._reading or self._idle or self._lingering:  # their deadlines are checked between events
            timeout = min(timeout, _SWEEP_EVERY_S)
        super().wait_for_and_dispatch_events(timeout)

    def _accept_waiting(self, listener) -> None:
        listener.setblocking(False)  # an empty queue must not block the main thread
        for _ in range(_ACCEPT_AT_ONCE):
            if not self._take(listener):
                return

    def _take(self, listener) -> bool:
        """Accept one connection, if one waits; whether one did."""
        if not self._buffering:
            before = self.nr_conns
            super().accept(listener)  # Gunicorn's: one connection, or none when none waits
            return self.nr_conns != before
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return False
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of file descriptors: the waiting connections stay queued
                # (another worker may take them) while this one frees some.
                self.log.warning("cannot accept a connection (%s); pausing accepts for %.1f s", exc.strerror, _FULL_PAUSE_S)
                self._accept_paused_until = time.monotonic() + _FULL_PAUSE_S
                super().set_accept_enabled(False)
                return False
            raise
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, sock, client, listener.getsockname())  # non-blocking
        if self.nr_conns > self.max_connections:
            details = {"connections": self.nr_conns - 1, "limit": self.max_connections}
            self._count(Refusal(503, Overloaded.code, "", details), "-")
            self._close(conn, error_answer(
                503, Overloaded.code, "the server holds all the connections it can; try again shortly", details,
                extra_headers=(("Retry-After", "1"),),
            ))
            return True
        conn.pending, conn.phase, conn.continued = PendingRequest(self.read_limits), "idle", False
        self._begin(conn, time.monotonic())  # a new connection owes its first request's headers
        self._await(conn)
        return True

    # --- reading requests: threads for what comes at once, the event loop for the rest ---

    def _holding(self) -> int:
        """Connections in a thread, waiting for one, kept alive or just made:
        the load this worker has taken on (not the slow senders, not the closing)."""
        return self.nr_conns - self._slow_senders - len(self._lingering)

    def _begin(self, conn, now: float) -> None:
        """The first bytes of a request are due: its headers' deadline starts."""
        if conn.phase == "idle":
            conn.phase, conn.since, conn.deadline = "headers", now, now + self.read_limits.header_timeout

    def _await(self, conn) -> None:
        """Into the event loop, until the connection is readable or its deadline passes."""
        self._unwatch(conn)
        (self._idle if conn.phase == "idle" else self._reading)[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn, _sock) -> None:
        if conn.pending.received == 0:
            self._begin(conn, time.monotonic())
            if not self.backlog or self._waiting < self.backlog // 2:
                # A request begins: a thread reads it, as Gunicorn's would, but
                # without waiting (_read_now); only a request that does not come
                # whole at once is left to the event loop. Fast clients cost the
                # event loop nothing more than Gunicorn's own.
                self._unwatch(conn)
                self.enqueue_req(conn)
                return
            # Half the backlog waits for a thread already: this request's first
            # bytes are read here, and it joins the backlog once whole. A burst
            # of slow senders' first bytes then holds no place a whole request
            # needs (it had filled the backlog, and a normal client got 503).
        data = _receive(conn)
        if data is None:
            return
        if not data:  # the client went away
            self._unwatch(conn)
            self._drop(conn)
            return
        self._took(conn, data)

    def _took(self, conn, data: bytes) -> None:
        """On the event loop: more of a request read."""
        refusal = self._feed(conn, data)
        if refusal is not None:
            self._unwatch(conn)
            self._refuse(conn, refusal)
        elif conn.pending.complete:
            self._unwatch(conn)
            self.enqueue_req(conn)
        elif conn not in self._reading:
            self._await(conn)

    def _feed(self, conn, data: bytes) -> Refusal | None:
        """The request's next bytes (on the event loop or in a thread): its deadlines, ``100 Continue``."""
        pending = conn.pending
        refusal = pending.feed(data)
        if refusal is not None:
            return refusal
        if pending.headers_done and conn.phase == "headers":
            conn.phase, conn.deadline = "body", time.monotonic() + self.read_limits.body_timeout
        if pending.expects_continue and not conn.continued:
            conn.continued = True  # the client waits for this before it sends the body
            try:
                conn.sock.send(_CONTINUE)
            except OSError:
                pass
        return None

    def _read_now(self, conn):
        """In a thread: read what the socket holds now, never waiting for more.
        ``None`` once the request is whole; else what the event loop does next."""
        while True:
            data = _receive(conn)
            if data is None:
                return _UNFINISHED
            if not data:
                return False
            refusal = self._feed(conn, data)
            if refusal is not None:
                conn.refusal = refusal
                return _REFUSED
            if conn.pending.complete:
                return None

    def _unwatch(self, conn) -> None:
        """Out of the event loop (a connection in neither set is not registered)."""
        if conn in self._reading or conn in self._idle:
            self._reading.pop(conn, None)
            self._idle.pop(conn, None)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _attach(self, conn) -> None:
        """In the thread: Gunicorn's parser reads the buffered request instead of the socket."""
        pending = getattr(conn, "pending", None)
        if pending is None:
            return
        conn.pending = None
        conn.init()
        if isinstance(conn.parser, RequestParser):
            conn.parser.unreader = SpoolUnreader(conn.sock, self.read_limits.body_timeout)
            pending.hand_over(conn.parser.unreader)

    def _next_request(self, conn) -> None:
        """A kept-alive connection after its answer: back to the event loop for the next request."""
        leftover = conn.parser.unreader.leftover()
        conn.sock.setblocking(False)
        conn.pending, conn.phase, conn.continued = PendingRequest(self.read_limits), "idle", False
        now = time.monotonic()
        conn.deadline = now + self.cfg.keepalive
        if leftover:  # pipelined: the next request is here already
            self._begin(conn, now)
            self._took(conn, leftover)
        else:
            self._await(conn)

    def _refuse(self, conn, refusal: Refusal) -> None:
        self._count(refusal, conn.pending.method)
        self._close(conn, error_answer(*refusal, incoming_id=conn.pending.request_id))

    def _count(self, refusal: Refusal, method: str) -> None:
        metrics.REJECTED.labels(READING_ROUTE, refusal.code).inc()
        metrics.REQUESTS.labels(READING_ROUTE, method, f"{refusal.status // 100}xx").inc()

    def _close(self, conn, answer: bytes = b"") -> None:
        """Answer (the connection's last bytes), send FIN, and drop what the client still sends for a moment."""
        try:
            conn.sock.setblocking(False)
            if answer:
                conn.sock.send(answer)  # a small answer: the socket's buffer takes it whole
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering, conn))
        except (OSError, ValueError):  # gone already (a WebSocket session closes its own socket)
            self._drop(conn)
            return
        conn.drained = 0
        self._lingering[conn] = time.monotonic() + _LINGER_S

    def _on_lingering(self, conn, _sock) -> None:
        data = _receive(conn)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained > _LINGER_BYTES:
            self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        del self._lingering[conn]
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._drop(conn)

    def _drop(self, conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        # Gunicorn's loop calls this on every turn, serving or stopping.
        super().murder_pending()
        now = time.monotonic()
        if not self._buffering or now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        if not self.alive and not self._stopping_since:
            self._stopping_since = now
        late = [conn for conn in self._reading if conn.deadline <= now]
        self._slow_senders = sum(1 for conn in self._reading if conn.since < now - _SLOW_SENDER_S)
        for conn in self._idle:
            deadline = conn.deadline
            if self._stopping_since:
                # Stopping: a kept-alive connection gets a moment for a request already sent.
                deadline = min(deadline, self._stopping_since + gthread.STOP_KEEPALIVE_LINGER)
            if deadline <= now:
                late.append(conn)
        timed_out = 0
        for conn in late:
            self._unwatch(conn)
            if conn.phase == "idle":  # keep-alive time is up; nothing was owed
                self._drop(conn)
                continue
            timed_out += 1
            limits = self.read_limits
            part, seconds = ("body", limits.body_timeout) if conn.phase == "body" else ("request line and headers", limits.header_timeout)
            self._refuse(conn, Refusal(
                408, "request_timeout", f"the {part} did not arrive within {seconds:g} s",
                {"timeout_s": seconds, "part": conn.phase},
            ))
        if timed_out:
            self.log.info("closed %d connection(s) whose request did not arrive in time (408)", timed_out)
        for conn in [c for c, deadline in self._lingering.items() if deadline <= now]:
            self._end_linger(conn)

    def finish_request(self, conn, fs) -> None:
        # On the main thread, when a thread is done with the connection.
        if not self._buffering:
            super().finish_request(conn, fs)
            return
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - a thread that failed: the connection is closed
            result = False
        if result is _UNFINISHED:  # a slow sender: the event loop reads the rest
            try:
                self._await(conn)
                return
            except (OSError, ValueError):
                self._unwatch(conn)
                result = False
        if result is _REFUSED:
            self._refuse(conn, conn.refusal)
            return
        if result and isinstance(getattr(conn.parser, "unreader", None), SpoolUnreader):
            try:
                self._next_request(conn)
                return
            except (OSError, ValueError):  # the client went away meanwhile
                self._unwatch(conn)
        self._close(conn)

    # --- the bounded backlog -------------------------------------------------------

    def enqueue_req(self, conn) -> None:
        # Runs on the worker's main thread, once per request about to be handled.
        with self._waiting_lock:
            waiting = self._waiting
            # Requests ahead share THREADS threads, each busy about the recent
            # time per request: roughly how long this one would wait for a thread.
            wait_s = waiting * self._seconds_per_request / self.cfg.threads
            if self.backlog and waiting >= self.backlog:
                details = {"waiting": waiting, "limit": self.backlog}
            elif self.max_wait and wait_s > self.max_wait:
                details = {"waiting": waiting, "expected_wait_ms": round(wait_s * 1000), "limit_ms": round(self.max_wait * 1000)}
            else:
                details = None
                self._waiting += 1
        if details is not None:
            future = self._rejecter.submit(self._reject, conn, details)
            future.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
            return
        super().enqueue_req(conn)

    def handle(self, conn):
        # A pool thread took the request: it no longer waits.
        with self._waiting_lock:
            self._waiting -= 1
        if getattr(conn, "pending", None) is not None and not conn.pending.complete:
            outcome = self._read_now(conn)
            if outcome is not None:
                return outcome
        self._attach(conn)
        return super().handle(conn)

    def handle_request(self, req, conn):
        # One parsed request through the app (a closed keep-alive connection never gets here).
        started = time.monotonic()
        if getattr(conn, "continued", False):
            req._expected_100_continue = False  # the event loop sent "100 Continue" already
        try:
            return super().handle_request(req, conn)
        finally:
            seconds = time.monotonic() - started
            if seconds < _LONGEST_SAMPLE_S:  # not a WebSocket stream or a slow upload
                previous = self._seconds_per_request
                self._seconds_per_request = previous + _SMOOTHING * (seconds - previous) if previous else seconds

    def _reject(self, conn, details: dict) -> bool:
        """Read the request, answer 503, close. Never raises: a failure only closes."""
        if self._buffering:
            return self._reject_unread(conn, details)
        try:
            if not conn.initialized and not conn.data_ready and not conn.wait_for_data(1.0):
                return False
            conn.sock.setblocking(True)
            conn.init()
            if conn.is_http2:
                return False
            request = next(conn.parser)
            if not request:
                return False
            length = request.body and getattr(request.body.reader, "length", None)
            if length is not None and length > _DRAIN_LIMIT:
                return False
            drained = 0
            while drained <= _DRAIN_LIMIT:
                chunk = request.body.read(65536)
                if not chunk:
                    break
                drained += len(chunk)
            conn.sock.sendall(_busy(details, _incoming_id(request)))
            metrics.REJECTED.labels(BACKLOG_ROUTE, "overloaded").inc()
            metrics.REQUESTS.labels(BACKLOG_ROUTE, request.method, "5xx").inc()
        except Exception:  # noqa: BLE001 - a client that vanished; nothing to answer
            self.log.debug("could not answer a shed request", exc_info=True)
        return False

    def _reject_unread(self, conn, details: dict) -> bool:
        """503 for a request the event loop reads: what has come is read (its
        id), never waited for; the rest is dropped by the closing linger."""
        pending = conn.pending
        if not pending.complete:
            pending.feed(_receive(conn) or b"")
        try:
            conn.sock.send(_busy(details, pending.request_id))
            metrics.REJECTED.labels(BACKLOG_ROUTE, "overloaded").inc()
            metrics.REQUESTS.labels(BACKLOG_ROUTE, pending.method, "5xx").inc()
        except OSError:
            self.log.debug("could not answer a shed request", exc_info=True)
        return False

    def handle_error(self, req, client, addr, exc) -> None:
        """Gunicorn's answer to a request its parser refused (or to a failure
        before the app answered): its status, the service's JSON error body."""
        status, code = next(((s, c) for kind, s, c in _GUNICORN_ERRORS if isinstance(exc, kind)), (500, "internal_error"))
        if status < 500:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            message = f"malformed HTTP request: {exc}" if status == 400 else str(exc)
        else:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
            message = "internal server error"
        self._count(Refusal(status, code, message), getattr(req, "method", None) or "-")
        try:
            client.settimeout(1.0)
            client.sendall(error_answer(status, code, message, None, _incoming_id(req)))
        except OSError:
            self.log.debug("could not send the error answer")

    def handle_quit(self, sig, frame) -> None:
        self._rejecter.shutdown(wait=False)
        super().handle_quit(sig, frame)


def _receive(conn) -> bytes | None:
    """What a non-blocking socket holds now: ``None`` when nothing yet, ``b""``
    when the client has gone (an error counts as gone)."""
    try:
        return conn.sock.recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _incoming_id(request) -> str:
    """The client's ``X-Request-ID`` of a request Gunicorn parsed (``""`` when none, or none parsed)."""
    return next((value for name, value in getattr(request, "headers", None) or () if name == "X-REQUEST-ID"), "")


def _busy(details: dict, incoming_id: str) -> bytes:
    """The backlog's 503: the service's JSON error body, ``Retry-After: 1``, then the connection closes."""
    return error_answer(503, Overloaded.code, "the server is busy; try again shortly", details, incoming_id,
                        extra_headers=(("Retry-After", "1"),))


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit of open files to ``needed`` (at most its
    hard limit), as nginx's ``worker_rlimit_nofile`` does; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def close_connection(environ: dict) -> None:
    """Answer this request with ``Connection: close`` and close the connection
    after it (on the gthread worker; elsewhere nothing to do)."""
    response = environ.get(RESPONSE_ENV)
    if response is not None:
        response.force_close()
