"""When scheduled work runs: the schedule settings of the job worker's
periodic tasks (stored forecasts, the job sweep, the prediction cache's
pruning), read and checked here; ``jobs/periodic.py`` runs them.

A schedule is a setting, one of:

- ``rate 60s``: fixed rate, a run starts every 60 s on the grid of the first
  run (the slots a long run overlaps are skipped, never piled up);
- ``delay 60s``: fixed delay, the next run starts 60 s after the last ended;
- ``cron */5 * * * *``: minute, hour, day, month and weekday fields, as huey's
  ``crontab`` (and cron) read them: at most once a minute;
- ``off``.

Intervals take ``s``, ``m`` or ``h`` (``rate 1h``). Times are wall-clock
epoch seconds: a run's due time travels in the job queue, between processes
and machines.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

_SPEC = re.compile(r"^(rate|delay)\s+(\d+(?:\.\d+)?)\s*(s|m|h)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}


@dataclass(frozen=True)
class Schedule:
    """When a task runs: ``kind`` is rate, delay, cron or off."""

    kind: str
    seconds: float = 0.0
    cron: str = ""

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        text = " ".join(text.strip().split())
        if text in ("", "off"):
            return cls("off")
        match = _SPEC.match(text)
        if match:
            seconds = float(match[2]) * _UNITS[match[3]]
            if seconds <= 0:
                raise ValueError(f"{text!r}: the interval must be above 0")
            return cls(match[1], seconds)
        if text.startswith("cron "):
            spec = text[5:]
            _crontab(spec)  # checks the fields
            return cls("cron", cron=spec)
        raise ValueError(f"{text!r} is not 'rate <n>s', 'delay <n>s', 'cron <5 fields>' or 'off'")

    def first(self, now: float) -> float | None:
        """When the first run is due, None for off."""
        if self.kind == "off":
            return None
        if self.kind == "cron":
            return self.after_cron(now)
        return now  # a fresh worker runs the task at once

    def next(self, scheduled: float, started: float, finished: float) -> float:
        """When the run after one scheduled at ``scheduled`` (and run from
        ``started`` to ``finished``) is due."""
        if self.kind == "delay":
            return finished + self.seconds
        if self.kind == "rate":
            # The next slot of the grid after the run ended: slots an overrun missed are skipped, never piled up.
            return scheduled + self.seconds * (math.floor((finished - scheduled) / self.seconds) + 1)
        return self.after_cron(finished)

    def after_cron(self, now: float) -> float:
        """The next whole minute after ``now`` that the cron fields match (local time, as cron)."""
        matches = _crontab(self.cron)
        minute = (int(now // 60) + 1) * 60
        for _ in range(366 * 24 * 60):  # a year of minutes at most
            if matches(datetime.fromtimestamp(minute)):
                return float(minute)
            minute += 60
        raise ValueError(f"cron {self.cron!r} never matches")

    def __str__(self) -> str:
        if self.kind == "cron":
            return f"cron {self.cron}"
        return "off" if self.kind == "off" else f"{self.kind} {self.seconds:g}s"


def _crontab(spec: str) -> Callable[[datetime], bool]:
    from huey import crontab

    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(f"cron {spec!r}: five fields (minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
    return crontab(minute=minute, hour=hour, day=day, month=month, day_of_week=weekday)
