"""Stored forecasts: the scheduler writes every site's forecast, ``GET /forecast`` reads it.

Kept beside the job records, by the same settings: SQLite
(``SERVE_JOBS_DIR/forecasts.db``) on one machine, Redis (``REDIS_URL``) for
several. A forecast is stored under its model's name and revision (the model
folder's files), so a reloaded or retrained model never serves its
predecessor's forecasts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from serving.settings import Settings
from tasks import TIME_SERIES_FORECAST


class ForecastStore(Protocol):
    def put(self, model: str, revision: str, series: str, forecast: dict[str, Any], computed_at: float) -> None: ...

    def get(self, model: str, revision: str, series: str) -> tuple[dict[str, Any], float] | None:
        """The stored forecast and when it was computed (epoch seconds), or None."""
        ...

    def drop_other_revisions(self, model: str, revision: str) -> None:
        """Forget the model's forecasts by any revision but ``revision``."""
        ...


class SqliteForecasts:
    """One row per model, revision and series; one connection per process and thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        pid = getattr(self._local, "pid", None)
        if conn is None or pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("pragma journal_mode=wal")
            conn.execute(
                "create table if not exists forecasts (model text, revision text, series text, computed_at real,"
                " data text, primary key (model, revision, series))"
            )
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def put(self, model: str, revision: str, series: str, forecast: dict[str, Any], computed_at: float) -> None:
        self._conn.execute(
            "insert or replace into forecasts values (?, ?, ?, ?, ?)",
            (model, revision, series, computed_at, json.dumps(forecast)),
        )

    def get(self, model: str, revision: str, series: str) -> tuple[dict[str, Any], float] | None:
        row = self._conn.execute(
            "select data, computed_at from forecasts where model = ? and revision = ? and series = ?",
            (model, revision, series),
        ).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def drop_other_revisions(self, model: str, revision: str) -> None:
        self._conn.execute("delete from forecasts where model = ? and revision != ?", (model, revision))


class RedisForecasts:
    """A hash per model and revision: series -> {"computed_at", "data"}."""

    def __init__(self, url: str, namespace: str = "serve-http") -> None:
        import redis

        self.redis = redis.Redis.from_url(url)
        self.namespace = namespace

    def _key(self, model: str, revision: str) -> str:
        return f"{self.namespace}:forecasts:{model}:{revision}"

    def put(self, model: str, revision: str, series: str, forecast: dict[str, Any], computed_at: float) -> None:
        self.redis.hset(self._key(model, revision), series, json.dumps({"computed_at": computed_at, "data": forecast}))

    def get(self, model: str, revision: str, series: str) -> tuple[dict[str, Any], float] | None:
        raw = self.redis.hget(self._key(model, revision), series)
        if raw is None:
            return None
        found = json.loads(raw)
        return found["data"], found["computed_at"]

    def drop_other_revisions(self, model: str, revision: str) -> None:
        keep = self._key(model, revision).encode()
        stale = [key for key in self.redis.scan_iter(match=self._key(model, "*")) if key != keep]
        if stale:
            self.redis.delete(*stale)


def build_forecast_store(settings: Settings) -> ForecastStore:
    if settings.redis_url:
        return RedisForecasts(settings.redis_url)
    return SqliteForecasts(settings.jobs_dir / "forecasts.db")


def compute(predictor: Any, store: ForecastStore | None, model: str, series: str) -> tuple[dict[str, Any], float]:
    """Forecast ``series`` as far as the model goes, store it (when a store is
    given), and return it with when it was computed."""
    adapter, _ = predictor.model(model, task=TIME_SERIES_FORECAST)
    outcome = predictor.predict(model, [{"series": series, "horizon": adapter.max_horizon}], cached=False)
    forecast, computed_at = outcome.outputs()[0], time.time()
    if store is not None:
        store.put(model, adapter.revision, series, forecast, computed_at)
    return forecast, computed_at


def refresh_all(predictor: Any, store: ForecastStore, model: str) -> int:
    """Recompute and store the forecast of every series of the model; how many."""
    adapter, _ = predictor.model(model, task=TIME_SERIES_FORECAST)
    for series in adapter.series:
        compute(predictor, store, model, series)
    store.drop_other_revisions(model, adapter.revision)
    return len(adapter.series)
