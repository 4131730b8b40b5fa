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

``WORKER_CLASS=gthread`` selects it (``gunicorn.conf.py``); a backlog of 0 keeps
Gunicorn's unbounded queue, a delay of 0 its accept-at-once.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import orjson
from gunicorn.workers import gthread

from serving import metrics
from serving.errors import Overloaded, error_body
from serving.logs import request_id_for

#: WSGI environ key of Gunicorn's response object for the request (``close_connection``).
RESPONSE_ENV = "serve_http.gunicorn_response"

# A body larger than this is not drained before the 503: the connection is cut.
_DRAIN_LIMIT = 1024 * 1024
BACKLOG_ROUTE = "<worker backlog>"
_SMOOTHING = 0.2  # weight of the newest request in the moving average
_ACCEPT_AT_ONCE = 64  # connections taken in one go after a pause
_LONGEST_SAMPLE_S = 10.0  # longer "requests" (streams, uploads) say nothing of the next one


class SheddingThreadWorker(gthread.ThreadWorker):
    """gthread that spreads connections over the workers and bounds the requests waiting for a thread."""

    backlog = 0  # set by gunicorn.conf.py from SERVE_WORKER_BACKLOG
    max_wait = 0.0  # seconds, from SERVE_WORKER_MAX_WAIT_MS
    accept_delay = 0.0  # seconds, from SERVE_WORKER_ACCEPT_DELAY_MS

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
        super().init_process()

    # --- spreading connections over the workers ------------------------------------

    def accept(self, listener) -> None:
        # Runs on the main thread when the listening socket is readable.
        if self.accept_delay and self.nr_conns >= self.cfg.threads:
            # Busy: leave the connection queued in the kernel for another worker.
            self._accept_paused_until = time.monotonic() + self.accept_delay
            super().set_accept_enabled(False)
            return
        super().accept(listener)

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
        super().wait_for_and_dispatch_events(timeout)

    def _accept_waiting(self, listener) -> None:
        listener.setblocking(False)  # an empty queue must not block the main thread
        for _ in range(_ACCEPT_AT_ONCE):
            before = self.nr_conns
            super().accept(listener)  # Gunicorn's: one connection, or none when none waits
            if self.nr_conns == before:
                return

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
        return super().handle(conn)

    def handle_request(self, req, conn):
        # One parsed request through the app (a closed keep-alive connection never gets here).
        started = time.monotonic()
        try:
            return super().handle_request(req, conn)
        finally:
            seconds = time.monotonic() - started
            if seconds < _LONGEST_SAMPLE_S:  # not a WebSocket stream or a slow upload
                previous = self._seconds_per_request
                self._seconds_per_request = previous + _SMOOTHING * (seconds - previous) if previous else seconds

    def _reject(self, conn, details: dict) -> bool:
        """Read the request, answer 503, close. Never raises: a failure only closes."""
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
            conn.sock.sendall(self._answer(request, details))
            metrics.REJECTED.labels(BACKLOG_ROUTE, "overloaded").inc()
            metrics.REQUESTS.labels(BACKLOG_ROUTE, request.method, "5xx").inc()
        except Exception:  # noqa: BLE001 - a client that vanished; nothing to answer
            self.log.debug("could not answer a shed request", exc_info=True)
        return False

    def _answer(self, request, details: dict) -> bytes:
        incoming = next((value for name, value in request.headers if name == "X-REQUEST-ID"), "")
        request_id = request_id_for(incoming)
        body = orjson.dumps(
            error_body(
                Overloaded.code,
                "the server is busy; try again shortly",
                details,
                request_id,
            )
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            f"X-Request-ID: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body

    def handle_quit(self, sig, frame) -> None:
        self._rejecter.shutdown(wait=False)
        super().handle_quit(sig, frame)


def close_connection(environ: dict) -> None:
    """Answer this request with ``Connection: close`` and close the connection
    after it (on the gthread worker; elsewhere nothing to do)."""
    response = environ.get(RESPONSE_ENV)
    if response is not None:
        response.force_close()
