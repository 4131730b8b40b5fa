"""The socket-free parts of streaming: newest-frame-wins inbox, connection gate,
the subprotocol that carries a browser's API key."""

from __future__ import annotations

import base64
import threading

from api.stream import subprotocol_token
from serving.streaming import ConnectionGate, FrameInbox, StreamStats


def accounted(inbox: FrameInbox) -> bool:
    c = inbox.counts()
    return c["received"] == c["processed"] + c["failed"] + c["dropped"] + c["pending"]


def test_newest_frame_wins_and_replaced_frames_are_counted_as_dropped():
    inbox = FrameInbox(StreamStats())
    for data in (b"a", b"b", b"c"):
        inbox.put_frame(data)
    assert inbox.counts() == {"received": 3, "processed": 0, "failed": 0, "dropped": 2, "pending": 1}
    taken = inbox.take(timeout=0)
    assert taken.frame is not None and (taken.frame.seq, taken.frame.data) == (3, b"c")
    assert inbox.counts()["pending"] == 0
    inbox.stats.frame_processed(0.01)
    assert accounted(inbox)


def test_take_waits_for_a_frame_from_another_thread():
    inbox = FrameInbox(StreamStats())
    threading.Timer(0.05, inbox.put_frame, args=(b"late",)).start()
    taken = inbox.take(timeout=30)
    assert taken.frame is not None and taken.frame.data == b"late" and not taken.closed


def test_notices_come_before_the_frame_and_are_bounded():
    inbox = FrameInbox(StreamStats(), max_notices=3)
    inbox.put_frame(b"x")
    for i in range(5):
        inbox.put_notice(i)
    taken = inbox.take(timeout=0)
    assert taken.notices == [2, 3, 4] and taken.frame is not None
    assert inbox.take(timeout=0).notices == []


def test_close_discards_the_waiting_frame_as_dropped_and_keeps_its_reason():
    inbox = FrameInbox(StreamStats())
    inbox.put_frame(b"x")
    inbox.close((1000, "idle for 60 s"))
    inbox.close()  # a later close does not overwrite the first reason
    taken = inbox.take(timeout=0)
    assert taken.closed and taken.frame is None
    assert inbox.close_reason == (1000, "idle for 60 s")
    assert inbox.counts()["dropped"] == 1 and accounted(inbox)


def test_gate_admits_up_to_its_limit_and_frees_on_leave():
    gate = ConnectionGate(2)
    assert gate.try_enter() and gate.try_enter()
    assert not gate.try_enter() and gate.open == 2
    gate.leave()
    assert gate.try_enter()


def test_subprotocol_token_decodes_base64url_without_padding():
    key = "k3y/with+odd=chars"
    encoded = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    assert subprotocol_token(f"serve-http.v1, bearer.{encoded}") == key
    assert subprotocol_token("serve-http.v1") == ""
    assert subprotocol_token("bearer.%%%") == ""
    assert subprotocol_token("bearer.//8") == ""  # not UTF-8


def test_stream_frames_bypass_the_prediction_cache(registry, astronaut_jpeg):
    """``run(cached=False)`` (what the stream uses) neither reads nor writes the cache."""
    from predict import Predictor
    from serving.cache import MemoryCache

    cache = MemoryCache(10)
    predictor = Predictor(registry, cache, batching=False)
    # The stream's frames are raw JPEG bytes, not base64.
    streamed = predictor.predict("faces", [astronaut_jpeg], task="object-detection", cached=False)
    assert streamed.cached == 0 and len(cache._items) == 0
    assert [d.label for d in streamed.results[0]] == ["face"]
    predictor.predict("faces", [astronaut_jpeg])
    assert len(cache._items) == 1
    again = predictor.predict("faces", [astronaut_jpeg], cached=False)
    assert again.cached == 0 and again.results == streamed.results
