"""Scheduled work: the schedule settings, and the chains of huey tasks that run
them (jobs/periodic.py) under a real huey consumer on a real SQLite queue."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
from huey import SqliteHuey
from huey.consumer import Consumer

from jobs.periodic import Periodic, chain_key, read_state, run_counts
from serving.metrics import ScheduledRuns, exposition
from serving.schedule import Schedule
from serving.settings import Settings
from tests.e2e.server import wait_for


# --- the settings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "seconds"),
    [("rate 60s", "rate", 60), ("delay 2m", "delay", 120), ("rate  1.5 h", "rate", 5400), ("delay 3", "delay", 3),
     ("off", "off", 0), ("", "off", 0)],
)
def test_schedules_parse(text, kind, seconds):
    schedule = Schedule.parse(text)
    assert (schedule.kind, schedule.seconds) == (kind, seconds)


@pytest.mark.parametrize("text", ["every 60s", "rate 0s", "rate -1s", "cron * * *", "cron 61 * * * *", "delay 5d"])
def test_bad_schedules_are_refused(text):
    with pytest.raises(ValueError):
        Schedule.parse(text)


def test_a_bad_schedule_setting_stops_start_up(monkeypatch):
    monkeypatch.setenv("SERVE_SCHEDULE_FORECASTS", "every hour")
    with pytest.raises(ValueError, match="every hour"):
        Settings(_env_file=None)


def test_fixed_rate_keeps_its_cadence_and_never_piles_runs_up():
    rate = Schedule.parse("rate 10s")
    # On time: due 10 s after the last was due, however long the run took.
    assert rate.next(scheduled=100.0, started=100.4, finished=103.0) == 110.0
    # A run that overran its interval: the next free slot, not one run per missed slot.
    assert rate.next(scheduled=100.0, started=100.0, finished=125.0) == 130.0
    # Started late (a busy worker pool): still on the grid.
    assert rate.next(scheduled=100.0, started=109.5, finished=110.5) == 120.0


def test_fixed_delay_counts_from_the_end_of_the_last_run():
    delay = Schedule.parse("delay 10s")
    assert delay.next(scheduled=100.0, started=100.4, finished=103.0) == 113.0


def test_cron_runs_on_the_minutes_its_fields_match():
    every_5 = Schedule.parse("cron */5 * * * *")
    now = datetime(2026, 3, 1, 10, 7, 30).timestamp()
    assert datetime.fromtimestamp(every_5.first(now)) == datetime(2026, 3, 1, 10, 10)
    nightly = Schedule.parse("cron 30 2 * * *")
    assert datetime.fromtimestamp(nightly.next(0, now, now)) == datetime(2026, 3, 2, 2, 30)


# --- the chains, under a real consumer ------------------------------------------------


class Worker:
    """A huey consumer on a SQLite queue in a thread of this process, with the
    periodic chains of ``actions`` seeded as the job worker seeds them."""

    def __init__(self, path, schedules: dict[str, str], actions, lost_after: float = 30) -> None:
        self.huey = SqliteHuey("test-schedule", filename=str(path), results=False)
        self.periodic = Periodic(
            self.huey, {n: Schedule.parse(s) for n, s in schedules.items()}, actions, lost_after=lost_after, heartbeat_s=0.2
        )
        self.consumer = Consumer(self.huey, workers=2, worker_type="thread", periodic=False, initial_delay=0.02, max_delay=0.1)
        self.consumer._set_signal_handlers = lambda: None  # signals belong to pytest's main thread
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def __enter__(self) -> "Worker":
        self.periodic.watch()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.consumer.stop(graceful=True)
        self.thread.join(10)


def recorder(log: list, seconds: float = 0.0, fail: bool = False):
    def run() -> None:
        started = time.time()
        time.sleep(seconds)  # the task's own work, of a known length
        log.append((started, time.time()))
        if fail:
            raise RuntimeError("the task broke")

    return run


def test_both_cadences_and_a_failing_task_that_does_not_stop_the_next_run(tmp_path):
    rate, delay, broken = [], [], []
    actions = {"rate": recorder(rate, 0.6), "delay": recorder(delay, 0.6), "broken": recorder(broken, fail=True)}
    schedules = {"rate": "rate 2s", "delay": "delay 2s", "broken": "rate 1s"}
    with Worker(tmp_path / "queue.db", schedules, actions) as worker:
        wait_for(lambda: len(rate) >= 4 and len(delay) >= 3 and len(broken) >= 3, 30, "four rate runs, three delay runs")
        states = dict(run_counts(worker.huey, ("rate", "delay", "broken")))
    # Fixed rate: a start every 2 s (huey moves due tasks each second, so a start
    # may lag its slot by up to a second, never accumulating).
    rate_starts = [started for started, _ in rate]
    assert rate_starts[3] - rate_starts[0] == pytest.approx(6.0, abs=1.2)
    # Fixed delay: 2 s from each end to the next start, so starts are 2.6 s or more apart.
    gaps = [delay[i + 1][0] - delay[i][1] for i in range(len(delay) - 1)]
    assert all(gap >= 1.95 for gap in gaps), gaps
    assert delay[2][0] - delay[0][0] >= 2 * 2.6 - 0.1
    # The failing task ran again and again, and counted each failure; the others went on.
    assert states["broken"]["runs"].get("failed", 0) >= 3 and "ok" not in states["broken"]["runs"]
    assert states["broken"]["error"] == "RuntimeError: the task broke"
    assert states["rate"]["runs"]["ok"] >= 4 and "failed" not in states["rate"]["runs"]
    # The counts are what /metrics reports.
    body = exposition([ScheduledRuns(states.items())])[0].decode()
    assert f'serve_http_scheduled_runs_total{{outcome="failed",task="broken"}} {float(states["broken"]["runs"]["failed"])}' in body
    assert 'serve_http_scheduled_last_run_timestamp_seconds{outcome="ok",task="rate"}' in body


def test_one_chain_however_often_it_is_seeded(tmp_path):
    runs = []
    huey_path = tmp_path / "queue.db"
    with Worker(huey_path, {"sweep": "rate 1s"}, {"sweep": recorder(runs)}) as worker:
        # A second worker starting on the same queue (or this one restarting with a
        # changed schedule) reseeds: one of the two chains ends at its next run
        # (the reseed's, if a run of the first was writing its state meanwhile).
        elsewhere = SqliteHuey("test-schedule", filename=str(huey_path), results=False)
        other = Periodic(elsewhere, {"sweep": Schedule.parse("rate 1.5s")}, {"sweep": recorder(runs)}, 30, 0.2)
        assert other.watch() == ["sweep"]
        # The reseed may let the replaced chain's run under way happen once more
        # (the README says so), among the first runs; then one chain goes on.
        wait_for(lambda: len(runs) >= 6, 40, "six runs")
        # One chain: one scheduled message at a time, never two, and at most one
        # run a second (huey moves due runs once a second, so a run may lag its
        # slot by up to a second: a 3 s window holds at most 4 of one chain's
        # runs, and 6 or more of two chains').
        counts, window_start = [], time.time()
        for _ in range(30):
            counts.append(worker.huey.scheduled_count() + worker.huey.pending_count())
            time.sleep(0.1)  # sampling the queue while the chain runs
        window_end = time.time()
        assert max(counts) <= 1, counts
    assert sum(window_start <= s < window_end for s, _ in runs) <= 4, runs
    # Every run the chain made is counted in its state; the one run the reseed
    # may have let through (the replaced chain's, under way) is the only other.
    state = read_state(worker.huey, "sweep")
    assert 0 <= len(runs) - state["runs"]["ok"] <= 1, (len(runs), state["runs"])


def test_a_chain_whose_worker_died_is_reseeded(tmp_path):
    huey = SqliteHuey("test-schedule", filename=str(tmp_path / "queue.db"), results=False)
    periodic = Periodic(huey, {"sweep": Schedule.parse("rate 60s")}, {"sweep": lambda: None}, lost_after=5, heartbeat_s=1)
    assert periodic.watch() == ["sweep"]  # first start
    assert periodic.watch() == []  # healthy: due now, not yet late
    token = read_state(huey, "sweep")["token"]
    # A run that started and stopped heartbeating (its process was killed).
    huey.put(chain_key("sweep", token), {"state": "running", "at": time.time() - 6, "runs": {"ok": 4}})
    assert periodic.watch() == ["sweep"]
    state = read_state(huey, "sweep")
    assert state["token"] != token and state["state"] == "due"
    assert state["runs"] == {"ok": 4}  # the counts carry over to the new chain
    assert huey.get(chain_key("sweep", token), peek=True) is None  # the dead chain's state is gone
