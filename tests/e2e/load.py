"""A load generator run as its own process against a live server.

    python -m tests.e2e.load URL PATH BODY_JSON OUT --concurrency 6 --stop-file F

Each of ``--concurrency`` threads POSTs ``BODY_JSON`` to ``URL + PATH`` on a new
connection per request (``Connection: close``: a failure then belongs to one
request, not to a pooled connection), or with ``--keep-alive`` on one
persistent connection per thread, until ``--stop-file`` exists or
``--count`` requests are sent. It writes every request to ``OUT`` as JSON:
``[{"start", "end", "status", "error"}]`` with ``time.monotonic()`` stamps, which
on Linux are comparable across processes of one machine; ``--field NAME`` also
keeps that field of each JSON answer (``"field"``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.parse
from pathlib import Path


def one_request(
    host: str,
    port: int,
    path: str,
    body: bytes,
    timeout: float,
    connection: http.client.HTTPConnection | None = None,
    field: str | None = None,
) -> dict:
    """One POST; on ``connection`` (kept alive) if given, else on a new one closed after."""
    start = time.monotonic()
    record: dict = {"start": start, "status": None, "error": None}
    keep = connection is not None
    try:
        connection = connection or http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"Content-Type": "application/json", "Connection": "keep-alive" if keep else "close"}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        record["status"] = response.status
        if field is not None:
            record["field"] = json.loads(data).get(field)
        if not keep:
            connection.close()
    except Exception as exc:  # a reset or refused connection is a failed request, recorded
        record["error"] = f"{type(exc).__name__}: {exc}"
        if connection is not None:
            connection.close()  # a kept-alive connection reconnects on its next request
    record["end"] = time.monotonic()
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("body")
    parser.add_argument("out", type=Path)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--count", type=int, default=0, help="total requests; 0 runs until the stop file")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--keep-alive", action="store_true", help="one persistent connection per thread")
    parser.add_argument("--field", help="keep this field of each JSON answer")
    args = parser.parse_args()
    target = urllib.parse.urlsplit(args.url)
    body = args.body.encode()
    records: list[dict] = []
    lock = threading.Lock()
    give_up = time.monotonic() + args.max_seconds

    def worker() -> None:
        connection = (
            http.client.HTTPConnection(target.hostname, target.port, timeout=args.timeout) if args.keep_alive else None
        )
        while time.monotonic() < give_up:
            if args.stop_file is not None and args.stop_file.exists():
                return
            with lock:
                if args.count and len(records) >= args.count:
                    return
                slot: dict = {}
                records.append(slot)
            slot.update(one_request(target.hostname, target.port, args.path, body, args.timeout, connection, args.field))

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    args.out.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
