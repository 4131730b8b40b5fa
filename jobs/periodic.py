"""Scheduled work, through huey's own scheduler: the job sweep, every site's
forecast, the prediction cache's pruning (``SERVE_SCHEDULE_*``).

huey's ``periodic_task`` fires at most once a minute, from every consumer
that has it, and knows no fixed delay. So each scheduled task here is a chain
of ordinary huey tasks scheduled with an ETA (``task.schedule(delay=...)``,
which huey's consumer moves to the queue when due, checking every second):
a run does its work, then schedules the next run, ``rate`` from when this one
was due, ``delay`` from when it ended, ``cron`` at the next matching minute.
Runs execute in the worker pool, like jobs, never in the consumer's main
process (which runs no model: the fork rules of ``jobs/worker.py``).

One chain per task, however many job workers and machines share the queue.
huey's storage has no compare-and-set, so no two writers share a key:
``schedule:<task>`` holds the current chain's token (written only when a
chain is seeded) and ``schedule:<task>:<token>`` that chain's state (written
only by its own runs, which never overlap). A run whose token is not the
current one ends without working, before and after its work: a chain made by
an earlier start, or replaced by a reseed. Each consumer's main loop reseeds
a chain that is missing, whose schedule setting changed, whose due run was
never picked up, or whose running run stopped heartbeating (a worker killed
mid-run) for ``job_visibility_timeout_s``. A run already under way when its
chain is replaced finishes its work (it cannot be taken back) and ends there.

A run that fails is logged with its traceback and counted; the chain goes
on, and so do the other tasks. The counts live in the chain's state (``runs``:
ok / failed, carried over to a reseeded chain), so every web process's
``/metrics`` reports them as ``serve_http_scheduled_runs_total{task,outcome}``
and ``serve_http_scheduled_last_run_timestamp_seconds{task,outcome}``,
whichever machine ran them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from huey import Huey

from serving.schedule import Schedule

log = logging.getLogger("jobs.periodic")

TASK_NAME = "scheduled_run"
JOB_SWEEP = "job-sweep"
FORECASTS = "forecasts"
CACHE_PRUNE = "cache-prune"
SCHEDULED_TASKS = (JOB_SWEEP, FORECASTS, CACHE_PRUNE)


def token_key(name: str) -> str:
    return f"schedule:{name}"


def chain_key(name: str, token: str) -> str:
    return f"schedule:{name}:{token}"


def _get(huey: Huey, key: str) -> dict[str, Any] | None:
    found = huey.get(key, peek=True)
    return found if isinstance(found, dict) else None


def read_state(huey: Huey, name: str) -> dict[str, Any] | None:
    """The current chain of ``name``: token, schedule, and its state (due | running), at, runs, last."""
    current = _get(huey, token_key(name))
    if current is None:
        return None
    return {**(_get(huey, chain_key(name, current["token"])) or {}), **current}


def run_counts(huey: Huey, names: tuple[str, ...] = SCHEDULED_TASKS) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task, state) of every chain that has run or been seeded."""
    for name in names:
        state = read_state(huey, name)
        if state is not None:
            yield name, state


@dataclass
class Periodic:
    """The scheduled tasks of one job worker: ``actions`` by name, each run on its schedule."""

    huey: Huey
    schedules: dict[str, Schedule]
    actions: dict[str, Callable[[], object]]
    lost_after: float
    heartbeat_s: float
    clock: Callable[[], float] = time.time
    _task: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.schedules = {n: s for n, s in self.schedules.items() if s.kind != "off" and n in self.actions}
        # Registered before the pool forks, so every worker process knows it.
        self._task = self.huey.task(name=TASK_NAME)(self.run)

    # --- the consumer's main process ------------------------------------

    def watch(self) -> list[str]:
        """Seed every chain that is missing, changed or lost; the names seeded."""
        seeded = []
        now = self.clock()
        for name, schedule in self.schedules.items():
            state = read_state(self.huey, name)
            reason = None
            if state is None:
                reason = "first start"
            elif state.get("schedule") != str(schedule):
                reason = f"schedule changed from {state.get('schedule')!r}"
            elif now > state.get("at", 0.0) + self.lost_after:
                reason = "its worker stopped" if state.get("state") == "running" else "its due run was never picked up"
            if reason is not None:
                self.seed(name, state, reason)
                seeded.append(name)
        return seeded

    def seed(self, name: str, previous: dict[str, Any] | None, reason: str) -> None:
        """A new chain for ``name``, its first run due now (cron: at the next
        matching minute); the counts of the chain it replaces carry over."""
        schedule = self.schedules[name]
        now = self.clock()
        due = schedule.first(now)
        assert due is not None
        token = uuid.uuid4().hex
        kept = {k: previous[k] for k in ("runs", "last") if previous and k in previous}
        self.huey.put(chain_key(name, token), {"state": "due", "at": due, **kept})
        self.huey.put(token_key(name), {"token": token, "schedule": str(schedule), "seeded_at": now})
        if previous and previous.get("token"):
            self.huey.delete(chain_key(name, previous["token"]))
        self._task.schedule(args=(name, token, due), delay=max(0.0, due - now))
        log.info("scheduled task %s (%s): %s; first run in %.0f s", name, schedule, reason, max(0.0, due - now))

    # --- a worker process -------------------------------------------------

    def current(self, name: str, token: str) -> bool:
        found = _get(self.huey, token_key(name))
        return found is not None and found.get("token") == token

    def run(self, name: str, token: str, due: float) -> None:
        """One run of ``name``, then the next one scheduled; a replaced chain ends here."""
        schedule = self.schedules.get(name)
        if schedule is None or not self.current(name, token):
            log.info("scheduled task %s: an old chain, ended", name)
            return
        key = chain_key(name, token)
        state = _get(self.huey, key) or {}
        started = self.clock()
        self.huey.put(key, {**state, "state": "running", "at": started})
        outcome, error = "ok", None
        with _Heartbeat(lambda: self._beat(name, token), self.heartbeat_s):
            try:
                self.actions[name]()
            except Exception as exc:  # one task's failure stops neither its chain nor the others
                outcome, error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("scheduled task %s failed", name)
        finished = self.clock()
        if not self.current(name, token):  # replaced while this ran: the new chain goes on
            return
        state = _get(self.huey, key) or state
        runs = dict(state.get("runs") or {})
        runs[outcome] = runs.get(outcome, 0) + 1
        last = dict(state.get("last") or {})
        last[outcome] = finished
        nxt = schedule.next(due, started, finished)
        self.huey.put(key, {**state, "state": "due", "at": nxt, "runs": runs, "last": last,
                            "error": error, "seconds": round(finished - started, 6)})
        self._task.schedule(args=(name, token, nxt), delay=max(0.0, nxt - self.clock()))
        log.info("scheduled task %s: %s in %.3f s; next in %.1f s", name, outcome, finished - started, max(0.0, nxt - finished))

    def _beat(self, name: str, token: str) -> bool:
        if not self.current(name, token):
            return False
        key = chain_key(name, token)
        self.huey.put(key, {**(_get(self.huey, key) or {}), "at": self.clock()})
        return True


class _Heartbeat:
    """Calls ``beat`` every ``interval`` seconds from a thread until the block ends
    (or ``beat`` answers False), so a long run does not look like a dead one."""

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self.beat, self.interval = beat, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="schedule-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.beat():
                    return
            except Exception:
                log.warning("scheduled task heartbeat failed", exc_info=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
