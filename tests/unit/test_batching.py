"""The micro-batcher: ordering, grouping, partial failure, load shedding, deadlines, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.batching import BatchConfig, MicroBatcher
from serving.errors import DeadlineExceeded, Overloaded


class Gate:
    """A model whose first call blocks until released, so tests can fill the queue
    deterministically while it computes."""

    def __init__(self, fn=lambda items: [x * 10 for x in items]):
        self.fn = fn
        self.calls: list[list] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return self.fn(items)


def wait_until_queued(batcher: MicroBatcher, count: int) -> None:
    """Spin (bounded) until ``count`` inputs wait in the queue."""
    for _ in range(2_000_000):
        if batcher.queued >= count:
            return
    raise AssertionError(f"queue never reached {count}")


def test_results_keep_order_within_and_across_requests():
    batcher = MicroBatcher(lambda items: [x * 2 for x in items], BatchConfig(max_batch_size=8))
    assert batcher.submit([1, 2, 3]) == [2, 4, 6]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: batcher.submit([i, i + 100]), range(40)))
    assert outs == [[2 * i, 2 * (i + 100)] for i in range(40)]
    batcher.close()


def test_concurrent_requests_become_one_call():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=16, max_wait_ms=0))
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.submit, [0])
        assert gate.entered.wait(5)
        rest = [pool.submit(batcher.submit, [i]) for i in range(1, 6)]
        wait_until_queued(batcher, 5)
        gate.release.set()
        assert first.result(5) == [0]
        assert [f.result(5) for f in rest] == [[10], [20], [30], [40], [50]]
    # While the first call ran, the other five queued and went in together.
    assert gate.calls == [[0], [1, 2, 3, 4, 5]]
    batcher.close()


def test_batches_respect_max_batch_size():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=3))
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.submit, ["a"])
        assert gate.entered.wait(5)
        rest = [pool.submit(batcher.submit, [i]) for i in range(7)]
        wait_until_queued(batcher, 7)
        gate.release.set()
        first.result(5)
        [f.result(5) for f in rest]
    assert all(len(call) <= 3 for call in gate.calls)
    assert sorted(x for call in gate.calls[1:] for x in call) == list(range(7))


def test_one_bad_input_fails_only_its_own_request():
    def model(items):
        if "bad" in items:
            raise ValueError("cannot eat 'bad'")
        return [s.upper() for s in items]

    gate = Gate(model)
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=8))
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.submit, ["x"])
        assert gate.entered.wait(5)
        good = pool.submit(batcher.submit, ["a", "b"])
        bad = pool.submit(batcher.submit, ["bad"])
        other = pool.submit(batcher.submit, ["c"])
        wait_until_queued(batcher, 4)
        gate.release.set()
        assert first.result(5) == ["X"]
        assert good.result(5) == ["A", "B"]
        assert other.result(5) == ["C"]
        with pytest.raises(ValueError, match="bad"):
            bad.result(5)


def test_full_queue_sheds_at_once():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=1, max_queue=2), name="m")
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.submit, [0])
        assert gate.entered.wait(5)
        queued = [pool.submit(batcher.submit, [1]), pool.submit(batcher.submit, [2])]
        wait_until_queued(batcher, 2)
        with pytest.raises(Overloaded) as info:
            batcher.submit([3])
        assert info.value.details == [
            {"field": None, "message": info.value.message, "type": "overloaded", "queued": 2, "limit": 2}]
        gate.release.set()
        assert running.result(5) == [0] and [f.result(5) for f in queued] == [[10], [20]]
    assert batcher.submit([4]) == [40]  # room again


class TimedModel:
    """Every input takes 50 ms of a fake clock; once ``hold`` is set, calls wait
    for ``release``, so tests fill the queue while the model computes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def clock(self) -> float:
        return self.now

    def __call__(self, items):
        self.now += 0.05 * len(items)
        if self.hold:
            self.entered.set()
            assert self.release.wait(10)
        return [x * 10 for x in items]


def test_a_request_that_would_wait_too_long_is_refused_at_once():
    model = TimedModel()
    config = BatchConfig(max_batch_size=1, max_queue=100, max_queue_wait_ms=120)
    batcher = MicroBatcher(model, config, name="m", clock=model.clock)
    assert batcher.submit([1]) == [10]
    assert batcher.seconds_per_input == pytest.approx(0.05)
    model.hold = True
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(batcher.submit, [2])
        assert model.entered.wait(5)
        # 1 input running, then 1 and 2 queued: 50 and 100 ms of waiting, admitted.
        first = pool.submit(batcher.submit, [3])
        wait_until_queued(batcher, 1)
        second = pool.submit(batcher.submit, [4])
        wait_until_queued(batcher, 2)
        # 3 inputs ahead: 150 ms > 120 ms.
        with pytest.raises(Overloaded) as info:
            batcher.submit([5])
        assert info.value.details == [{"field": None, "message": info.value.message, "type": "overloaded",
                                       "expected_wait_ms": 150, "limit_ms": 120}]
        assert batcher.queued == 2  # the refused request left nothing behind
        model.release.set()
        assert [f.result(5) for f in (running, first, second)] == [[20], [30], [40]]
    # An idle model admits any request, however slow its recent calls were.
    model.hold, model.now = False, 0.0
    batcher.seconds_per_input = 60.0
    assert batcher.submit([6, 7]) == [60, 70]


def test_request_whose_deadline_passes_in_the_queue_is_not_computed():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=4))
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher.submit, ["first"])
        assert gate.entered.wait(5)
        with pytest.raises(DeadlineExceeded):
            batcher.submit(["late"], timeout=0.05)
        gate.release.set()
        assert running.result(5) == ["first" * 10]
    assert batcher.submit(["next"]) == ["next" * 10]
    assert ["late"] not in gate.calls and all("late" not in call for call in gate.calls)


def test_close_finishes_queued_work_and_refuses_new():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=1))
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(batcher.submit, [1])
        assert gate.entered.wait(5)
        queued = pool.submit(batcher.submit, [2])
        wait_until_queued(batcher, 1)
        closer = pool.submit(batcher.close)
        gate.release.set()
        closer.result(5)
        assert running.result(5) == [10] and queued.result(5) == [20]
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit([3])


def test_wrong_result_count_is_an_error_for_every_request():
    batcher = MicroBatcher(lambda items: items[:-1], BatchConfig())
    with pytest.raises(RuntimeError, match="1 inputs"):
        batcher.submit([1])


def test_a_large_request_is_admitted_alone():
    batcher = MicroBatcher(lambda items: items, BatchConfig(max_batch_size=2, max_queue=3))
    assert batcher.submit(list(range(10))) == list(range(10))


class Recorder:
    def __init__(self):
        self.calls: list[int] = []
        self.depths: list[int] = []

    def model_call(self, size, seconds):
        assert seconds >= 0
        self.calls.append(size)

    def queue_depth(self, inputs):
        self.depths.append(inputs)


def test_batch_thread_logs_under_the_request_ids_of_its_batch_and_reports_to_the_observer():
    from serving.logs import REQUEST_ID

    seen_ids: list[str] = []
    gate = Gate(lambda items: (seen_ids.append(REQUEST_ID.get()), [x for x in items])[1])
    recorder = Recorder()
    batcher = MicroBatcher(gate, BatchConfig(max_batch_size=16, max_wait_ms=0), observer=recorder)

    def submit_as(request_id, items):
        REQUEST_ID.set(request_id)  # each pool thread runs in its own context
        return batcher.submit(items)

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(submit_as, "req-a", [1])
        assert gate.entered.wait(5)
        second = pool.submit(submit_as, "req-b", [2, 3])
        third = pool.submit(submit_as, "req-c", [4])
        wait_until_queued(batcher, 3)
        gate.release.set()
        assert (first.result(5), second.result(5), third.result(5)) == ([1], [2, 3], [4])
    batcher.close()
    assert seen_ids == ["req-a", "req-b,req-c"]
    assert recorder.calls == [1, 3]
    assert recorder.depths[-1] == 0 and max(recorder.depths) == 3
