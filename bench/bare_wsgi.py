"""The floor for /healthz: a bare WSGI callable, served by the same Gunicorn settings.

    gunicorn -c gunicorn.conf.py bench.bare_wsgi:app
"""

from __future__ import annotations

from typing import Callable, Iterable

BODY = b'{"status":"ok"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ: dict, start_response: Callable[..., object]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
