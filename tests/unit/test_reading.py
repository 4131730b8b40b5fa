"""The worker's request reader (serving/reading.py): where a request ends, what
it refuses, and the hand-over to Gunicorn's own parser."""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from serving.reading import SPOOL_IN_MEMORY, PendingRequest, ReadLimits, SpoolUnreader, error_answer

LIMITS = ReadLimits(header_timeout=10, body_timeout=60, max_body=2 * SPOOL_IN_MEMORY, max_request_line=8190,
                    max_fields=100, max_field_size=8190)


def fed(*chunks: bytes) -> PendingRequest:
    pending = PendingRequest(LIMITS)
    for chunk in chunks:
        refusal = pending.feed(chunk)
        assert refusal is None, refusal
    return pending


def refusal_of(*chunks: bytes):
    pending = PendingRequest(LIMITS)
    for chunk in chunks:
        refusal = pending.feed(chunk)
        if refusal is not None:
            return refusal
    raise AssertionError("not refused")


def test_a_request_is_complete_only_with_its_whole_body_however_it_is_split():
    raw = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nX-Request-ID: abc-1\r\n\r\n{\"text\":\"a\"}"
    for cut in range(1, len(raw)):
        pending = fed(raw[:cut])
        assert not pending.complete
        assert pending.headers_done == (cut >= raw.index(b"\r\n\r\n") + 4)
        pending.feed(raw[cut:])
        assert pending.complete and pending.request_id == "abc-1" and pending.method == "POST"


def test_chunked_bodies_end_at_the_last_chunk():
    pending = fed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabc\r\n")
    assert pending.headers_done and not pending.complete
    pending.feed(b"0\r\n\r\n")
    assert pending.complete


def test_expect_100_continue_is_seen_only_when_a_body_is_owed():
    assert fed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").expects_continue
    assert not fed(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n").expects_continue


@pytest.mark.parametrize(
    ("chunks", "status", "code"),
    [
        ((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * SPOOL_IN_MEMORY + 1),), 413,
         "payload_too_large"),
        ((b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
          *[b"%x\r\n%s\r\n" % (SPOOL_IN_MEMORY, b"a" * SPOOL_IN_MEMORY)] * 3), 413, "payload_too_large"),
        ((b"GET /" + b"a" * 8191 + b" HTTP/1.1\r\n",), 414, "uri_too_long"),
        ((b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",), 431,
         "request_header_fields_too_large"),
        ((b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8190 + b"\r\n\r\n",), 431, "request_header_fields_too_large"),
        ((b"GET / HTTP/1.1\r\nX-Endless: ", b"a" * 900_000), 431, "request_header_fields_too_large"),
        ((b"GET / HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n",), 400, "bad_request"),
        ((b"NOT HTTP AT ALL\r\n\r\n",), 400, "bad_request"),
    ],
    ids=["length-over-limit", "chunked-over-limit", "request-line", "header-count", "header-size", "endless-header",
         "control-byte", "garbage"],
)
def test_what_is_refused_while_reading(chunks, status, code):
    refusal = refusal_of(*chunks)
    assert (refusal.status, refusal.code) == (status, code)


def test_a_pipelined_next_request_is_not_judged_with_this_one():
    pending = fed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /" + b"b" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert pending.complete  # the second one's too-long line is its own business


def test_gunicorn_reads_the_handed_over_request_and_gives_back_what_follows():
    body = b"x" * (SPOOL_IN_MEMORY + 10)  # spooled to a temporary file
    raw = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    nxt = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    pending = fed(raw[:1000], raw[1000:] + nxt)
    assert pending.complete and pending.spool is not None
    left, right = socket.socketpair()
    try:
        parser = RequestParser(Config(), left, ("127.0.0.1", 1))
        parser.unreader = SpoolUnreader(left, timeout=0.5)
        pending.hand_over(parser.unreader)
        request = next(parser)
        assert (request.method, request.path) == ("POST", "/up")
        assert request.body.read() == body
        assert parser.unreader.leftover() == nxt
    finally:
        left.close()
        right.close()


def test_the_socket_is_read_only_past_the_buffer_and_never_blocks_for_long():
    left, right = socket.socketpair()
    try:
        unreader = SpoolUnreader(left, timeout=0.2)
        fed(b"GET / HTTP/1.1\r\n\r\n").hand_over(unreader)
        assert unreader.read() == b"GET / HTTP/1.1\r\n\r\n"
        assert unreader.read() == b""  # nothing more comes: the end, after 0.2 s, not a hang
        right.sendall(b"more")
        assert unreader.read() == b"more"
    finally:
        left.close()
        right.close()


def test_error_answers_are_whole_json_responses_that_close():
    answer = error_answer(408, "request_timeout", "too slow", {"timeout_s": 10}, "client-id-1")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head and b"X-Request-ID: client-id-1" in head
    assert b"Content-Length: %d" % len(body) in head
    assert body.startswith(b'{"error":{"code":"request_timeout","message":"too slow"')
