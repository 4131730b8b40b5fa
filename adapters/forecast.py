"""The ``forecast`` adapter: daily forecasts of the series a training run fitted.

Manifest::

    task: time-series-forecast
    adapter: forecast
    source: model.json          # written by training/train_forecast.py
    options:
      sites: sites.db           # the site table (SQLite), listed by GET /info

``model.json`` holds, per series, the smoothed day-of-year climatology of
``log1p(flow)``, the AR coefficients of the anomaly, the 80 % interval of each
horizon's log-scale errors, and the last week of observations; a forecast
starts the day after the last observation. Plain numpy: no pickle to trust,
no threads to set.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import date, timedelta
from typing import Any, Sequence

import numpy as np

from adapters.base import ModelAdapter, one_line
from serving.errors import ModelLoadError
from tasks import TIME_SERIES_FORECAST
from tasks.forecast import ForecastRequest
from tasks.results import Forecast

SITE_COLUMNS = ("id", "name", "latitude", "longitude", "area", "elevation", "series")


def read_sites(path: Any) -> list[dict[str, Any]]:
    """The rows of a site table (SQLite), by id."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(f"select {', '.join(SITE_COLUMNS)} from sites order by id").fetchall()
    finally:
        db.close()
    return [dict(zip(SITE_COLUMNS, row)) for row in rows]


class ForecastModel(ModelAdapter):
    """Log-flow climatology plus an AR anomaly, per series."""

    task = TIME_SERIES_FORECAST

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._series: dict[str, dict[str, Any]] = {}
        self.sites: list[dict[str, Any]] = []
        self.series: list[str] = []
        self.max_horizon = 0

    def load(self) -> None:
        source = self.manifest.source or "model.json"
        try:
            model = json.loads(self.resolve(source).read_text(encoding="utf-8"))
            series = {
                name: {
                    "climatology": np.asarray(s["climatology"], dtype=float),
                    "phi": np.asarray(s["phi"], dtype=float),
                    "interval": np.asarray(s["interval"], dtype=float),
                    "last": date.fromisoformat(s["last_date"]),
                    "recent": np.asarray(s["recent"], dtype=float),
                }
                for name, s in model["series"].items()
            }
            horizon = int(model["horizon"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(self.name, f"cannot read {source} (train it: python training/train_forecast.py): {one_line(exc)}") from exc
        for name, s in series.items():
            if s["climatology"].shape != (366,) or s["interval"].shape != (horizon, 2) or len(s["recent"]) < len(s["phi"]):
                raise ModelLoadError(self.name, f"{source}: series {name!r} is malformed")
        sites_file = self.options.get("sites", "sites.db")
        try:
            sites = read_sites(self.resolve(sites_file))
        except sqlite3.Error as exc:
            raise ModelLoadError(self.name, f"cannot read the site table {sites_file}: {one_line(exc)}") from exc
        unknown = sorted({site["id"] for site in sites} - set(series))
        if unknown:
            raise ModelLoadError(self.name, f"sites {', '.join(unknown)} of {sites_file} have no series in {source}")
        self._series, self.sites, self.max_horizon = series, sites, horizon
        self.series = sorted(series)
        self.labels = []

    def predict(self, batch: Sequence[ForecastRequest]) -> list[Forecast]:
        return [self._forecast(request.series, request.horizon) for request in batch]

    def _forecast(self, name: str, horizon: int) -> Forecast:
        s = self._series[name]
        phi, climatology = s["phi"], s["climatology"]
        days = [s["last"] + timedelta(days=k) for k in range(1, horizon + 1)]
        # The anomaly of each recent observation, from the day of year it fell on.
        recent = s["recent"]
        recent_days = [s["last"] - timedelta(days=len(recent) - 1 - k) for k in range(len(recent))]
        window = list(np.log1p(recent) - climatology[[d.timetuple().tm_yday - 1 for d in recent_days]])
        anomalies = []
        for _ in range(horizon):
            nxt = float(np.dot(phi, window[::-1][: len(phi)]))
            anomalies.append(nxt)
            window.append(nxt)
        center = climatology[[d.timetuple().tm_yday - 1 for d in days]] + np.asarray(anomalies)
        low, high = s["interval"][:horizon, 0], s["interval"][:horizon, 1]
        floor = np.zeros(horizon)
        return Forecast(
            series=name,
            times=tuple(d.isoformat() for d in days),
            values=tuple(np.maximum(np.expm1(center), floor).tolist()),
            lower=tuple(np.maximum(np.expm1(center + low), floor).tolist()),
            upper=tuple(np.maximum(np.expm1(center + high), floor).tolist()),
        )

    def site(self, site_id: str) -> dict[str, Any] | None:
        return next((site for site in self.sites if site["id"] == site_id), None)
